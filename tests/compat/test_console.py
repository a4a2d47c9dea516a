"""The browser console at ``/console/``, driven as a person would drive it: Selenium with Debian's
headless Chromium (``chromium`` + ``chromium-driver``, installed by ``.ci/run``) against
``nanogate serve --demo`` with ``NANOGATE_ADMIN_TOKEN`` set (issue 25, "Tests").

What is checked, each from outside: signing in with the admin token (operator view) and with a
key (key-holder view); a wrong token refused with an alert and no cookie; the session cookie's
flags, and that it authenticates nothing outside ``/console`` (``/v1``, ``/admin/v1`` stay
Bearer-only); sign-out, and revoking, rotating or disabling a key, end sessions; cross-origin and
header-less POSTs refused (also from a real page on another port of the same host, which is
same-site, so the cookie is sent); on every page the security headers, no CSP violation in the
browser, no serious or critical axe-core violation, and a screenshot in
``.build/console-screenshots/``; a key name that is HTML shown as text; the Keys page's create
form, the secret signing in, a Pro 16:9 2K generation in the playground whose image is
2752x1536, its usage row and charge, the balance dropping by it; an edit with two reference
images; a bad ratio's 400 shown verbatim; the console's CSV equal to the admin API's; the
playground at phone width and by keyboard; and all of it behind nginx under ``/gw/``
(``deploy/nginx.conf``'s example).

Waits are explicit and bounded (``WAIT`` seconds); nothing sleeps to prove an absence.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pytest

from conftest import REPO_ROOT, STARTUP_TIMEOUT, Gateway, _demo_in_temp_dir, _free_port, _pump, _stop
from nginx_support import running_nginx
from pg_support import PG_URL, fresh_database

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        f"the console's browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER} "
        "missing; .ci/run installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skip: a machine without Chromium needs no Selenium)
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ADMIN_TOKEN = "console-admin-" + uuid.uuid4().hex
WAIT = 30.0  # the longest any single wait in this module may take
COOKIE = "ng_console"
SCREENSHOTS = REPO_ROOT / ".build" / "console-screenshots"
XSS_NAME = "<img src=x onerror=alert(1)>"

# Navigation link text -> page path under /console/ (issue 25, "Accessible and usable").
OPERATOR_PAGES = {
    "Overview": "overview", "Keys": "keys", "Groups": "groups", "Prices": "prices", "Channels": "channels",
    "Usage": "usage", "Jobs": "jobs", "Batches": "batches", "Playground": "playground",
}
HOLDER_PAGES = {"Usage": "usage", "Playground": "playground", "Models": "models", "Quick start": "quickstart"}
OPERATOR_ONLY = sorted(set(OPERATOR_PAGES) - set(HOLDER_PAGES))
# The playground's controls: id -> the label a person reads.
PLAYGROUND_LABELS = {
    "model": "Model", "prompt": "Prompt", "aspect_ratio": "Aspect ratio", "size": "Size", "n": "Images",
    "reference": "Reference images", "response_format": "Response format",
}


# ---------------------------------------------------------------------------------------------
# Plain HTTP beside the browser (no redirects followed, every header kept)


class Raw(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""


def raw(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | str | dict | None = None) -> Raw:
    """One HTTP request as sent (``http.client``: no redirect followed, no cookie jar)."""
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=180)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        response = connection.getresponse()
        return Raw(response.status, response.headers, response.read())
    finally:
        connection.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


def admin_api(root: str, method: str, path: str, body: dict | None = None) -> Raw:
    return raw(method, f"{root}/admin/v1/{path}", bearer(ADMIN_TOKEN), body)


def new_key(root: str, credit_usd: float | None = 5.0, name: str | None = None) -> tuple[str, str]:
    """A key made through the admin API (group default); returns (name, secret)."""
    name = name or f"console-{uuid.uuid4().hex[:10]}"
    fields = {"name": name, "group": "default"}
    if credit_usd is not None:
        fields["credit_usd"] = credit_usd
    answer = admin_api(root, "POST", "keys", fields)
    assert answer.status == 201, answer.body[:500]
    return name, answer.json()["secret"]


def own_usage(root: str, secret: str) -> dict:
    answer = raw("GET", f"{root}/v1/usage", bearer(secret))
    assert answer.status == 200, answer.body[:500]
    return answer.json()


def settled_usage(root: str, secret: str, request_id: str) -> tuple[dict, dict]:
    """``/v1/usage`` once the request's row is written and nothing is reserved: (account, row)."""
    seen: list[dict] = []

    def ready():
        seen.append(own_usage(root, secret))
        rows = [row for row in seen[-1]["data"] if row["request_id"] == request_id]
        return (seen[-1], rows[0]) if rows and seen[-1]["key"]["reserved_usd"] == 0 else None

    found = poll(ready, f"the usage row of {request_id} and a settled balance")
    return found


def poll(condition: Callable[[], object], what: str, timeout: float = WAIT, interval: float = 0.2):
    """``condition()`` until truthy (returned); fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(interval)


def generate_via_api(root: str, secret: str, prompt: str = "a console banana") -> str:
    """One nano-banana generation through the public API; returns its request id."""
    answer = raw("POST", f"{root}/v1/images/generations", bearer(secret), {"model": "nano-banana", "prompt": prompt})
    assert answer.status == 200, answer.body[:500]
    request_id = answer.header("x-request-id")
    assert request_id.startswith("req_"), dict(answer.headers)
    return request_id


# ---------------------------------------------------------------------------------------------
# The gateway and the browsers


@pytest.fixture(scope="module")
def console_gateway(nanogate_bin: Path, tmp_path_factory) -> Iterator[Gateway]:
    """``nanogate serve --demo`` with the admin API (and so the console's operator view) on."""
    with _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-console", env={"NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN}) as running:
        yield running


@pytest.fixture(scope="module")
def root(console_gateway: Gateway) -> str:
    return console_gateway.base_url.removesuffix("/v1")


TEST_CSP_RECORDER = """
window.__testCspViolations = [];
document.addEventListener('securitypolicyviolation', e => window.__testCspViolations.push(
  `${e.effectiveDirective || e.violatedDirective} blocked ${e.blockedURI || '?'} at ${e.sourceFile || ''}:${e.lineNumber || ''}`), true);
"""


def start_browser(width: int = 1280, height: int = 900) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", f"--window-size={width},{height}", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(argument)
    # An alert() left open must stay visible to the test (the XSS check asks for one), not be
    # dismissed by the driver.
    options.set_capability("unhandledPromptBehavior", "ignore")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # The test's own CSP recorder, in every document before any of its scripts runs (the
    # console's console.js is a module, which runs after parsing: a violation while parsing
    # would happen before its listener exists).
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TEST_CSP_RECORDER})
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


@pytest.fixture
def browsers() -> Iterator[Callable[..., WebDriver]]:
    """Factory of fresh browsers (no cookies), each quit when the test ends."""
    started: list[WebDriver] = []

    def start(width: int = 1280, height: int = 900) -> WebDriver:
        started.append(start_browser(width, height))
        return started[-1]

    yield start
    for driver in started:
        with contextlib.suppress(Exception):
            driver.quit()


@pytest.fixture
def browser(browsers) -> WebDriver:
    return browsers()


def wait(driver: WebDriver, timeout: float = WAIT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))


def console_url(root: str, path: str = "") -> str:
    return f"{root}/console/{path}"


def sign_in(driver: WebDriver, root: str, token: str, landing: str) -> None:
    """Type ``token`` into the sign-in page's Token field, press Sign in, and wait for ``landing``
    (``overview`` for the operator, ``usage`` for a key holder)."""
    driver.get(console_url(root))
    field = wait(driver).until(EC.visibility_of_element_located((By.ID, "token")))
    assert field.get_attribute("type") == "password"
    field.send_keys(token)
    button(driver, "Sign in").click()
    target = console_url(root, landing)
    try:
        wait(driver).until(lambda d: d.current_url.split("?")[0] == target)
    except Exception:
        raise AssertionError(f"signing in did not reach {target}: at {driver.current_url}, alert {alert_text(driver)!r}") from None
    assert token not in driver.current_url


def sign_out(driver: WebDriver) -> None:
    button(driver, "Sign out").click()
    wait(driver).until(EC.visibility_of_element_located((By.ID, "token")))


def button(driver: WebDriver, text: str) -> WebElement:
    return wait(driver).until(
        EC.element_to_be_clickable((By.XPATH, f"//button[normalize-space()={json.dumps(text)}]")),
        f"a clickable button {text!r} at {driver.current_url}",
    )


def alert_text(driver: WebDriver) -> str:
    return " ".join(element.text for element in driver.find_elements(By.CSS_SELECTOR, "[role=alert]")).strip()


def session_cookie(driver: WebDriver) -> str:
    cookie = driver.get_cookie(COOKIE)
    assert cookie is not None, f"no {COOKIE} cookie at {driver.current_url}: {driver.get_cookies()}"
    return cookie["value"]


def go(driver: WebDriver, root: str, link: str, path: str) -> None:
    """Click the navigation link ``link`` and wait for its page."""
    wait(driver).until(EC.element_to_be_clickable((By.LINK_TEXT, link)), f"a link {link!r} at {driver.current_url}").click()
    wait(driver).until(lambda d: d.current_url.split("?")[0] == console_url(root, path), f"{link} -> /console/{path}")
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")


def screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def fill(element: WebElement, value: str) -> None:
    """Type into an input, or pick a select's option by value or visible text."""
    if element.tag_name == "select":
        select = Select(element)
        for index, option in enumerate(select.options):
            if option.get_attribute("value") == value or option.text.strip() == value:
                select.select_by_index(index)  # also for an <option> without a value attribute
                return
        raise AssertionError(f"no option {value!r} in select#{element.get_attribute('id')}: {[o.text for o in select.options]}")
    element.clear()
    element.send_keys(value)


# ---------------------------------------------------------------------------------------------
# What the browser itself reports: CSP violations (the console's console.js keeps them in
# window.__cspViolations) and axe-core's findings


def assert_no_csp_violations(driver: WebDriver) -> None:
    """No CSP violation since the page began: neither the test's recorder (installed before any
    script of the page) nor the console's own (``window.__cspViolations``, filled by console.js)
    saw one. Then an inline style (refused by ``style-src 'self'``) is added and must reach
    both, which proves both listen on this page; violation events are delivered in order, so
    none was still on its way before it. Run it before axe, whose own styles are violations."""
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")
    wait(driver).until(
        lambda d: d.execute_script("return Array.isArray(window.__cspViolations)"),
        f"window.__cspViolations (console.js's recorder) on {driver.current_url}",
    )
    read = (
        "return [window.__testCspViolations || null,"
        " window.__cspViolations.map(v => typeof v === 'string' ? v : JSON.stringify(v))]"
    )
    before = driver.execute_script(read)
    driver.execute_script(
        "const s = document.createElement('style'); s.textContent = 'body{}'; s.setAttribute('data-csp-probe', '');"
        "document.head.appendChild(s);"
    )
    after = wait(driver).until(
        lambda d: (lambda seen: seen if seen[0] and len(seen[0]) > len(before[0] or []) and len(seen[1]) > len(before[1]) else None)(d.execute_script(read)),
        f"the probe's violation recorded by both recorders on {driver.current_url}",
    )
    assert before[0] == [] and before[1] == [], f"CSP violations on {driver.current_url}: browser {before[0]}, console.js {before[1]}"
    # Exactly the probe, by the test's recorder (console.js's may count one event more than once).
    assert len(after[0]) == 1, f"CSP violations on {driver.current_url}: {after[0][:-1]}"


AXE_JS: str | None = None


def axe_source() -> str:
    global AXE_JS
    if AXE_JS is None:
        try:
            import axe_playwright_python
        except ImportError:
            pytest.fail("axe-playwright-python is missing: scripts/test.sh installs it (--no-deps) for its axe.min.js")
        AXE_JS = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()
    return AXE_JS


def serious_axe_violations(driver: WebDriver) -> list[str]:
    """axe-core's serious and critical violations on the current page, one line each."""
    driver.execute_script(axe_source())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done({violations: r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))}))"
        ".catch(e => done({error: String(e)}));"
    )
    assert "error" not in result, result
    return [
        f"{v['impact']}: {v['id']} ({v['help']}) at {v['nodes']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def assert_security_headers(answer: Raw, url: str) -> None:
    csp = answer.header("Content-Security-Policy")
    directives = {part.strip().split(" ", 1)[0]: part.strip() for part in csp.split(";") if part.strip()}
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
        assert directives.get(directive.split(" ", 1)[0]) == directive, f"{url}: CSP {csp!r} lacks {directive!r}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, f"{url}: {csp}"
    assert answer.header("Referrer-Policy") == "no-referrer", url
    assert answer.header("X-Frame-Options").upper() == "DENY", url
    assert "no-store" in answer.header("Cache-Control"), url


# ---------------------------------------------------------------------------------------------
# The playground


def choose(driver: WebDriver, control: str, wanted: str) -> None:
    """Pick ``wanted`` in ``select#control``: the option whose value is it (any case), or whose
    text starts with it; waits for the option to exist (options follow /v1/models and the model)."""

    def pick(d: WebDriver):
        select = Select(d.find_element(By.ID, control))
        for index, option in enumerate(select.options):
            value, text = option.get_attribute("value") or "", option.text.strip()
            if value.lower() == wanted.lower() or text.lower() == wanted.lower() or text.lower().startswith(wanted.lower() + " "):
                if not option.is_selected():
                    select.select_by_index(index)
                return d.find_element(By.ID, control).get_property("value") == value
        return False

    wait(driver).until(pick, f"an option {wanted!r} in select#{control}")


def result_ids(driver: WebDriver) -> set[str]:
    return {element.get_attribute("data-request-id") for element in driver.find_elements(By.CSS_SELECTOR, "[data-result][data-request-id]")}


def new_result(driver: WebDriver, before: set[str], press: Callable[[], None]) -> WebElement:
    """Run ``press`` (clicking Generate, or Enter on it) and wait for a result not in ``before``
    whose image has loaded; an alert instead fails at once with its text."""
    press()

    def arrived(d: WebDriver):
        for element in d.find_elements(By.CSS_SELECTOR, "[data-result][data-request-id]"):
            if element.get_attribute("data-request-id") not in before:
                images = element.find_elements(By.TAG_NAME, "img")
                if images and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", images[0]):
                    return element
        if text := alert_text(d):
            raise AssertionError(f"the playground showed an error instead of a result: {text}")
        return None

    result = wait(driver, 60).until(arrived, "a new result with its image loaded")
    assert result.get_attribute("data-request-id").startswith("req_"), result.get_attribute("outerHTML")[:300]
    return result


def natural_size(driver: WebDriver, result: WebElement) -> tuple[int, int]:
    image = result.find_element(By.TAG_NAME, "img")
    width, height = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    return width, height


def generate_in_playground(driver: WebDriver, model: str, prompt: str, ratio: str | None = None, size: str | None = None,
                           paying_key: str | None = None, files: list[Path] | None = None) -> WebElement:
    wait(driver).until(EC.visibility_of_element_located((By.ID, "prompt")))
    if paying_key is not None:
        choose(driver, "paying_key", paying_key)
    choose(driver, "model", model)
    if ratio is not None:
        choose(driver, "aspect_ratio", ratio)
    if size is not None:
        choose(driver, "size", size)
    fill(driver.find_element(By.ID, "prompt"), prompt)
    if files:
        driver.find_element(By.ID, "reference").send_keys("\n".join(str(path) for path in files))
    before = result_ids(driver)
    return new_result(driver, before, lambda: button(driver, "Generate").click())


def charge_shown(text: str, charge: float) -> bool:
    """Whether ``text`` shows ``charge`` (USD) at some precision of two or more decimals."""
    for match in re.finditer(r"\d+\.(\d{2,})", text.replace(",", "")):
        decimals = len(match.group(1))
        if abs(float(match.group(0)) - charge) <= 0.5 * 10 ** -decimals + 1e-12:
            return True
    return False


def png_file(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    from PIL import Image

    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------
# Module-wide signed-in browsers for the page-by-page checks


@pytest.fixture(scope="module")
def operator_browser(root: str) -> Iterator[WebDriver]:
    driver = start_browser()
    try:
        sign_in(driver, root, ADMIN_TOKEN, "overview")
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def holder(root: str) -> tuple[str, str]:
    """A key holder with a credit and one generation in the usage log (so pages have rows)."""
    name, secret = new_key(root, credit_usd=5)
    request_id = generate_via_api(root, secret)
    settled_usage(root, secret, request_id)
    return name, secret


@pytest.fixture(scope="module")
def holder_browser(root: str, holder: tuple[str, str]) -> Iterator[WebDriver]:
    driver = start_browser()
    try:
        sign_in(driver, root, holder[1], "usage")
        yield driver
    finally:
        driver.quit()


# =============================================================================================
# 1. Reaching the console, signing in and out


def test_demo_banner_names_the_console(nanogate_bin: Path, tmp_path) -> None:
    """``serve --demo`` prints the console's URL (``Console: http://127.0.0.1:PORT/console/``)."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(nanogate_bin), "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
    )
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            if re.fullmatch(rf"Console:\s+http://127\.0\.0\.1:{port}/console/", line.strip()):
                return
        pytest.fail("the demo banner has no line 'Console: http://127.0.0.1:PORT/console/':\n" + "".join(seen))
    finally:
        _stop(proc)


def test_console_redirects_and_signed_out_page(root: str, browser: WebDriver) -> None:
    """``/console`` sends the browser to ``/console/``, which (signed out) is the sign-in form:
    a labelled Token field and a Sign in button, with the security headers."""
    answer = raw("GET", f"{root}/console")
    assert answer.status == 303, answer.status
    assert urllib.parse.urljoin(f"{root}/console", answer.header("Location")) == console_url(root), answer.header("Location")
    assert not answer.header("Location").startswith(("http:", "https:", "/")), f"not relative: {answer.header('Location')}"

    page = raw("GET", console_url(root))
    assert page.status == 200, page.status
    assert_security_headers(page, console_url(root))
    assert COOKIE not in page.header("Set-Cookie")

    browser.get(f"{root}/console")
    wait(browser).until(lambda d: d.current_url == console_url(root))
    label = browser.find_element(By.CSS_SELECTOR, "label[for=token]")
    assert label.is_displayed() and label.text.strip() == "Token"
    form = browser.find_element(By.ID, "token").find_element(By.XPATH, "ancestor::form")
    assert (form.get_attribute("method") or "").lower() == "post"
    assert button(browser, "Sign in").get_attribute("type") == "submit"
    assert_no_csp_violations(browser)
    violations = serious_axe_violations(browser)
    screenshot(browser, "signin")
    assert not violations, "\n".join(violations)


def test_admin_sign_in_and_navigation(root: str, browser: WebDriver) -> None:
    """The admin token opens the operator view: the Overview, every operator page's link, and
    ``/console/`` now redirects to the overview."""
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    for link in OPERATOR_PAGES:
        assert browser.find_element(By.LINK_TEXT, link).is_displayed(), link
    assert button(browser, "Sign out")
    again = raw("GET", console_url(root), cookie_header(session_cookie(browser)))
    assert again.status == 303 and urllib.parse.urljoin(console_url(root), again.header("Location")) == console_url(root, "overview"), (
        again.status, again.header("Location"))


def test_key_sign_in_sees_only_its_pages(root: str, browser: WebDriver) -> None:
    """A key opens the key holder's view: Usage, Playground, Models, Quick start, no operator
    page; its session cannot reach the admin API or the operator's pages."""
    name, secret = new_key(root, credit_usd=1)
    sign_in(browser, root, secret, "usage")
    for link in HOLDER_PAGES:
        assert browser.find_element(By.LINK_TEXT, link).is_displayed(), link
    for link in OPERATOR_ONLY:
        assert not browser.find_elements(By.LINK_TEXT, link), f"a key holder sees the operator link {link!r}"
    cookie = cookie_header(session_cookie(browser))
    assert raw("GET", console_url(root), cookie).header("Location").rstrip("/").endswith("usage")
    refused = raw("GET", f"{root}/console/api/admin/v1/keys", cookie)
    assert refused.status in (401, 403), (refused.status, refused.body[:300])
    assert name.encode() not in refused.body
    page = raw("GET", console_url(root, "keys"), cookie)
    assert page.status != 200 or b"data-key=" not in page.body, "a key holder's session got the operator's Keys page"
    assert raw("GET", f"{root}/console/api/v1/models", cookie).status == 200


@pytest.mark.parametrize("token", ["wrong-admin-token", "sk-ng-" + "0" * 40], ids=["wrong-token", "unknown-key"])
def test_wrong_token_refused(root: str, browser: WebDriver, token: str) -> None:
    """A wrong token shows an alert, stays on the sign-in page, and sets no cookie."""
    browser.get(console_url(root))
    wait(browser).until(EC.visibility_of_element_located((By.ID, "token"))).send_keys(token)
    button(browser, "Sign in").click()
    shown = wait(browser).until(lambda d: alert_text(d) or None, "an alert after a wrong token")
    assert token not in shown
    assert browser.current_url == console_url(root)
    assert browser.get_cookie(COOKIE) is None, browser.get_cookies()
    assert browser.find_element(By.ID, "token").is_displayed()


def test_cookie_flags_and_scope(root: str, browser: WebDriver) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, Path=/console, not Secure over plain
    http, opaque, invisible to scripts; it opens ``/console/api`` but not ``/v1`` nor ``/admin/v1``."""
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    cookies = [c for c in browser.get_cookies() if c["name"] == COOKIE]
    assert len(cookies) == 1, browser.get_cookies()
    cookie = cookies[0]
    assert cookie["httpOnly"] is True, cookie
    assert cookie["sameSite"] == "Strict", cookie
    assert cookie["path"] == "/console", cookie
    assert cookie["secure"] is False, cookie
    assert ADMIN_TOKEN not in cookie["value"] and len(cookie["value"]) >= 20, cookie
    assert COOKIE not in browser.execute_script("return document.cookie")

    sent = cookie_header(cookie["value"])
    assert raw("GET", f"{root}/console/api/admin/v1/keys", sent).status == 200
    for url in (f"{root}/v1/models", f"{root}/admin/v1/keys", f"{root}/v1/usage"):
        answer = raw("GET", url, sent)
        assert answer.status == 401, f"{url} with only the console cookie: {answer.status} {answer.body[:200]!r}"


def test_sign_out_ends_the_session(root: str, browser: WebDriver) -> None:
    """Sign out brings back the sign-in page, and the old cookie opens nothing any more."""
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    old = cookie_header(session_cookie(browser))
    assert raw("GET", console_url(root, "overview"), old).status == 200
    sign_out(browser)
    answer = raw("GET", console_url(root, "overview"), old)
    assert answer.status == 303, answer.status
    assert urllib.parse.urljoin(console_url(root, "overview"), answer.header("Location")) == console_url(root), answer.header("Location")
    assert raw("GET", f"{root}/console/api/admin/v1/keys", old).status in (401, 403)
    browser.get(console_url(root, "keys"))
    wait(browser).until(EC.visibility_of_element_located((By.ID, "token")))


@pytest.mark.parametrize("change", ["revoke", "rotate", "disable"])
def test_key_change_ends_its_sessions(root: str, browser: WebDriver, change: str) -> None:
    """Revoking, rotating or disabling a key (admin API) ends its console sessions at once."""
    name, secret = new_key(root, credit_usd=1)
    sign_in(browser, root, secret, "usage")
    cookie = cookie_header(session_cookie(browser))
    assert raw("GET", console_url(root, "usage"), cookie).status == 200
    if change == "revoke":
        assert admin_api(root, "DELETE", f"keys/{name}").status == 204
    elif change == "rotate":
        rotated = admin_api(root, "POST", f"keys/{name}/rotate")
        assert rotated.status == 200, rotated.body[:300]
    else:
        assert admin_api(root, "PATCH", f"keys/{name}", {"disabled": True}).status == 200
    answer = raw("GET", console_url(root, "usage"), cookie)
    assert answer.status == 303, f"after {change}, the key's old session still opens its usage page ({answer.status})"
    assert raw("GET", f"{root}/console/api/v1/models", cookie).status in (401, 403)
    browser.refresh()
    wait(browser).until(EC.visibility_of_element_located((By.ID, "token")))
    if change == "rotate":
        sign_in(browser, root, rotated.json()["secret"], "usage")


# =============================================================================================
# 2. Cross-site requests


def test_unsafe_console_requests_need_the_header_and_our_origin(root: str, browser: WebDriver) -> None:
    """With a valid session cookie, a POST is refused (403 ``csrf_rejected``, nothing created)
    without ``X-NanoGate-Console``, from another origin, or marked cross-site; with both it works."""
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    cookie = cookie_header(session_cookie(browser))
    other = f"http://127.0.0.1:{_free_port()}"
    url = f"{root}/console/api/admin/v1/keys"
    refused = {
        "no header": {**cookie, "Origin": root},
        "other origin": {**cookie, "X-NanoGate-Console": "1", "Origin": other},
        "cross-site": {**cookie, "X-NanoGate-Console": "1", "Origin": root, "Sec-Fetch-Site": "cross-site"},
    }
    for why, headers in refused.items():
        name = f"csrf-{uuid.uuid4().hex[:8]}"
        answer = raw("POST", url, headers, {"name": name})
        assert answer.status == 403, f"{why}: {answer.status} {answer.body[:300]!r}"
        assert answer.json()["error"]["code"] == "csrf_rejected", f"{why}: {answer.body[:300]!r}"
        assert admin_api(root, "GET", f"keys/{name}").status == 404, f"{why}: the key was created"
    name = f"csrf-ok-{uuid.uuid4().hex[:8]}"
    accepted = raw("POST", url, {**cookie, "X-NanoGate-Console": "1", "Origin": root, "Sec-Fetch-Site": "same-origin"}, {"name": name})
    assert accepted.status == 201, accepted.body[:300]
    assert admin_api(root, "GET", f"keys/{name}").status == 200

    # The same for the public API through the console, and for signing in from elsewhere.
    generation = raw("POST", f"{root}/console/api/v1/images/generations",
                     {**cookie, "Origin": other, "X-NanoGate-Console": "1", "X-NanoGate-Console-Key": name},
                     {"model": "nano-banana", "prompt": "a forged banana"})
    assert generation.status == 403, generation.body[:300]
    signin = raw("POST", console_url(root, "signin"), {"Origin": other, "X-NanoGate-Console": "1", "Content-Type": "application/x-www-form-urlencoded"},
                 urllib.parse.urlencode({"token": ADMIN_TOKEN}))
    assert signin.status == 403, f"a sign-in from {other}: {signin.status}"
    assert COOKIE not in signin.header("Set-Cookie")


@contextlib.contextmanager
def static_site(files: dict[str, str]) -> Iterator[str]:
    """A plain web server on another loopback port serving ``files``; yields its origin."""
    directory = Path(tempfile.mkdtemp(prefix="nanogate-attacker-"))
    for name, text in files.items():
        (directory / name).write_text(text)
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


def test_cross_origin_page_cannot_act_for_the_operator(root: str, browser: WebDriver) -> None:
    """A page on another port of 127.0.0.1 (same site, so the Strict cookie is sent) tries to
    create keys through the signed-in operator's session: a fetch with the console's header
    (needs a CORS preflight the console must not grant) and a plain form POST. Neither key exists."""
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    by_fetch, by_form = f"xsite-fetch-{uuid.uuid4().hex[:8]}", f"xsite-form-{uuid.uuid4().hex[:8]}"
    target = f"{root}/console/api/admin/v1/keys"
    page = f"""<!doctype html><html><head><title>attacker</title></head><body>
<form id="f" method="post" action="{target}" enctype="text/plain"><input name='{{"name":"{by_form}","x":"' value='"}}'></form>
<script>
fetch({json.dumps(target)}, {{method: "POST", credentials: "include", headers: {{"X-NanoGate-Console": "1",
  "Content-Type": "application/json"}}, body: JSON.stringify({{name: {json.dumps(by_fetch)}}})}})
  .then(r => {{ document.title = "fetch:" + r.status; }}, () => {{ document.title = "fetch:blocked"; }});
</script></body></html>"""
    with static_site({"attack.html": page}) as origin:
        browser.get(f"{origin}/attack.html")
        title = wait(browser).until(lambda d: d.title if d.title.startswith("fetch:") else None, "the attacker's fetch settled")
        assert title == "fetch:blocked", f"the cross-origin fetch got an answer the page could read: {title}"
        browser.execute_script("document.getElementById('f').submit()")
        wait(browser).until(lambda d: d.current_url.startswith(target), "the form POST's answer")
        assert "sk-ng-" not in browser.page_source, browser.page_source[:500]
    for name in (by_fetch, by_form):
        assert admin_api(root, "GET", f"keys/{name}").status == 404, f"{name} was created from another origin"


# =============================================================================================
# 3. Every page: headers, CSP, axe, screenshot


PAGES = [("operator", link, path) for link, path in OPERATOR_PAGES.items()] + [("holder", link, path) for link, path in HOLDER_PAGES.items()]


@pytest.mark.parametrize("view,link,path", PAGES, ids=[f"{view}-{path}" for view, _, path in PAGES])
def test_page(root: str, operator_browser: WebDriver, holder_browser: WebDriver, view: str, link: str, path: str) -> None:
    """Reached by its navigation link: 200 with the security headers, no CSP violation in the
    browser, no serious or critical axe-core violation; a screenshot is kept."""
    driver = operator_browser if view == "operator" else holder_browser
    go(driver, root, link, path)
    if path == "playground":
        wait(driver).until(EC.visibility_of_element_located((By.ID, "prompt")))
    screenshot(driver, f"{view}-{path}")
    answer = raw("GET", console_url(root, path), cookie_header(session_cookie(driver)))
    assert answer.status == 200, answer.status
    assert_security_headers(answer, console_url(root, path))
    assert b"console.js" in answer.body, "the page does not load console.js (the CSP violation recorder)"
    assert_no_csp_violations(driver)
    violations = serious_axe_violations(driver)
    assert not violations, "\n".join(violations)


# =============================================================================================
# 4. Keys, playground and usage


def test_html_key_name_is_text(root: str, browser: WebDriver) -> None:
    """A key named ``<img src=x onerror=alert(1)>`` is shown as those characters on the Keys page
    and in the playground's paying-key list: no image element, no alert, no CSP violation
    (an injected inline handler would be one)."""
    existing = admin_api(root, "GET", "keys").json()
    if not any(key["name"] == XSS_NAME for key in existing):
        new_key(root, credit_usd=1, name=XSS_NAME)
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Keys", "keys")
    rows = wait(browser).until(
        lambda d: [row for row in d.find_elements(By.CSS_SELECTOR, "tr[data-key]") if row.get_attribute("data-key") == XSS_NAME] or None,
        "the HTML-named key's row",
    )
    assert XSS_NAME in rows[0].text
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']"), "the key name became an <img>"
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert_no_csp_violations(browser)

    go(browser, root, "Playground", "playground")
    wait(browser).until(
        lambda d: any(o.text.strip() == XSS_NAME for o in Select(d.find_element(By.ID, "paying_key")).options),
        "the HTML-named key among the paying keys, as text",
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']")
    assert_no_csp_violations(browser)


def test_create_key_sign_in_generate_and_pay(root: str, browser: WebDriver) -> None:
    """The operator creates a key with $5 on the Keys page and reads its secret once; the key
    holder signs in with it, generates Pro 16:9 at 2K in the playground (the image is
    2752x1536), finds the request's row with its charge on the Usage page, and the balance
    (``/v1/usage``) dropped by exactly that charge."""
    create_key_generate_and_pay(root, browser)


def test_create_key_generate_and_pay_on_postgresql(nanogate_bin: Path, tmp_path_factory, browser: WebDriver) -> None:
    """The same, against a gateway whose keys, sessions and usage live in PostgreSQL."""
    if not PG_URL:
        pytest.skip("NANOGATE_TEST_PG_URL is unset (scripts/test.sh starts a PostgreSQL cluster and sets it)")
    env = {"NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    with fresh_database("nanogate_console") as url:
        # The gateway stops before its database is dropped (the blocks end in reverse order).
        with _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-console-pg", env={**env, "NANOGATE_DATABASE_URL": url}) as gateway:
            create_key_generate_and_pay(gateway.base_url.removesuffix("/v1"), browser, screenshots=False)


def create_key_generate_and_pay(root: str, browser: WebDriver, screenshots: bool = True) -> None:
    name = f"console-ui-{uuid.uuid4().hex[:8]}"
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Keys", "keys")
    for control, label in (("key-name", "Name"), ("key-group", "Group"), ("key-credit", "Credit (USD)")):
        shown = browser.find_element(By.CSS_SELECTOR, f"label[for={control}]")
        assert shown.is_displayed() and shown.text.strip() == label, (control, shown.text)
    fill(browser.find_element(By.ID, "key-name"), name)
    fill(browser.find_element(By.ID, "key-group"), "default")
    fill(browser.find_element(By.ID, "key-credit"), "5")
    button(browser, "Create key").click()
    secret_element = wait(browser).until(
        lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, "[data-secret]") if e.text.strip().startswith("sk-ng-")), None),
        "the new secret in [data-secret]",
    )
    secret = secret_element.text.strip()
    if screenshots:
        screenshot(browser, "operator-keys-created")
    wait(browser).until(EC.element_to_be_clickable((By.LINK_TEXT, "Done"))).click()  # the secret is read: back to the list
    wait(browser).until(
        lambda d: any(row.get_attribute("data-key") == name for row in d.find_elements(By.CSS_SELECTOR, "tr[data-key]")),
        "the new key's row in the keys table",
    )
    key = admin_api(root, "GET", f"keys/{name}").json()
    assert key["credit_usd"] == 5 and key["group"] == "default", key
    before = own_usage(root, secret)["key"]
    assert before["balance_usd"] == 5, before

    sign_out(browser)
    sign_in(browser, root, secret, "usage")
    go(browser, root, "Playground", "playground")
    choose(browser, "model", "nano-banana-pro")  # a model with sizes: every control shows
    wait(browser).until(lambda d: d.find_element(By.ID, "size").is_displayed(), "Size shown for nano-banana-pro")
    for control, label in PLAYGROUND_LABELS.items():
        shown = browser.find_element(By.CSS_SELECTOR, f"label[for={control}]")
        assert shown.is_displayed() and shown.text.strip() == label, (control, shown.text)
    result = generate_in_playground(browser, "nano-banana-pro", "a busy city street, photorealistic", ratio="16:9", size="2K")
    request_id = result.get_attribute("data-request-id")
    assert natural_size(browser, result) == (2752, 1536)
    assert re.search(r"2752\s*[x×]\s*1536", result.text), f"the delivered size is not shown: {result.text!r}"
    if screenshots:
        screenshot(browser, "holder-playground-result")

    account, row = settled_usage(root, secret, request_id)
    charge = row["cost_usd"]
    assert charge > 0 and row["model"] == "nano-banana-pro" and row["status"] == 200, row
    assert abs((before["balance_usd"] - account["key"]["balance_usd"]) - charge) < 1e-9, (before, account["key"], charge)

    go(browser, root, "Usage", "usage")

    def usage_row(d: WebDriver):
        rows = d.find_elements(By.CSS_SELECTOR, f"tr[data-request-id='{request_id}']")
        if not rows:
            d.refresh()
        return rows[0] if rows else None

    shown = wait(browser).until(usage_row, f"the usage row {request_id}")
    cells = shown.find_elements(By.CSS_SELECTOR, "[data-charge]")
    text = cells[0].text if cells else shown.text
    assert charge_shown(text, charge), f"the row does not show the charge {charge}: {text!r}"
    if screenshots:
        screenshot(browser, "holder-usage-after")


def test_edit_with_two_reference_images(root: str, browser: WebDriver, tmp_path: Path) -> None:
    """Two reference images chosen in the file picker make the request an edit, answered with
    an image; the usage row says images.edits."""
    _, secret = new_key(root, credit_usd=5)
    first = png_file(tmp_path / "first.png", (320, 240), (200, 40, 40))
    second = png_file(tmp_path / "second.png", (240, 320), (40, 40, 200))
    sign_in(browser, root, secret, "usage")
    go(browser, root, "Playground", "playground")
    result = generate_in_playground(browser, "nano-banana", "put the red one on the blue one", files=[first, second])
    request_id = result.get_attribute("data-request-id")
    _, row = settled_usage(root, secret, request_id)
    assert row["endpoint"] == "images.edits", row
    screenshot(browser, "holder-playground-edit")


def test_bad_ratio_shows_the_400_verbatim(root: str, browser: WebDriver) -> None:
    """A ratio the model does not take (1:8 is Nano Banana 2's only; the option is added to the
    page as a stale page would have it) shows the API's 400 message word for word, listing the
    ratios the model accepts."""
    _, secret = new_key(root, credit_usd=1)
    # The console may send the ratio as aspect_ratio or (for a model without tiers) as size:
    # either way the API's own message is what must be shown.
    messages = []
    for field in ("aspect_ratio", "size"):
        expected = raw("POST", f"{root}/v1/images/generations", bearer(secret), {"model": "nano-banana", "prompt": "a banana", field: "1:8"})
        assert expected.status == 400
        messages.append(expected.json()["error"]["message"])
        assert "'1:8'" in messages[-1] and "16:9" in messages[-1] and "21:9" in messages[-1], messages[-1]

    sign_in(browser, root, secret, "usage")
    go(browser, root, "Playground", "playground")
    choose(browser, "model", "nano-banana")
    browser.execute_script(
        "const s = document.getElementById('aspect_ratio');"
        "if (![...s.options].some(o => o.value === '1:8')) s.add(new Option('1:8', '1:8'));"
        "s.value = '1:8'; s.dispatchEvent(new Event('change', {bubbles: true}));"
    )
    fill(browser.find_element(By.ID, "prompt"), "a banana")
    before = result_ids(browser)
    button(browser, "Generate").click()
    shown = wait(browser).until(lambda d: alert_text(d) or None, "the 400 shown in [role=alert]")
    assert any(message in shown for message in messages), f"shown {shown!r}, the API says {messages!r}"
    assert result_ids(browser) == before
    screenshot(browser, "holder-playground-bad-ratio")


def test_model_controls_follow_capabilities(root: str, browser: WebDriver) -> None:
    """The playground's ratios and sizes are the model's ``/v1/models`` capabilities: Size is
    hidden for Nano Banana (no tiers), Pro offers its tiers, Nano Banana 2 its extra ratios."""
    _, secret = new_key(root, credit_usd=1)
    listed = raw("GET", f"{root}/v1/models", bearer(secret))
    assert listed.status == 200
    capabilities = {model["id"]: model["capabilities"] for model in listed.json()["data"]}
    sign_in(browser, root, secret, "usage")
    go(browser, root, "Playground", "playground")

    def values(control: str) -> list[str]:
        return [(o.get_attribute("value") or "").lower() for o in Select(browser.find_element(By.ID, control)).options]

    for model in ("nano-banana", "nano-banana-pro", "nano-banana-2"):
        ratios = [ratio.lower() for ratio in capabilities[model]["aspect_ratios"]]
        sizes = [size.lower() for size in capabilities[model]["sizes"]]
        choose(browser, "model", model)
        wait(browser).until(lambda d: sorted(values("aspect_ratio")) == sorted(ratios), f"{model}'s ratios {ratios}")
        if sizes:
            wait(browser).until(lambda d: d.find_element(By.ID, "size").is_displayed() and sorted(values("size")) == sorted(sizes),
                                f"Size shown with {model}'s tiers {sizes}")
        else:
            wait(browser).until(lambda d: not d.find_element(By.ID, "size").is_displayed(), f"Size hidden for {model}")
    assert "1:8" in [r.lower() for r in capabilities["nano-banana-2"]["aspect_ratios"]]
    assert capabilities["nano-banana"]["sizes"] == [] and "2K" in capabilities["nano-banana-pro"]["sizes"]


def test_operator_playground_charges_the_chosen_key(root: str, browser: WebDriver) -> None:
    """The operator picks which key pays; the usage row names that key."""
    name, _ = new_key(root, credit_usd=2)
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Playground", "playground")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=paying_key]").text.strip() == "Paying key"
    result = generate_in_playground(browser, "nano-banana", "an operator's banana", paying_key=name)
    request_id = result.get_attribute("data-request-id")
    rows = poll(lambda: [r for r in admin_api(root, "GET", f"usage?key={name}").json() if r["request_id"] == request_id], "the usage row")
    assert rows[0]["key"] == name and rows[0]["cost_usd"] > 0, rows[0]
    screenshot(browser, "operator-playground-result")


def test_usage_filters_and_csv(root: str, browser: WebDriver) -> None:
    """Usage filtered by key (the filter stays in the URL and the form after loading) lists just
    that key's rows, and its Download CSV is byte for byte the admin API's CSV of the same filter."""
    name, secret = new_key(root, credit_usd=2)
    ids = {generate_via_api(root, secret, prompt) for prompt in ("a csv banana", "a second, \"quoted\" banana")}
    for request_id in ids:
        settled_usage(root, secret, request_id)

    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Usage", "usage")
    field = browser.find_element(By.NAME, "key")
    fill(field, name)
    field.find_element(By.XPATH, "ancestor::form").find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait(browser).until(lambda d: urllib.parse.parse_qs(urllib.parse.urlsplit(d.current_url).query).get("key") == [name], "key= in the URL")
    browser.refresh()
    assert browser.find_element(By.NAME, "key").get_attribute("value") == name
    shown = wait(browser).until(lambda d: {r.get_attribute("data-request-id") for r in d.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")} or None)
    assert shown == ids, f"rows shown {shown}, the key's {ids}"
    screenshot(browser, "operator-usage-filtered")

    link = browser.find_element(By.LINK_TEXT, "Download CSV")
    href = link.get_dom_attribute("href")
    assert href.startswith("api/admin/v1/usage?"), href
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
    assert query.get("format") == ["csv"] and query.get("key") == [name], href
    console_csv = raw("GET", link.get_attribute("href"), cookie_header(session_cookie(browser)))
    assert console_csv.status == 200 and console_csv.header("Content-Type").startswith("text/csv"), (console_csv.status, console_csv.body[:200])
    admin_csv = admin_api(root, "GET", "usage?" + urllib.parse.urlsplit(href).query)
    assert admin_csv.status == 200
    assert console_csv.body == admin_csv.body
    assert all(request_id.encode() in console_csv.body for request_id in ids)


# =============================================================================================
# 5. Phone width and keyboard


def test_playground_at_phone_width(root: str, browsers) -> None:
    """At 390x844 the playground fits the width (no sideways scrolling) and Generate works."""
    _, secret = new_key(root, credit_usd=1)
    driver = browsers()
    driver.set_window_size(390, 844)
    sign_in(driver, root, secret, "usage")
    driver.get(console_url(root, "playground"))
    wait(driver).until(EC.visibility_of_element_located((By.ID, "prompt")))
    width, scroll_width = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
    assert width <= 400 and scroll_width <= width, f"the page is {scroll_width}px wide in a {width}px window"
    screenshot(driver, "phone-playground")
    result = generate_in_playground(driver, "nano-banana", "a pocket banana", ratio="1:1")
    assert natural_size(driver, result) == (1024, 1024)
    screenshot(driver, "phone-playground-result")


def test_playground_by_keyboard(root: str, browser: WebDriver) -> None:
    """Every visible control of the playground is reached with TAB; from Prompt, TAB reaches
    Generate and ENTER generates."""
    _, secret = new_key(root, credit_usd=1)
    sign_in(browser, root, secret, "usage")
    browser.get(console_url(root, "playground"))
    prompt = wait(browser).until(EC.visibility_of_element_located((By.ID, "prompt")))
    wait(browser).until(lambda d: Select(d.find_element(By.ID, "model")).options, "the models listed")

    def active() -> WebElement:
        return browser.switch_to.active_element

    def describe(element: WebElement) -> str:
        return f"<{element.tag_name} id={element.get_attribute('id')!r}>{element.text[:30]!r}"

    # The whole page, from its start (nothing focused since it loaded): every visible labelled
    # control is a TAB stop.
    visited: list[str] = []
    for _ in range(80):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        visited.append(active().get_attribute("id") or describe(active()))
    wanted = {control for control in PLAYGROUND_LABELS if browser.find_element(By.ID, control).is_displayed()}
    assert wanted <= set(visited), f"not reached by TAB: {wanted - set(visited)} (visited {visited})"

    browser.execute_script("arguments[0].focus()", prompt)
    active().send_keys("a keyboard banana")
    generate = button(browser, "Generate")
    path: list[str] = []
    for _ in range(40):
        if active() == generate:
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()
        path.append(describe(active()))
    assert active() == generate, f"TAB from Prompt never reached Generate: {path}"
    result = new_result(browser, result_ids(browser), lambda: active().send_keys(Keys.ENTER))
    assert result.get_attribute("data-request-id").startswith("req_")


# =============================================================================================
# 6. Behind nginx under /gw/ (deploy/nginx.conf's example)


def urls_on_page(driver: WebDriver) -> list[str]:
    """Every URL the page links to or loads (resolved): links, forms, scripts, styles, images."""
    return driver.execute_script(
        "return [...document.querySelectorAll('a[href]')].map(e => e.href)"
        ".concat([...document.querySelectorAll('form')].map(e => e.action))"
        ".concat([...document.querySelectorAll('script[src], img[src]')].map(e => e.src))"
        ".concat([...document.querySelectorAll('link[href]')].map(e => e.href))"
        ".filter(u => u && !u.startsWith('data:') && !u.startsWith('blob:'))"
    )


def test_console_behind_nginx_under_gw(private_gateway, browser: WebDriver) -> None:
    """Through deploy/nginx.conf's /gw/ example: sign in at /gw/console/, the cookie's Path is
    /gw/console, the Keys page creates a key, the playground generates with it, sign-out works;
    every URL on every page and every request the browser made stayed under /gw/."""
    port = _free_port()
    gateway = private_gateway(env={"NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN, "NANOGATE_PUBLIC_URL": f"http://127.0.0.1:{port}/gw"})
    direct = gateway.base_url.removesuffix("/v1")
    with running_nginx([int(direct.rsplit(":", 1)[1])], gw=True, port=port) as (_, prefix):
        front = f"http://127.0.0.1:{port}/gw"
        stray: list[str] = []

        def check_urls() -> None:
            stray.extend(u for u in urls_on_page(browser) if not u.startswith(front + "/"))

        browser.get(f"{front}/console")
        wait(browser).until(lambda d: d.current_url == f"{front}/console/", "/gw/console -> /gw/console/")
        sign_in(browser, front, ADMIN_TOKEN, "overview")
        check_urls()
        cookie = browser.get_cookie(COOKIE)
        assert cookie and cookie["path"] == "/gw/console", browser.get_cookies()

        go(browser, front, "Keys", "keys")
        check_urls()
        name = f"gw-{uuid.uuid4().hex[:8]}"
        fill(browser.find_element(By.ID, "key-name"), name)
        fill(browser.find_element(By.ID, "key-group"), "default")
        fill(browser.find_element(By.ID, "key-credit"), "3")
        button(browser, "Create key").click()
        wait(browser).until(lambda d: any(e.text.strip().startswith("sk-ng-") for e in d.find_elements(By.CSS_SELECTOR, "[data-secret]")),
                            "the new secret behind nginx")
        wait(browser).until(EC.element_to_be_clickable((By.LINK_TEXT, "Done"))).click()
        wait(browser).until(lambda d: any(r.get_attribute("data-key") == name for r in d.find_elements(By.CSS_SELECTOR, "tr[data-key]")),
                            "the new key's row behind nginx")
        assert admin_api(direct, "GET", f"keys/{name}").status == 200
        screenshot(browser, "gw-keys")

        go(browser, front, "Playground", "playground")
        result = generate_in_playground(browser, "nano-banana", "a banana behind nginx", ratio="1:1", paying_key=name)
        assert natural_size(browser, result) == (1024, 1024)
        check_urls()
        screenshot(browser, "gw-playground")

        go(browser, front, "Usage", "usage")
        check_urls()
        sign_out(browser)
        assert browser.current_url.startswith(front + "/console/"), browser.current_url
        check_urls()

        assert not stray, f"URLs outside /gw/: {sorted(set(stray))}"
        asked = [line.split(" ")[1] for line in (prefix / "access.log").read_text().splitlines() if line.strip()]
        # Chromium asks for /favicon.ico at the host's root by itself when a page names no icon.
        outside = sorted({path for path in asked if not path.startswith("/gw/") and path != "/favicon.ico"})
        assert not outside, f"the browser asked nginx for paths outside /gw/: {outside}"
