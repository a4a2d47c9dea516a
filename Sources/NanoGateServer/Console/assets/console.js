// NanoGate console: the behaviour every page shares. No inline script anywhere (the CSP forbids
// it), no third-party code. State-changing requests go through fetch with the console's own
// header, which another site cannot send here (no CORS on /console).

/** CSP violations this page met (the browser tests read it; it should stay empty). */
window.__cspViolations = window.__cspViolations || [];
const firstRun = !window.__nanogateConsole;
window.__nanogateConsole = true;
if (firstRun) {
  document.addEventListener('securitypolicyviolation', (event) => {
    window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
  });
}

export const consoleHeaders = { 'X-NanoGate-Console': '1' };

/** Shows `message` in the form's alert (or the page's), as text. */
export function showAlert(form, message) {
  const alert = (form && form.querySelector('[data-form-alert]')) || document.querySelector('[data-page-alert]');
  if (!alert) return;
  alert.textContent = message || '';
  alert.hidden = !message;
}

/** OpenAI's error JSON as one line of text: the message, then code and param when present. */
export function errorText(status, body) {
  const error = body && body.error;
  if (!error) return `HTTP ${status}`;
  const detail = [error.code && `code: ${error.code}`, error.param && `param: ${error.param}`].filter(Boolean).join(', ');
  return detail ? `${error.message} (${detail})` : error.message;
}

async function readJSON(response) {
  const text = await response.text();
  try { return text ? JSON.parse(text) : null; } catch { return { raw: text }; }
}

/** The JSON body of a `data-endpoint` form: its `data-field` inputs, typed by `data-type`. */
function formJSON(form) {
  const body = {};
  for (const input of form.querySelectorAll('[data-field]')) {
    const raw = input.value.trim();
    switch (input.dataset.type) {
      case 'number': if (raw !== '') body[input.name] = Number(raw); break;
      case 'number-or-null': body[input.name] = raw === '' ? null : Number(raw); break;
      case 'text-or-null': body[input.name] = raw === '' ? null : raw; break;
      case 'bool': body[input.name] = raw === 'true'; break;
      default: if (raw !== '') body[input.name] = raw;
    }
  }
  return body;
}

async function submitForm(form, submitter) {
  showAlert(form, '');
  const confirm = form.querySelector('[data-must-equal]');
  if (confirm && confirm.value !== confirm.dataset.mustEqual) {
    showAlert(form, `Type "${confirm.dataset.mustEqual}" to confirm.`);
    confirm.focus();
    return;
  }
  const headers = { ...consoleHeaders };
  let url;
  let method = 'POST';
  let body;
  if (form.dataset.endpoint) {
    url = new URL(form.dataset.endpoint, document.baseURI);
    method = form.dataset.method || 'POST';
    if (form.dataset.query) {
      for (const name of form.dataset.query.split(',')) {
        const field = form.elements[name];
        if (field && field.value) url.searchParams.set(name, field.value);
      }
    }
    if (form.dataset.key) headers['X-NanoGate-Console-Key'] = form.dataset.key;
    if (form.dataset.raw) {
      body = form.elements[form.dataset.raw].value;
      headers['Content-Type'] = 'application/json';
    } else if (method !== 'DELETE' && !(form.dataset.query && !form.querySelector('[data-field]'))) {
      body = JSON.stringify(formJSON(form));
      headers['Content-Type'] = 'application/json';
    }
  } else {
    url = new URL(form.getAttribute('action'), document.baseURI);
    body = new URLSearchParams(new FormData(form)).toString();
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
  }
  if (submitter) submitter.disabled = true;
  try {
    const response = await fetch(url, { method, headers, body, credentials: 'same-origin' });
    const json = await readJSON(response);
    const output = form.querySelector('[data-result-text]');
    if (form.dataset.then === 'result' && output) {
      output.textContent = json && json.detail ? `${json.ok === 'true' ? 'works' : 'fails'}: ${json.detail}` : errorText(response.status, json);
      return;
    }
    if (!response.ok) {
      showAlert(form, errorText(response.status, json));
      return;
    }
    if (json && json.redirect) {
      window.location.assign(new URL(json.redirect, document.baseURI));
    } else if (form.dataset.then === 'secret' && json && json.secret) {
      const box = document.querySelector('[data-secret-box]');
      box.querySelector('[data-secret]').textContent = json.secret;
      box.hidden = false;
      box.querySelector('[data-copy]').focus();
    } else {
      window.location.reload();
    }
  } catch (error) {
    showAlert(form, `The request failed: ${error.message}`);
  } finally {
    if (submitter) submitter.disabled = false;
  }
}

if (firstRun) document.addEventListener('submit', (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute('data-console-form')) return;
  event.preventDefault();
  submitForm(form, event.submitter);
});

if (firstRun) document.addEventListener('click', async (event) => {
  const button = event.target.closest('[data-copy]');
  if (!button) return;
  const target = button.parentElement.querySelector('[data-secret]');
  try {
    await navigator.clipboard.writeText(target.textContent);
    button.textContent = 'Copied';
  } catch {
    const range = document.createRange();
    range.selectNodeContents(target);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    button.textContent = 'Selected: press Ctrl+C';
  }
});

// Quick start: the base URL as this browser reaches the gateway (right under a proxy's sub-path too).
const apiBase = new URL('../v1', new URL('./', document.baseURI)).href.replace(/\/$/, '');
for (const element of document.querySelectorAll('[data-base-url]')) element.textContent = apiBase;
for (const element of document.querySelectorAll('[data-snippet]')) {
  element.textContent = element.textContent.replace(/https?:\/\/[^\s"']+\/v1/g, apiBase);
}
