"""More of the browser console at ``/console/``, driven as a person would drive it (Selenium with
Debian's headless Chromium against ``nanogate serve --demo``), beside ``test_console.py`` whose
fixtures and helpers it reuses.

What is checked: the playground's chat mode (two turns, each with an image, both logged as chat
completions, the second sending the first image back), streaming (the final image at the
model's pixel size), the in-browser history (Re-run, Delete, Use as input), "Copy as curl" and
"Copy as Python" (both run, the curl's PNG at the size the playground previewed); the
operator's key actions (Top up, Disable/Enable, Rotate, Revoke with its typed confirmation), the
Groups page's form, the Channels page (Test, Add, Remove), the Jobs page (a queued job
cancelled there), the usage row's upstream attempts, and axe on the playground with a result.
Each saves a screenshot ``more-*.png`` in ``.build/console-screenshots/``.

Waits are explicit and bounded; nothing sleeps to prove an absence.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_console import (  # noqa: F401  (browser, browsers, console_gateway, root are fixtures)
    ADMIN_TOKEN,
    admin_api,
    alert_text,
    assert_no_csp_violations,
    bearer,
    browser,
    browsers,
    button,
    choose,
    console_gateway,
    console_url,
    fill,
    generate_in_playground,
    generate_via_api,
    go,
    natural_size,
    new_key,
    new_result,
    own_usage,
    poll,
    raw,
    result_ids,
    root,
    screenshot,
    serious_axe_violations,
    settled_usage,
    sign_in,
    wait,
)

from selenium.webdriver.common.by import By  # noqa: E402  (test_console skips the module first without Chromium)
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402

VENV_PYTHON = REPO_ROOT / ".build" / "compat-venv" / "bin" / "python"
PIXELS = re.compile(r"(\d+)\s*×\s*(\d+)\s*pixels")


def capabilities(root: str, secret: str) -> dict[str, dict]:
    listed = raw("GET", f"{root}/v1/models", bearer(secret))
    assert listed.status == 200, listed.body[:300]
    return {model["id"]: model["capabilities"] for model in listed.json()["data"]}


def expected_pixels(caps: dict, ratio: str, size: str | None) -> tuple[int, int]:
    tier = size if caps["sizes"] else "default"
    width, height = caps["pixel_sizes"][tier][ratio].lower().split("x")
    return int(width), int(height)


def open_playground(driver: WebDriver, root: str) -> None:
    go(driver, root, "Playground", "playground")
    wait(driver).until(EC.visibility_of_element_located((By.ID, "prompt")))
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"), "the models listed")


def tick(driver: WebDriver, control: str, label: str) -> None:
    shown = driver.find_element(By.CSS_SELECTOR, f"label[for={control}]")
    assert shown.is_displayed() and shown.text.strip() == label, (control, shown.text)
    box = driver.find_element(By.ID, control)
    if not box.is_selected():
        shown.click()  # as a person would: on the label
    wait(driver).until(lambda d: d.find_element(By.ID, control).is_selected(), f"#{control} ticked")


# The page's fetches as the playground makes them: URL, the JSON body's "stream", the answer's type.
RECORD_FETCHES = """
window.__testFetches = [];
const original = window.fetch;
window.fetch = async (input, init = {}) => {
  let stream = null;
  try { stream = JSON.parse(init.body).stream ?? null; } catch (e) { /* not JSON */ }
  const response = await original(input, init);
  window.__testFetches.push({url: String(input), stream, type: response.headers.get('content-type') || ''});
  return response;
};
"""


def playground_idle(driver: WebDriver) -> None:
    """Generate is enabled again: the request (and a stream) has ended."""
    wait(driver, 60).until(lambda d: d.find_element(By.ID, "generate").is_enabled(), "Generate enabled again")


def history_items(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#history > li")


def in_item(item: WebElement, text: str) -> WebElement:
    return item.find_element(By.XPATH, f".//button[normalize-space()={json.dumps(text)}]")


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:16]
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# ---------------------------------------------------------------------------------------------
# The Keys page


def key_row(driver: WebDriver, name: str) -> WebElement:
    return wait(driver).until(
        lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "tr[data-key]") if r.get_attribute("data-key") == name), None),
        f"the row of key {name}",
    )


def labelled(row: WebElement, label: str) -> WebElement:
    """The input of ``row`` whose <label> reads ``label``."""
    shown = row.find_element(By.XPATH, f".//label[normalize-space()={json.dumps(label)}]")
    return row.find_element(By.ID, shown.get_attribute("for"))


def row_button(driver: WebDriver, name: str, text: str) -> WebElement:
    return wait(driver).until(
        lambda d: next((b for b in key_row(d, name).find_elements(By.XPATH, f".//button[normalize-space()={json.dumps(text)}]")
                        if b.is_displayed() and b.is_enabled()), None),
        f"a button {text!r} in the row of {name}",
    )


def models_status(root: str, secret: str) -> int:
    return raw("GET", f"{root}/v1/models", bearer(secret)).status


def until_status(root: str, secret: str, status: int, what: str) -> None:
    # A running gateway serves keys from a cache that follows a change within a second.
    poll(lambda: models_status(root, secret) == status, f"{what}: /v1/models answers {status}", timeout=10)


# =============================================================================================
# 1. Chat mode


def test_chat_mode_two_turns(root: str, browser: WebDriver) -> None:
    """Chat mode ticked, two prompts: each turn shows a result whose image loads; the key's usage
    log has chat-completions rows, the second turn carried the first, and sent the first turn's
    image back (input image tokens > 0: "each turn edits the last image"). New conversation
    starts afresh (a third turn costs the first turn's input tokens again)."""
    _, secret = new_key(root, credit_usd=5)
    sign_in(browser, root, secret, "usage")
    open_playground(browser, root)
    assert button(browser, "New conversation").is_displayed()
    choose(browser, "model", "nano-banana")
    tick(browser, "chat", "Chat mode (each turn edits the last image)")
    ids: list[str] = []
    for prompt in ("a banana on a white plate", "now paint the banana blue"):
        fill(browser.find_element(By.ID, "prompt"), prompt)
        result = new_result(browser, result_ids(browser), lambda: button(browser, "Generate").click())
        ids.append(result.get_attribute("data-request-id"))
        playground_idle(browser)
    screenshot(browser, "more-chat-two-turns")
    assert ids[0] != ids[1], ids
    assert len(result_ids(browser)) == 2, result_ids(browser)
    assert button(browser, "New conversation").is_displayed()

    # New conversation: the next turn starts afresh (none of the earlier turns' text goes along).
    button(browser, "New conversation").click()
    fill(browser.find_element(By.ID, "prompt"), "a banana on a white plate")
    third = new_result(browser, result_ids(browser), lambda: button(browser, "Generate").click())
    ids.append(third.get_attribute("data-request-id"))
    playground_idle(browser)

    rows = [settled_usage(root, secret, request_id)[1] for request_id in ids]
    assert [row["endpoint"] for row in rows] == ["chat.completions"] * 3, rows
    assert len(own_usage(root, secret)["data"]) == 3
    assert rows[1]["input_text_tokens"] > rows[0]["input_text_tokens"], "the second turn did not carry the first"
    assert rows[2]["input_text_tokens"] == rows[0]["input_text_tokens"] and rows[2]["input_image_tokens"] == 0, (
        f"New conversation did not start afresh: {rows[2]} (first turn {rows[0]})")
    assert rows[1]["input_image_tokens"] > 0, (
        "the second chat turn did not send the first turn's image back (input image tokens "
        f"{rows[1]['input_image_tokens']}): it generated anew instead of editing the last image; row {rows[1]}"
    )


# =============================================================================================
# 2. Streaming


def test_streaming_final_image_has_the_models_pixel_size(root: str, browser: WebDriver) -> None:
    """Stream ticked for Nano Banana Pro: its thought image shows as a partial card while the
    stream runs, then the final result replaces it (one card for the request), with its image at
    ``pixel_sizes[tier][ratio]``; the usage row is a stream's."""
    _, secret = new_key(root, credit_usd=5)
    caps = capabilities(root, secret)
    model, ratio, size = "nano-banana-pro", "16:9", "1K"
    assert caps[model]["streaming"] is True, caps[model]
    expected = expected_pixels(caps[model], ratio, size)
    sign_in(browser, root, secret, "usage")
    open_playground(browser, root)
    choose(browser, "model", model)
    choose(browser, "aspect_ratio", ratio)
    choose(browser, "size", size)
    wait(browser).until(lambda d: d.find_element(By.ID, "stream").is_displayed(), "the Stream box shown for a streaming model")
    tick(browser, "stream", "Stream (partial images as they come)")
    fill(browser.find_element(By.ID, "prompt"), "a streamed banana at dawn")
    browser.execute_script(RECORD_FETCHES)
    # Every card the page adds, partial or final, as it is added (a partial lives only while the
    # stream runs, so it is recorded rather than waited for).
    browser.execute_script(
        "window.__testCards = [];"
        "new MutationObserver(ms => ms.forEach(m => m.addedNodes.forEach(n => {"
        "  if (n.nodeType === 1 && n.matches('figure')) window.__testCards.push(n.hasAttribute('data-partial') ? 'partial' : 'final');"
        "}))).observe(document.getElementById('results'), {childList: true});"
    )
    result = new_result(browser, result_ids(browser), lambda: button(browser, "Generate").click())
    request_id = result.get_attribute("data-request-id")
    playground_idle(browser)
    cards_added = browser.execute_script("return window.__testCards")
    assert cards_added == ["partial", "final"], f"Gemini 3 Pro's thought image should show as a partial, then the final: {cards_added}"
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-partial]"), "the partial card was not replaced"

    sent = [f for f in browser.execute_script("return window.__testFetches") if "images/generations" in f["url"]]
    assert len(sent) == 1 and sent[0]["stream"] is True, f"the request did not ask for a stream: {sent}"
    assert sent[0]["type"].startswith("text/event-stream"), f"the answer was not a stream: {sent}"
    cards = browser.find_elements(By.CSS_SELECTOR, f"[data-result][data-request-id='{request_id}']")
    assert len(cards) == 1, f"{len(cards)} cards for {request_id} after the stream ended (partials not replaced?)"
    assert natural_size(browser, cards[0]) == expected, (natural_size(browser, cards[0]), expected)
    assert not alert_text(browser), alert_text(browser)
    screenshot(browser, "more-stream-result")
    _, row = settled_usage(root, secret, request_id)
    assert row["status"] == 200 and row["model"] == model, row


# =============================================================================================
# 3. History


def test_history_rerun_delete_and_use_as_input(root: str, browser: WebDriver) -> None:
    """After a generation the History list has its entry; Re-run makes a new result (a new
    request id); Delete removes an entry; Use as input adds one reference image."""
    _, secret = new_key(root, credit_usd=5)
    sign_in(browser, root, secret, "usage")
    open_playground(browser, root)
    assert not history_items(browser), "a fresh browser already has history"
    first = generate_in_playground(browser, "nano-banana", "a banana for the history", ratio="1:1")
    first_id = first.get_attribute("data-request-id")
    items = wait(browser).until(lambda d: history_items(d) or None, "an entry in History")
    assert len(items) == 1 and "a banana for the history" in items[0].text, [i.text for i in items]

    before = result_ids(browser)
    rerun = new_result(browser, before, lambda: in_item(history_items(browser)[0], "Re-run").click())
    assert rerun.get_attribute("data-request-id") != first_id
    settled_usage(root, secret, rerun.get_attribute("data-request-id"))  # a real, charged request
    wait(browser).until(lambda d: len(history_items(d)) == 2, "the re-run's entry in History")
    screenshot(browser, "more-history-two")

    in_item(history_items(browser)[0], "Delete").click()
    wait(browser).until(lambda d: len(history_items(d)) == 1, "History shrinks to one entry after Delete")
    browser.refresh()  # kept in IndexedDB: the deletion stays
    wait(browser).until(EC.visibility_of_element_located((By.ID, "prompt")))
    wait(browser).until(lambda d: len(history_items(d)) == 1, "one History entry after reloading")

    assert browser.find_element(By.ID, "reference-count").text.strip() == "0"
    use = in_item(history_items(browser)[0], "Use as input")
    assert use.is_enabled(), "Use as input is disabled: the entry kept no image"
    use.click()
    wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#reference-list li")) == 1, "one reference thumbnail")
    wait(browser).until(lambda d: d.find_element(By.ID, "reference-count").text.strip() == "1", "the reference count 1")
    thumb = browser.find_element(By.CSS_SELECTOR, "#reference-list li img")
    wait(browser).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", thumb),
                        "the reference thumbnail loads")
    screenshot(browser, "more-history-use-as-input")


# =============================================================================================
# 4. Copy as curl / Python


def test_copy_as_curl_and_python_run(root: str, browser: WebDriver, tmp_path: Path) -> None:
    """The controls (Pro, 16:9, 1K, b64_json) as "Copy as curl": the shown command, run with the
    key in NANOGATE_API_KEY, answers a PNG of the size the playground previewed. "Copy as
    Python" runs with the openai package and prints the image's base64."""
    _, secret = new_key(root, credit_usd=5)
    caps = capabilities(root, secret)
    sign_in(browser, root, secret, "usage")
    open_playground(browser, root)
    choose(browser, "model", "nano-banana-pro")
    choose(browser, "aspect_ratio", "16:9")
    choose(browser, "size", "1K")
    choose(browser, "response_format", "b64_json")
    fill(browser.find_element(By.ID, "prompt"), "a copied banana, it's 'quoted'")
    preview = wait(browser).until(lambda d: PIXELS.search(d.find_element(By.ID, "preview").text), "the preview's pixel size")
    previewed = (int(preview.group(1)), int(preview.group(2)))
    assert previewed == expected_pixels(caps["nano-banana-pro"], "16:9", "1K"), previewed
    assert not browser.find_element(By.ID, "snippet").is_displayed()

    button(browser, "Copy as curl").click()
    snippet = wait(browser).until(EC.visibility_of_element_located((By.ID, "snippet")), "the snippet shown")
    curl = wait(browser).until(lambda d: (t := d.find_element(By.ID, "snippet").text).startswith("curl ") and t, "a curl command")
    assert "$NANOGATE_API_KEY" in curl and secret not in curl, curl
    screenshot(browser, "more-copy-curl")
    env = {**os.environ, "NANOGATE_API_KEY": secret}
    ran = subprocess.run(["bash", "-c", curl + " --silent --show-error"], env=env, capture_output=True, timeout=120)
    assert ran.returncode == 0, ran.stderr.decode(errors="replace")
    answer = json.loads(ran.stdout)
    assert "data" in answer, answer
    assert png_size(base64.b64decode(answer["data"][0]["b64_json"])) == previewed

    button(browser, "Copy as Python").click()
    python = wait(browser).until(lambda d: (t := snippet.text) and "from openai import OpenAI" in t and t, "a Python snippet")
    assert secret not in python
    screenshot(browser, "more-copy-python")
    script = tmp_path / "snippet.py"
    script.write_text(python + "\nprint(result.data[0].b64_json[:10])\n")
    interpreter = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    ran = subprocess.run([interpreter, str(script)], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert ran.returncode == 0, f"the Python snippet failed:\n{python}\n--- stderr ---\n{ran.stderr[-3000:]}"
    assert ran.stdout.strip().startswith("iVBORw0KGg"), ran.stdout  # base64 of a PNG's signature


# =============================================================================================
# 5. The operator's key actions


def test_operator_key_actions(root: str, browser: WebDriver) -> None:
    """On the Keys page: Top up 2.5 adds 2.5 to the key's credit; Set limit stores the requests
    per minute; Disable makes its requests
    401 and Enable 200 again; Rotate shows a new secret, the old one 401, the new one 200;
    Revoke with a wrong name refuses (alert, nothing revoked), with the name removes the row and
    the key answers 401."""
    name, secret = new_key(root, credit_usd=1)
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Keys", "keys")

    credit = admin_api(root, "GET", f"keys/{name}").json()["credit_usd"]
    fill(labelled(key_row(browser, name), "Top up (USD)"), "2.5")
    row_button(browser, name, "Top up").click()
    poll(lambda: abs(admin_api(root, "GET", f"keys/{name}").json()["credit_usd"] - (credit + 2.5)) < 1e-9,
         f"the credit {credit} + 2.5 after Top up")
    wait(browser).until(lambda d: "3.50" in key_row(d, name).text, "the row showing the new credit 3.50")
    screenshot(browser, "more-keys-topped-up")

    fill(labelled(key_row(browser, name), "Requests per minute"), "7")
    key_row(browser, name).find_element(By.XPATH, ".//button[starts-with(normalize-space(), 'Set limit')]").click()
    poll(lambda: admin_api(root, "GET", f"keys/{name}").json().get("rpm") == 7, "rpm 7 after Set limit")
    wait(browser).until(lambda d: labelled(key_row(d, name), "Requests per minute").get_attribute("value") == "7",
                        "the row's Requests per minute showing 7 after reloading")

    assert models_status(root, secret) == 200
    row_button(browser, name, "Disable").click()
    row_button(browser, name, "Enable")  # the page reloaded with the key disabled
    assert "disabled" in key_row(browser, name).text
    until_status(root, secret, 401, "after Disable")
    screenshot(browser, "more-keys-disabled")
    row_button(browser, name, "Enable").click()
    row_button(browser, name, "Disable")
    until_status(root, secret, 200, "after Enable")

    row_button(browser, name, "Rotate").click()
    rotated = wait(browser).until(
        lambda d: next((e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, "[data-secret]")
                        if e.is_displayed() and e.text.strip().startswith("sk-ng-")), None),
        "the rotated secret in [data-secret]",
    )
    assert rotated != secret
    screenshot(browser, "more-keys-rotated")
    until_status(root, secret, 401, "the old secret after Rotate")
    until_status(root, rotated, 200, "the new secret after Rotate")
    wait(browser).until(EC.element_to_be_clickable((By.LINK_TEXT, "Done"))).click()

    confirm = labelled(key_row(browser, name), "Type the name to revoke")
    fill(confirm, name + "-not")
    row_button(browser, name, "Revoke").click()
    shown = wait(browser).until(lambda d: alert_text(d) or None, "an alert after a wrong name")
    assert name in shown, shown
    screenshot(browser, "more-keys-revoke-refused")
    assert admin_api(root, "GET", f"keys/{name}").status == 200
    assert models_status(root, rotated) == 200, "a wrong name revoked the key"

    fill(labelled(key_row(browser, name), "Type the name to revoke"), name)
    row_button(browser, name, "Revoke").click()
    until_status(root, rotated, 401, "after Revoke")
    browser.refresh()
    wait(browser).until(lambda d: d.execute_script("return document.readyState") == "complete")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-key]"), "the keys table")
    assert name not in [r.get_attribute("data-key") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-key]")]
    screenshot(browser, "more-keys-revoked")


# =============================================================================================
# 6. Groups


def test_create_group(root: str, browser: WebDriver) -> None:
    """The Groups page's form makes a group: it is in the table and in ``GET /admin/v1/groups``."""
    name = f"grp-{uuid.uuid4().hex[:8]}"
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Groups", "groups")
    fields = {}
    for label in ("Group name", "Default response format", "Price multiplier"):
        shown = browser.find_element(By.XPATH, f"//label[normalize-space()={json.dumps(label)}]")
        fields[label] = browser.find_element(By.ID, shown.get_attribute("for"))
    fill(fields["Group name"], name)
    fill(fields["Default response format"], "b64_json")
    fill(fields["Price multiplier"], "1.5")
    button(browser, "Create group").click()
    row = wait(browser).until(
        lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "tbody tr") if r.find_elements(By.TAG_NAME, "th")
                        and r.find_element(By.TAG_NAME, "th").text.strip() == name), None)
        or (alert_text(d) and pytest.fail(f"Create group refused: {alert_text(d)}")),
        f"the group {name} in the table",
    )
    assert "b64_json" in row.text and "1.5" in row.text, row.text
    screenshot(browser, "more-groups-created")
    groups = {group["name"]: group for group in admin_api(root, "GET", "groups").json()}
    assert name in groups, sorted(groups)
    assert groups[name]["response_format"] == "b64_json" and groups[name]["multiplier"] == 1.5, groups[name]


# =============================================================================================
# 7. Channels


def channel_row(driver: WebDriver, name: str) -> WebElement | None:
    return next((r for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-channel]") if r.get_attribute("data-channel") == name), None)


def test_channels_test_add_and_remove(root: str, browser: WebDriver) -> None:
    """The demo channel's Test answers "works: …" in its output; a channel added as JSON appears
    in the table and the admin API (as added here); Remove with its name typed removes it."""
    listed = admin_api(root, "GET", "channels").json()["data"]
    demo = next(channel for channel in listed if not channel["managed"])["name"]
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Channels", "channels")
    row = wait(browser).until(lambda d: channel_row(d, demo), f"the row of channel {demo}")
    row.find_element(By.XPATH, ".//button[normalize-space()='Test']").click()
    output = wait(browser).until(lambda d: (o := channel_row(d, demo).find_element(By.TAG_NAME, "output")).text.strip() and o,
                                 "the Test result in <output>")
    assert output.text.strip().startswith("works:"), output.text
    screenshot(browser, "more-channels-test")

    name = f"extra-{uuid.uuid4().hex[:6]}"
    # Priority below the demo's: the added channel (an unreachable base URL) never serves first.
    channel = {"name": name, "kind": "gemini", "api_keys": ["AIzaTEST"], "base_url": "http://127.0.0.1:9", "priority": -1}
    label = browser.find_element(By.XPATH, "//label[normalize-space()=\"Channel (JSON, the configuration file's keys)\"]")
    textarea = browser.find_element(By.ID, label.get_attribute("for"))
    textarea.clear()
    textarea.send_keys(json.dumps(channel))
    button(browser, "Add channel").click()
    added = wait(browser).until(lambda d: channel_row(d, name) or (alert_text(d) and pytest.fail(f"Add channel refused: {alert_text(d)}")),
                                f"the row of channel {name}")
    assert "added here" in added.text and "gemini" in added.text, added.text
    by_api = {c["name"]: c for c in admin_api(root, "GET", "channels").json()["data"]}
    assert name in by_api and by_api[name]["managed"] is True and by_api[name]["priority"] == -1, by_api.get(name)
    screenshot(browser, "more-channels-added")

    field = labelled(channel_row(browser, name), "Type the name to remove")
    fill(field, name)
    channel_row(browser, name).find_element(By.XPATH, ".//button[normalize-space()='Remove']").click()
    poll(lambda: name not in {c["name"] for c in admin_api(root, "GET", "channels").json()["data"]}, f"{name} gone from the admin API")
    wait(browser).until(lambda d: d.execute_script("return document.readyState") == "complete" and channel_row(d, demo) is not None
                        and channel_row(d, name) is None, f"the row of {name} gone")
    screenshot(browser, "more-channels-removed")


# =============================================================================================
# 8. Jobs


def job_status(driver: WebDriver, job_id: str) -> str | None:
    rows = [r for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-job]") if r.get_attribute("data-job") == job_id]
    if not rows:
        return None
    headers = [h.text.strip() for h in driver.find_elements(By.CSS_SELECTOR, "thead th")]
    cells = rows[0].find_elements(By.CSS_SELECTOR, "th, td")
    return cells[headers.index("Status")].text.strip()


def test_jobs_page_lists_and_cancels(private_gateway, browser: WebDriver) -> None:
    """One job worker: a slow job runs, a second waits queued. The operator's Jobs page lists
    both with their status; Cancel on the queued one makes it cancelled (the API agrees); the
    running one ends succeeded."""
    gateway = private_gateway(env={"NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN, "NANOGATE_JOB_WORKERS": "1"})
    root = gateway.base_url.removesuffix("/v1")
    name, secret = new_key(root, credit_usd=5)
    headers = {**bearer(secret), "Prefer": "respond-async"}

    def submit(prompt: str) -> str:
        answer = raw("POST", f"{root}/v1/images/generations", headers, {"model": "nano-banana", "prompt": prompt})
        assert answer.status == 202, answer.body[:300]
        return answer.json()["id"]

    def status(job_id: str) -> str:
        return raw("GET", f"{root}/v1/images/jobs/{job_id}", bearer(secret)).json()["status"]

    slow = submit("a slow banana [emulate:slow=20000]")
    poll(lambda: status(slow) == "running", "the slow job running")
    queued = submit("a waiting banana")
    assert status(queued) == "queued"

    sign_in(browser, root, ADMIN_TOKEN, "overview")
    go(browser, root, "Jobs", "jobs")
    wait(browser).until(lambda d: job_status(d, slow) == "running" and job_status(d, queued) == "queued",
                        "both jobs listed, running and queued")
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-job]") if r.get_attribute("data-job") == queued)
    assert name in row.text, row.text
    screenshot(browser, "more-jobs-listed")
    row.find_element(By.XPATH, ".//button[normalize-space()='Cancel']").click()
    wait(browser).until(lambda d: job_status(d, queued) == "cancelled" or (alert_text(d) and pytest.fail(f"Cancel refused: {alert_text(d)}")),
                        "the queued job shown cancelled")
    assert status(queued) == "cancelled"
    screenshot(browser, "more-jobs-cancelled")

    poll(lambda: status(slow) == "succeeded", "the slow job succeeded", timeout=60)
    browser.refresh()
    wait(browser).until(lambda d: job_status(d, slow) == "succeeded", "the slow job shown succeeded")


# =============================================================================================
# 9. Usage row's upstream attempts


def test_usage_row_shows_upstream_attempts(root: str, browser: WebDriver) -> None:
    """The operator's Usage row of a request has an "Upstream attempts" disclosure naming the
    channel that answered."""
    name, secret = new_key(root, credit_usd=2)
    request_id = generate_via_api(root, secret, "a banana with attempts")
    settled_usage(root, secret, request_id)
    logged = next(r for r in admin_api(root, "GET", f"usage?key={name}").json() if r["request_id"] == request_id)
    channel = logged["upstream_attempts"][0]["channel"]
    sign_in(browser, root, ADMIN_TOKEN, "overview")
    browser.get(console_url(root, f"usage?key={name}"))
    row = wait(browser).until(
        lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "tr[data-request-id]") if r.get_attribute("data-request-id") == request_id), None),
        f"the usage row {request_id}",
    )
    details = row.find_element(By.TAG_NAME, "details")
    summary = details.find_element(By.TAG_NAME, "summary")
    assert summary.text.strip() == "Upstream attempts"
    summary.click()
    wait(browser).until(lambda d: details.get_attribute("open") is not None, "the attempts opened")
    attempts = [li.text for li in details.find_elements(By.TAG_NAME, "li")]
    assert attempts and re.search(rf"channel\W+{re.escape(channel)}\b", attempts[0]), attempts
    screenshot(browser, "more-usage-attempts")


# =============================================================================================
# 10. axe with a result shown


def test_playground_with_result_is_accessible(root: str, browser: WebDriver) -> None:
    """The playground with a result and a History entry: no CSP violation, no serious or critical
    axe-core violation."""
    _, secret = new_key(root, credit_usd=2)
    sign_in(browser, root, secret, "usage")
    open_playground(browser, root)
    result = generate_in_playground(browser, "nano-banana", "an accessible banana", ratio="1:1")
    assert natural_size(browser, result)[0] > 0
    wait(browser).until(lambda d: history_items(d) or None, "the History entry")
    playground_idle(browser)
    screenshot(browser, "more-playground-result-axe")
    assert_no_csp_violations(browser)
    violations = serious_axe_violations(browser)
    assert not violations, "\n".join(violations)
