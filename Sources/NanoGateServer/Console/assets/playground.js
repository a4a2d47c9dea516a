// The image playground. Every control comes from /v1/models' capabilities (through the
// console's copy of the API, which acts as the signed-in key or the operator's paying key).
// Results are shown with textContent and blob: URLs only; history stays in this browser
// (IndexedDB).
// The same module instance the page loaded (same URL, version query included): imported
// without it, console.js would run twice and every form would submit twice.
const { consoleHeaders, errorText } = await import(`./console.js${new URL(import.meta.url).search}`);

const $ = (id) => document.getElementById(id);
const controls = {
  key: $('paying_key'), model: $('model'), prompt: $('prompt'), ratio: $('aspect_ratio'), size: $('size'), sizeField: $('size-field'),
  n: $('n'), format: $('output_format'), response: $('response_format'), stream: $('stream'), streamField: $('stream-field'),
  chat: $('chat'), reference: $('reference'), drop: $('drop'), referenceList: $('reference-list'), referenceCount: $('reference-count'),
  referenceMax: $('reference-max'), preview: $('preview'), generate: $('generate'), error: $('error'), results: $('results'),
  history: $('history'), snippet: $('snippet'),
};
const apiBase = new URL('api/v1/', document.baseURI);
const publicBase = new URL('../v1', new URL('./', document.baseURI)).href;
let models = [];
let references = [];
let conversation = [];

function headers(extra = {}) {
  const result = { ...consoleHeaders, ...extra };
  if (controls.key && controls.key.value) result['X-NanoGate-Console-Key'] = controls.key.value;
  return result;
}

function showError(message) {
  controls.error.textContent = message || '';
  controls.error.hidden = !message;
}

function option(select, value, label = value) {
  const element = document.createElement('option');
  element.value = value;
  element.textContent = label;
  select.append(element);
}

function current() {
  return models.find((model) => model.id === controls.model.value);
}

async function loadModels() {
  showError('');
  const previous = controls.model.value;
  controls.model.replaceChildren();
  if (controls.key && !controls.key.value) {
    showError('Create a key on the Keys page first: the playground charges a key.');
    return;
  }
  const response = await fetch(new URL('models', apiBase), { headers: headers() });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    showError(errorText(response.status, body));
    return;
  }
  models = body.data;
  for (const model of models) option(controls.model, model.id);
  if (models.some((model) => model.id === previous)) controls.model.value = previous;
  modelChanged();
}

const ratioNames = { '1:1': 'square', '16:9': 'wide', '9:16': 'tall', '21:9': 'ultra-wide' };

function modelChanged() {
  const model = current();
  if (!model) return;
  const caps = model.capabilities;
  const keep = (select) => select.value;
  const [ratio, size, format, response] = [keep(controls.ratio), keep(controls.size), keep(controls.format), keep(controls.response)];
  controls.ratio.replaceChildren();
  for (const value of caps.aspect_ratios) option(controls.ratio, value, ratioNames[value] ? `${value} (${ratioNames[value]})` : value);
  if (caps.aspect_ratios.includes(ratio)) controls.ratio.value = ratio;
  controls.size.replaceChildren();
  for (const value of caps.sizes) option(controls.size, value, value.toUpperCase());
  if (caps.sizes.includes(size)) controls.size.value = size;
  else if (caps.sizes.includes('1k')) controls.size.value = '1k';
  controls.sizeField.hidden = caps.sizes.length === 0;
  controls.format.replaceChildren();
  for (const value of caps.output_formats) option(controls.format, value);
  if (caps.output_formats.includes(format)) controls.format.value = format;
  controls.response.replaceChildren();
  option(controls.response, 'b64_json');
  if (caps.url_output) option(controls.response, 'url');
  if ([...controls.response.options].some((item) => item.value === response)) controls.response.value = response;
  controls.streamField.hidden = !caps.streaming;
  if (!caps.streaming) controls.stream.checked = false;
  controls.referenceMax.textContent = caps.max_input_images;
  if (references.length > caps.max_input_images) references = references.slice(0, caps.max_input_images);
  renderReferences();
  updatePreview();
}

function tier() {
  const caps = current().capabilities;
  return caps.sizes.length ? controls.size.value : 'default';
}

/** The pixel size Google answers with for the chosen tier and ratio (from /v1/models). */
function pixelSize() {
  const sizes = current().capabilities.pixel_sizes;
  return sizes && sizes[tier()] ? sizes[tier()][controls.ratio.value] : null;
}

function updatePreview() {
  const model = current();
  if (!model) return;
  const caps = model.capabilities;
  const pixels = pixelSize();
  const each = caps.image_prices ? caps.image_prices[tier()] : null;
  const n = Math.max(1, Number(controls.n.value) || 1);
  const parts = [];
  if (pixels) parts.push(`${pixels.replace('x', ' × ')} pixels`);
  if (each != null) parts.push(`at most about $${(each * n).toFixed(4)} for ${n} image${n > 1 ? 's' : ''} (plus text and input tokens)`);
  controls.preview.textContent = parts.join(', ');
  const [width, height] = controls.ratio.value.split(':').map(Number);
  if (width && height) {
    const scale = 40 / Math.max(width, height);
    const rect = $('shape');
    rect.setAttribute('width', (width * scale).toFixed(1));
    rect.setAttribute('height', (height * scale).toFixed(1));
    rect.setAttribute('x', ((44 - width * scale) / 2).toFixed(1));
    rect.setAttribute('y', ((44 - height * scale) / 2).toFixed(1));
  }
}

// Reference images: file picker, drag and drop, paste.
function addReferences(files) {
  const max = current() ? current().capabilities.max_input_images : 0;
  for (const file of files) {
    if (!file.type.startsWith('image/')) continue;
    if (references.length >= max) {
      showError(`This model takes at most ${max} reference images.`);
      break;
    }
    references.push(file);
  }
  renderReferences();
}

function renderReferences() {
  controls.referenceList.replaceChildren();
  references.forEach((file, index) => {
    const item = document.createElement('li');
    const image = document.createElement('img');
    image.src = URL.createObjectURL(file);
    image.alt = `Reference image ${index + 1}: ${file.name || 'pasted'}`;
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = `Remove ${index + 1}`;
    remove.addEventListener('click', () => { references.splice(index, 1); renderReferences(); });
    item.append(image, remove);
    controls.referenceList.append(item);
  });
  controls.referenceCount.textContent = references.length;
}

controls.reference.addEventListener('change', () => { addReferences([...controls.reference.files]); controls.reference.value = ''; });
controls.drop.addEventListener('dragover', (event) => { event.preventDefault(); controls.drop.classList.add('over'); });
controls.drop.addEventListener('dragleave', () => controls.drop.classList.remove('over'));
controls.drop.addEventListener('drop', (event) => {
  event.preventDefault();
  controls.drop.classList.remove('over');
  addReferences([...event.dataTransfer.files]);
});
document.addEventListener('paste', (event) => {
  const files = [...(event.clipboardData ? event.clipboardData.files : [])];
  if (files.length) addReferences(files);
});

/** The request the controls describe: endpoint, JSON fields, and whether files go along. */
function describe() {
  const model = current();
  const caps = model.capabilities;
  const fields = { model: model.id, prompt: controls.prompt.value, n: Math.max(1, Number(controls.n.value) || 1) };
  if (caps.sizes.length) fields.size = controls.size.value;
  fields.aspect_ratio = controls.ratio.value;
  fields.response_format = controls.response.value;
  if (controls.format.value && controls.format.value !== 'png') fields.output_format = controls.format.value;
  if (controls.stream.checked) {
    fields.stream = true;
    fields.partial_images = 2;  // Gemini 3 Pro's interim (thought) images; other models send the final one only
  }
  const edit = references.length > 0;
  return { path: edit ? 'images/edits' : 'images/generations', fields, files: references.slice() };
}

function body(described) {
  if (!described.files.length) return { body: JSON.stringify(described.fields), type: 'application/json' };
  const form = new FormData();
  for (const [name, value] of Object.entries(described.fields)) form.append(name, String(value));
  described.files.forEach((file, index) => form.append('image[]', file, file.name || `reference-${index + 1}.png`));
  return { body: form, type: null };
}

function base64Blob(b64, format) {
  const bytes = Uint8Array.from(atob(b64), (char) => char.charCodeAt(0));
  return new Blob([bytes], { type: `image/${format === 'jpeg' ? 'jpeg' : format || 'png'}` });
}

/** A result's bytes: kept from the answer (blob: URLs cannot be fetched under the page's
 * connect-src), or fetched from its `url` (this gateway's image store or the bucket). */
async function imageBlob(item) {
  if (item.blob) return item.blob;
  try { return await (await fetch(item.src)).blob(); } catch { return null; }
}

/** A `data:` URL's bytes, decoded here (connect-src does not allow fetching data: URLs). */
function dataURLBlob(url) {
  const comma = url.indexOf(',');
  const type = url.slice(5, url.indexOf(';'));
  const bytes = Uint8Array.from(atob(url.slice(comma + 1)), (char) => char.charCodeAt(0));
  return new Blob([bytes], { type });
}

function definition(list, term, value) {
  if (value === undefined || value === null || value === '') return;
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = String(value);
  list.append(dt, dd);
}

/** One result card: the image, what was asked and delivered, and what it cost. A streamed
 * partial image gets a card marked `data-partial` instead, replaced by the final one. */
function showResult(item, meta, partial = false) {
  const figure = document.createElement('figure');
  figure.className = partial ? 'result partial' : 'result';
  figure.setAttribute(partial ? 'data-partial' : 'data-result', '');
  figure.setAttribute('data-request-id', meta.requestID || '');
  const image = document.createElement('img');
  image.alt = `Result for: ${meta.prompt}`;
  const list = document.createElement('dl');
  const delivered = document.createElement('dd');
  image.addEventListener('load', () => {
    delivered.textContent = `${image.naturalWidth} × ${image.naturalHeight}`;
  });
  image.src = item.src;
  const download = document.createElement('a');
  download.href = item.src;
  download.download = `nanogate-${meta.requestID || 'image'}.${item.format || 'png'}`;
  download.textContent = 'Download';
  const useAsInput = document.createElement('button');
  useAsInput.type = 'button';
  useAsInput.textContent = 'Use as input';
  useAsInput.addEventListener('click', async () => {
    const blob = await imageBlob(item);
    if (blob) addReferences([new File([blob], `result.${item.format || 'png'}`, { type: blob.type || 'image/png' })]);
  });
  definition(list, 'Requested', meta.requested);
  const dt = document.createElement('dt');
  dt.textContent = 'Delivered';
  delivered.textContent = item.size || '…';
  list.append(dt, delivered);
  definition(list, 'Format', item.format);
  definition(list, 'Upstream model', meta.upstreamModel);
  definition(list, 'Revised prompt', item.revisedPrompt);
  definition(list, 'Tokens', meta.tokens);
  definition(list, 'Charge', meta.cost);
  definition(list, 'Latency', meta.latency);
  const caption = document.createElement('figcaption');
  const link = document.createElement('a');
  link.href = `usage#${meta.requestID}`;
  link.textContent = meta.requestID || '';
  caption.append('Request ', link);
  figure.append(image, list, download, ' ', useAsInput, caption);
  controls.results.prepend(figure);
  return figure;
}

function tokenText(usage) {
  if (!usage) return '';
  const input = usage.input_tokens_details || {};
  return `${usage.input_tokens} in (text ${input.text_tokens ?? '–'}, image ${input.image_tokens ?? '–'}), ${usage.output_tokens} out`;
}

async function readStream(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split('\n').filter((line) => line.startsWith('data:')).map((line) => line.slice(5).trim()).join('\n');
      if (data && data !== '[DONE]') onEvent(JSON.parse(data));
    }
  }
}

async function generate(described = describe()) {
  showError('');
  if (controls.chat.checked) return chatTurn();
  const requested = pixelSize() || controls.ratio.value;
  const { body: payload, type } = body(described);
  const started = performance.now();
  controls.generate.disabled = true;
  try {
    // One Idempotency-Key per click: a double click or a retried request is charged once.
    const extra = { 'Idempotency-Key': crypto.randomUUID() };
    if (type) extra['Content-Type'] = type;
    const response = await fetch(new URL(described.path, apiBase), { method: 'POST', headers: headers(extra), body: payload });
    const meta = {
      requestID: response.headers.get('x-request-id'), upstreamModel: response.headers.get('X-NanoGate-Upstream-Model'),
      cost: response.headers.get('X-NanoGate-Cost'), prompt: described.fields.prompt, requested: `${requested} ${described.fields.output_format || 'png'}`,
    };
    if (!response.ok) {
      const error = await response.json().catch(() => null);
      showError(errorText(response.status, error));
      return;
    }
    const shown = [];
    if (described.fields.stream) {
      const partials = new Map();
      await readStream(response, (event) => {
        if (event.type && event.type.endsWith('.partial_image')) {
          const src = URL.createObjectURL(base64Blob(event.b64_json, event.output_format));
          const figure = partials.get(event.image_index ?? 0);
          if (figure) figure.querySelector('img').src = src;
          else partials.set(event.image_index ?? 0, showResult({ src, format: event.output_format, size: 'partial' }, meta, true));
        } else if (event.type && event.type.endsWith('.completed')) {
          meta.latency = `${Math.round(performance.now() - started)} ms`;
          meta.tokens = tokenText(event.usage);
          if (event.usage && event.usage.cost != null) meta.cost = `$${Number(event.usage.cost).toFixed(6)}`;
          const previous = partials.get(event.image_index ?? 0);
          if (previous) previous.remove();
          const blob = event.b64_json ? base64Blob(event.b64_json, event.output_format) : null;
          const item = { blob, src: blob ? URL.createObjectURL(blob) : event.url, format: event.output_format, size: event.size };
          showResult(item, meta);
          shown.push(item);
        } else if (event.error) {
          showError(errorText(500, event));
        }
      });
    } else {
      const answer = await response.json();
      meta.latency = `${Math.round(performance.now() - started)} ms`;
      meta.tokens = tokenText(answer.usage);
      if (meta.cost) meta.cost = `$${meta.cost}`;
      for (const data of answer.data || []) {
        const format = answer.output_format || described.fields.output_format || 'png';
        const blob = data.b64_json ? base64Blob(data.b64_json, format) : null;
        const item = { blob, src: blob ? URL.createObjectURL(blob) : data.url, format, size: answer.size, revisedPrompt: data.revised_prompt };
        showResult(item, meta);
        shown.push(item);
      }
    }
    await remember(described, meta, shown);
  } catch (error) {
    showError(`The request failed: ${error.message}`);
  } finally {
    controls.generate.disabled = false;
  }
}

// Chat mode: multi-turn editing through /v1/chat/completions; each turn edits the last image.
async function chatTurn() {
  const model = current();
  const started = performance.now();
  const content = [{ type: 'text', text: controls.prompt.value }];
  for (const file of references) {
    const dataURL = await new Promise((resolve) => { const reader = new FileReader(); reader.onload = () => resolve(reader.result); reader.readAsDataURL(file); });
    content.push({ type: 'image_url', image_url: { url: dataURL } });
  }
  conversation.push({ role: 'user', content: content.length === 1 ? controls.prompt.value : content });
  const fields = { model: model.id, messages: conversation, modalities: ['image', 'text'] };
  if (model.capabilities.sizes.length) fields.image_config = { aspect_ratio: controls.ratio.value, image_size: controls.size.value.toUpperCase() };
  else fields.image_config = { aspect_ratio: controls.ratio.value };
  controls.generate.disabled = true;
  try {
    const response = await fetch(new URL('chat/completions', apiBase), {
      method: 'POST', headers: headers({ 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() }), body: JSON.stringify(fields),
    });
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      conversation.pop();
      showError(errorText(response.status, answer));
      return;
    }
    const message = answer.choices[0].message;
    // The reply's images go back with it, so the next turn edits the last image (and the
    // gateway restores Google's thought signatures from them, as for any chat client).
    const turn = { role: 'assistant', content: message.content || '' };
    if (message.images && message.images.length) turn.images = message.images;
    conversation.push(turn);
    references = [];
    renderReferences();
    const meta = {
      requestID: response.headers.get('x-request-id'), upstreamModel: response.headers.get('X-NanoGate-Upstream-Model'), cost: response.headers.get('X-NanoGate-Cost'),
      prompt: controls.prompt.value, requested: controls.ratio.value, latency: `${Math.round(performance.now() - started)} ms`, tokens: tokenText(answer.usage && {
        input_tokens: answer.usage.prompt_tokens, output_tokens: answer.usage.completion_tokens,
      }),
    };
    const urls = (message.images || []).map((image) => image.image_url.url);
    if (!urls.length) for (const match of (message.content || '').matchAll(/!\[[^\]]*\]\(([^)\s]+)\)/g)) urls.push(match[1]);
    const shown = [];
    for (const url of urls) {
      const blob = url.startsWith('data:') ? dataURLBlob(url) : null;
      const item = { blob, src: blob ? URL.createObjectURL(blob) : url, format: url.startsWith('data:image/') ? url.slice(11, url.indexOf(';')) : 'png', revisedPrompt: message.content };
      showResult(item, meta);
      shown.push(item);
    }
    if (shown.length) await remember({ path: 'chat/completions', fields: { model: model.id, prompt: controls.prompt.value, n: 1, aspect_ratio: controls.ratio.value }, files: [] }, meta, shown);
    if (!urls.length) showError(`No image in this turn: ${message.content || '(empty reply)'}`);
  } finally {
    controls.generate.disabled = false;
  }
}

// "Copy as curl / Python": the exact request, with the key left as an environment variable.
function snippets(described) {
  const { fields, files } = described;
  const url = `${publicBase}/${described.path}`;
  const fileName = (file, index) => file.name || `reference-${index + 1}.png`;
  const auth = '  -H "Authorization: Bearer $NANOGATE_API_KEY"';
  const curl = (files.length
    ? [`curl ${url}`, auth, ...Object.entries(fields).map(([name, value]) => `  -F ${JSON.stringify(`${name}=${value}`)}`),
      ...files.map((file, index) => `  -F "image[]=@${fileName(file, index)}"`)]
    : [`curl ${url}`, auth, '  -H "Content-Type: application/json"', `  -d '${JSON.stringify(fields).replaceAll("'", "'\\''")}'`]
  ).join(' \\\n');
  // The SDK's own arguments; the rest goes as extra_body, decoded from its exact JSON.
  const extra = Object.fromEntries(Object.entries(fields).filter(([name]) => !['model', 'prompt', 'n', 'size', 'response_format'].includes(name)));
  const python = [
    'import json, os', 'from openai import OpenAI', '', `client = OpenAI(base_url=${JSON.stringify(publicBase)}, api_key=os.environ["NANOGATE_API_KEY"])`,
    files.length ? 'result = client.images.edit(' : 'result = client.images.generate(',
    `    model=${JSON.stringify(fields.model)},`, `    prompt=${JSON.stringify(fields.prompt)},`,
    files.length ? `    image=[${files.map((file, index) => `open(${JSON.stringify(fileName(file, index))}, "rb")`).join(', ')}],` : null,
    `    n=${fields.n},`, fields.size ? `    size=${JSON.stringify(fields.size)},` : null, `    response_format=${JSON.stringify(fields.response_format)},`,
    Object.keys(extra).length ? `    extra_body=json.loads(${JSON.stringify(JSON.stringify(extra))}),` : null, ')',
  ].filter((line) => line !== null).join('\n');
  return { curl, python };
}

async function copySnippet(kind) {
  if (!current()) return;
  const text = snippets(describe())[kind];
  controls.snippet.textContent = text;
  controls.snippet.hidden = false;
  try { await navigator.clipboard.writeText(text); } catch { /* shown below the buttons either way */ }
}

// History: IndexedDB in this browser only (the gateway keeps no prompts).
function database() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open('nanogate-playground', 1);
    request.onupgradeneeded = () => request.result.createObjectStore('runs', { keyPath: 'id', autoIncrement: true });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function store(mode, action) {
  const db = await database();
  return new Promise((resolve, reject) => {
    const transaction = db.transaction('runs', mode);
    const request = action(transaction.objectStore('runs'));
    transaction.oncomplete = () => resolve(request && request.result);
    transaction.onerror = () => reject(transaction.error);
  });
}

async function remember(described, meta, shown) {
  const thumbnails = [];
  for (const item of shown.slice(0, 4)) {
    const blob = await imageBlob(item);
    if (blob) thumbnails.push(blob);
  }
  await store('readwrite', (runs) => runs.add({ when: Date.now(), fields: described.fields, path: described.path, requestID: meta.requestID, thumbnails }));
  await renderHistory();
}

async function renderHistory() {
  let runs = [];
  try { runs = await store('readonly', (runs) => runs.getAll()); } catch { return; }
  controls.history.replaceChildren();
  for (const run of runs.reverse().slice(0, 50)) {
    const item = document.createElement('li');
    for (const blob of run.thumbnails || []) {
      const image = document.createElement('img');
      image.src = URL.createObjectURL(blob);
      image.alt = `Earlier result: ${run.fields.prompt}`;
      item.append(image);
    }
    const text = document.createElement('span');
    text.textContent = `${new Date(run.when).toLocaleString()} · ${run.fields.model} · ${[run.fields.size, run.fields.aspect_ratio].filter(Boolean).join(' ')} · ${run.fields.prompt}`;
    const rerun = document.createElement('button');
    rerun.type = 'button';
    rerun.textContent = 'Re-run';
    rerun.addEventListener('click', () => {
      controls.model.value = run.fields.model;
      modelChanged();
      if (run.fields.aspect_ratio) controls.ratio.value = run.fields.aspect_ratio;
      else if (run.fields.size && run.fields.size.includes(':')) controls.ratio.value = run.fields.size;
      if (run.fields.aspect_ratio && run.fields.size) controls.size.value = run.fields.size;
      controls.prompt.value = run.fields.prompt;
      controls.n.value = run.fields.n;
      updatePreview();
      generate();
    });
    const use = document.createElement('button');
    use.type = 'button';
    use.textContent = 'Use as input';
    use.disabled = !(run.thumbnails || []).length;
    use.addEventListener('click', () => addReferences([new File([run.thumbnails[0]], 'earlier.png', { type: run.thumbnails[0].type || 'image/png' })]));
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = 'Delete';
    remove.addEventListener('click', async () => { await store('readwrite', (runs) => runs.delete(run.id)); renderHistory(); });
    item.append(text, rerun, use, remove);
    controls.history.append(item);
  }
}

$('controls').addEventListener('submit', (event) => { event.preventDefault(); generate(); });
$('copy-curl').addEventListener('click', () => copySnippet('curl'));
$('copy-python').addEventListener('click', () => copySnippet('python'));
$('new-chat').addEventListener('click', () => { conversation = []; showError(''); });
controls.model.addEventListener('change', modelChanged);
for (const element of [controls.ratio, controls.size, controls.n]) element.addEventListener('change', updatePreview);
controls.n.addEventListener('input', updatePreview);
if (controls.key) controls.key.addEventListener('change', loadModels);
loadModels().catch((error) => showError(`Could not load the models: ${error.message}`));
renderHistory();
