"""Observability over real HTTP with the built binary: ``GET /metrics`` (Prometheus' text format,
checked by ``promtool check metrics`` and parsed here), its bearer token and its own port,
``x-request-id`` on every answer and in the usage row, and ``NANOGATE_LOG_FORMAT=json`` logs at
``LOG_LEVEL=trace`` that carry the request's id and never a secret.

Every gateway here is started by the test that uses it and stopped when it ends: demo gateways
through conftest's fixtures, and for the logs a real ``nanogate serve --config FILE`` in front of
the standalone ``gemini-emulator`` (the demo prints its key on stdout, which would hide a leak).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from conftest import CLIENT_TIMEOUT, STARTUP_TIMEOUT, Gateway, _free_port, _stop, wait_until_healthy
from test_channels import clean_env, create_key, emulator, spawn, usage_row, write_config

PROMPT = "a banana on the moon"
FLASH25 = "gemini-2.5-flash-image"
GENERATIONS = "/v1/images/generations"
CHAT = "/v1/chat/completions"
DEMO_GOOGLE_KEY = "demo-google-key"
ADMIN_TOKEN = "observability-admin-" + uuid.uuid4().hex  # 52 characters
SANE_ID = re.compile(r"^[A-Za-z0-9\-_.:]{1,128}$")


# ---------------------------------------------------------------------------------------------
# HTTP with full control of the headers (urllib; an error status is an answer, not an exception)


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


def http(method: str, url: str, headers: dict[str, str] | None = None, body=None) -> Answer:
    data = None
    headers = dict(headers or {})
    if isinstance(body, bytes):
        data = body  # sent as it is (the caller sets its Content-Type)
    elif body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def root_of(gateway: Gateway) -> str:
    return gateway.base_url.removesuffix("/v1")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def generate(root: str, key: str, model: str = "nano-banana", response_format: str = "b64_json", request_id: str | None = None) -> Answer:
    headers = bearer(key)
    if request_id is not None:
        headers["x-request-id"] = request_id
    return http("POST", root + GENERATIONS, headers, {"model": model, "prompt": PROMPT, "response_format": response_format})


def chat(root: str, key: str, request_id: str | None = None) -> Answer:
    headers = bearer(key)
    if request_id is not None:
        headers["x-request-id"] = request_id
    return http("POST", root + CHAT, headers, {"model": "nano-banana", "messages": [{"role": "user", "content": PROMPT}]})


def error_code(answer: Answer) -> str:
    body = answer.json()
    error = body.get("error", body) if isinstance(body, dict) else {}
    return error.get("code") or error.get("status") or ""


def new_request_id() -> str:
    return f"obs-{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------------------------------------
# Prometheus' text format, parsed here (no client library needed)


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}.get(m.group(1), "\\" + m.group(1)), value)


def parse_metrics(text: str) -> tuple[dict[str, str], list[Sample]]:
    """The families' types (``# TYPE`` lines) and every sample of an exposition."""
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        match = SAMPLE.match(line)
        assert match, f"line {number} is not a sample: {line!r}"
        name, raw_labels, raw_value = match.groups()
        labels: dict[str, str] = {}
        rest = raw_labels or ""
        while rest.strip():
            label = LABEL.match(rest)
            assert label, f"line {number}: bad labels {raw_labels!r}"
            labels[label.group(1)] = unescape(label.group(2))
            rest = rest[label.end():]
        samples.append(Sample(name, labels, float(raw_value)))
    return types, samples


def matching(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in matching(samples, name, **labels))


def scrape(url: str, headers: dict[str, str] | None = None) -> Answer:
    return http("GET", url, headers)


def scrape_until(url: str, ready, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[str, dict[str, str], list[Sample]]:
    """Scrape until ``ready(samples)`` (settlement may land just after the answer), then return
    the last scrape's text, types and samples whatever they hold (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = scrape(url, headers)
        assert answer.status == 200, (answer.status, answer.body[:500])
        text = answer.body.decode()
        types, samples = parse_metrics(text)
        if ready(samples) or time.monotonic() > deadline:
            return text, types, samples
        time.sleep(0.3)


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
    return path


# ---------------------------------------------------------------------------------------------
# 1. /metrics after real traffic, linted by promtool


EXPECTED_FAMILIES = {
    "nanogate_requests_total": "counter",
    "nanogate_request_duration_seconds": "histogram",
    "nanogate_request_errors_total": "counter",
    "nanogate_requests_in_flight": "gauge",
    "nanogate_upstream_attempts_total": "counter",
    "nanogate_upstream_duration_seconds": "histogram",
    "nanogate_channel_state": "gauge",
    "nanogate_channel_in_flight": "gauge",
    "nanogate_images_delivered_total": "counter",
    "nanogate_tokens_total": "counter",
    "nanogate_charged_micro_usd_total": "counter",
    "nanogate_upstream_cost_micro_usd_total": "counter",
    "nanogate_reservations_held": "gauge",
    "nanogate_image_store_bytes": "gauge",
    "nanogate_image_sweeps_total": "counter",
}


def test_metrics_after_traffic_pass_promtool(fresh_gateway: Gateway) -> None:
    """A b64 generation, an unknown model (404) and a chat completion, then ``/metrics``: open
    by default, ``text/plain; version=0.0.4``, clean under ``promtool check metrics``, and
    counting what happened under the router's routes and the catalog's model names."""
    tool = promtool()
    root = root_of(fresh_gateway)

    generated = generate(root, fresh_gateway.key)
    assert generated.status == 200, generated.body[:500]
    assert generated.json()["data"][0]["b64_json"]
    unknown = generate(root, fresh_gateway.key, model="no-such-model-" + uuid.uuid4().hex[:6])
    assert unknown.status == 404, unknown.body[:500]
    unknown_code = error_code(unknown)
    assert unknown_code, unknown.body
    chatted = chat(root, fresh_gateway.key)
    assert chatted.status == 200, chatted.body[:500]
    stray = "no-such-" + uuid.uuid4().hex
    assert http("GET", f"{root}/v1/{stray}/x?y=1", bearer(fresh_gateway.key)).status == 404

    def ready(samples: list[Sample]) -> bool:
        return (
            total(samples, "nanogate_requests_total", route=CHAT, model="nano-banana", status="200") >= 1
            and total(samples, "nanogate_images_delivered_total", model="nano-banana") >= 2
            and total(samples, "nanogate_charged_micro_usd_total", model="nano-banana") > 0
        )

    answer = scrape(root + "/metrics")
    assert answer.status == 200, (answer.status, answer.body[:500])
    assert answer.headers.get("content-type", "").startswith("text/plain; version=0.0.4"), answer.headers
    text, types, samples = scrape_until(root + "/metrics", ready)

    checked = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        f"promtool check metrics: exit {checked.returncode}\n{checked.stdout}{checked.stderr}\n--- scraped ---\n{text[:5000]}"
    )

    missing = {name: kind for name, kind in EXPECTED_FAMILIES.items() if types.get(name) != kind}
    assert not missing, f"families missing or of another type: {missing}; declared: {types}"

    assert total(samples, "nanogate_requests_total", route=GENERATIONS, method="POST", model="nano-banana", status="200") >= 1, text
    assert total(samples, "nanogate_requests_total", route=GENERATIONS, status="404") >= 1, text
    assert total(samples, "nanogate_request_errors_total", route=GENERATIONS, code=unknown_code) >= 1, text
    assert total(samples, "nanogate_requests_total", route=CHAT, method="POST", model="nano-banana", status="200") >= 1, text
    # No raw path with ids or a query among the routes (bounded labels).
    routes = {s.labels.get("route") for s in matching(samples, "nanogate_requests_total")}
    assert all(route and "?" not in route for route in routes), routes
    assert stray not in text, f"an unmatched path became a label value: {[s for s in samples if stray in str(s.labels)]}"

    # The request histogram: buckets up to 600 s, cumulative, +Inf equal to the count.
    buckets = matching(samples, "nanogate_request_duration_seconds_bucket", route=GENERATIONS, model="nano-banana")
    bounds = {float(s.labels["le"]): s.value for s in buckets}
    assert 300.0 in bounds and 600.0 in bounds and math.inf in bounds, sorted(bounds)
    ordered = [bounds[le] for le in sorted(bounds)]
    assert ordered == sorted(ordered), f"buckets not cumulative: {sorted(bounds.items())}"
    count = total(samples, "nanogate_request_duration_seconds_count", route=GENERATIONS, model="nano-banana")
    assert count >= 1 and bounds[math.inf] == count, (bounds, count)
    assert total(samples, "nanogate_request_duration_seconds_sum", route=GENERATIONS, model="nano-banana") > 0

    # Upstream: the demo's one channel, the upstream model id, outcome ok.
    assert total(samples, "nanogate_upstream_attempts_total", channel="gemini", model=FLASH25, outcome="ok") >= 2, text
    upstream_buckets = matching(samples, "nanogate_upstream_duration_seconds_bucket", channel="gemini", model=FLASH25)
    assert {float(s.labels["le"]) for s in upstream_buckets} >= {300.0, 600.0, math.inf}, upstream_buckets
    states = {s.labels.get("state"): s.value for s in matching(samples, "nanogate_channel_state", channel="gemini")}
    assert states.get("ok") == 1 and sum(states.values()) == 1, states
    assert matching(samples, "nanogate_channel_in_flight", channel="gemini"), text

    # Money and images, by catalog model.
    assert total(samples, "nanogate_images_delivered_total", model="nano-banana") >= 2, text
    assert total(samples, "nanogate_charged_micro_usd_total", model="nano-banana") > 0, text
    assert total(samples, "nanogate_tokens_total", model="nano-banana", direction="output", modality="image") > 0, text
    assert total(samples, "nanogate_upstream_cost_micro_usd_total", upstream_model=FLASH25) > 0, text
    # Nothing holds credit once the answers are in; no key label unless asked for.
    assert total(samples, "nanogate_reservations_held") == 0, text
    assert not any("key" in s.labels for s in samples), [s for s in samples if "key" in s.labels][:5]


# ---------------------------------------------------------------------------------------------
# 2. NANOGATE_METRICS_TOKEN


def test_metrics_token(private_gateway) -> None:
    """With ``NANOGATE_METRICS_TOKEN`` set, ``/metrics`` answers 401 without the bearer token
    (or with another one, or with an API key) and 200 with it."""
    token = "metrics-" + uuid.uuid4().hex
    running = private_gateway(env={"NANOGATE_METRICS_TOKEN": token})
    url = root_of(running) + "/metrics"

    assert scrape(url).status == 401
    assert scrape(url, bearer("wrong-" + token)).status == 401
    assert scrape(url, bearer(running.key)).status == 401
    assert scrape(url, {"Authorization": token}).status == 401  # not a bearer

    answer = scrape(url, bearer(token))
    assert answer.status == 200, answer.body[:500]
    assert answer.headers.get("content-type", "").startswith("text/plain; version=0.0.4"), answer.headers
    types, _ = parse_metrics(answer.body.decode())
    assert types.get("nanogate_requests_total") == "counter", types
    # The API itself does not ask for the metrics token.
    assert http("GET", running.base_url + "/models", bearer(running.key)).status == 200


# ---------------------------------------------------------------------------------------------
# 3. NANOGATE_METRICS_PORT


def test_metrics_on_their_own_port(private_gateway) -> None:
    """With ``NANOGATE_METRICS_PORT=P``, port P answers ``/metrics`` (counting the main port's
    traffic) and the main port's ``/metrics`` is 404; the API is not served on P."""
    metrics_port = _free_port()
    running = private_gateway(env={"NANOGATE_METRICS_PORT": str(metrics_port)})
    root = root_of(running)
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    assert http("GET", running.base_url + "/models", bearer(running.key)).status == 200
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:  # the metrics server may come up just after the main one
        try:
            answer = scrape(url)
            break
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on the metrics port {metrics_port}"
            time.sleep(0.2)
    assert answer.status == 200, answer.body[:500]
    assert answer.headers.get("content-type", "").startswith("text/plain; version=0.0.4"), answer.headers
    _, samples = scrape_until(url, lambda s: total(s, "nanogate_requests_total", status="200") >= 1)[1:]
    assert total(samples, "nanogate_requests_total", method="GET", status="200") >= 1, samples

    main = scrape(root + "/metrics")
    assert main.status == 404, (main.status, main.body[:300])
    assert b"nanogate_requests_total" not in main.body
    assert http("GET", f"http://127.0.0.1:{metrics_port}/v1/models", bearer(running.key)).status == 404


# ---------------------------------------------------------------------------------------------
# 4. x-request-id


def wait_usage_row(cli, request_id: str, timeout: float = 30) -> dict:
    """The shared gateway's usage row with ``request_id`` (written just after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = cli("usage", "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        rows = [row for row in json.loads(listed.stdout) if row.get("request_id") == request_id]
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        assert time.monotonic() < deadline, f"no usage row with request_id {request_id!r}"
        time.sleep(0.3)


def test_request_ids(gateway: Gateway, cli) -> None:
    """A sane ``x-request-id`` (1-128 of ``A-Za-z0-9-_.:``) is echoed and is the usage row's
    ``request_id``; one too long or with spaces is replaced by a generated ``req_…`` (which is
    then the row's); a request without one gets one, fresh each time; error answers carry it too."""
    root = root_of(gateway)

    sane = "obs:" + uuid.uuid4().hex + "_x.y-z"
    answer = generate(root, gateway.key, request_id=sane)
    assert answer.status == 200, answer.body[:500]
    assert answer.request_id == sane, answer.headers
    row = wait_usage_row(cli, sane)
    assert row["status"] == 200 and row["model"] == "nano-banana", row

    longest = ("L" + uuid.uuid4().hex + "-_.:" + "9" * 128)[:128]
    answer = chat(root, gateway.key, request_id=longest)
    assert answer.status == 200, answer.body[:500]
    assert answer.request_id == longest, answer.headers
    assert wait_usage_row(cli, longest)["status"] == 200

    generated_ids = []
    for insane in ("a" * 200, ("b" * 129), f"has spaces {uuid.uuid4().hex[:6]}", f"slash/{uuid.uuid4().hex[:6]}"):
        answer = generate(root, gateway.key, request_id=insane)
        assert answer.status == 200, answer.body[:500]
        given = answer.request_id
        assert given and given != insane, (insane, answer.headers)
        assert given.startswith("req_") and SANE_ID.match(given), given
        assert wait_usage_row(cli, given)["status"] == 200
        generated_ids.append(given)

    for _ in range(2):
        answer = generate(root, gateway.key)
        assert answer.status == 200, answer.body[:500]
        assert answer.request_id and answer.request_id.startswith("req_") and SANE_ID.match(answer.request_id), answer.headers
        generated_ids.append(answer.request_id)
    assert len(set(generated_ids)) == len(generated_ids), generated_ids

    # Errors and routes outside the API carry one as well.
    rid = new_request_id()
    refused = generate(root, "sk-wrong-" + uuid.uuid4().hex, request_id=rid)
    assert refused.status == 401 and refused.request_id == rid, (refused.status, refused.headers)
    rid = new_request_id()
    unknown = generate(root, gateway.key, model="no-such-model", request_id=rid)
    assert unknown.status == 404 and unknown.request_id == rid, (unknown.status, unknown.headers)
    for path in ("/health", "/v1/no-such-route", "/no-such-page"):
        answer = http("GET", root + path, bearer(gateway.key))
        assert answer.request_id and SANE_ID.match(answer.request_id), (path, answer.status, answer.headers)


# ---------------------------------------------------------------------------------------------
# 5. JSON logs at trace level, and no secret in them


class Logged(NamedTuple):
    root: str
    data_dir: Path
    stdout: Path
    stderr: Path


@contextlib.contextmanager
def serve_logged(nanogate_bin: Path, config: Path, data_dir: Path, env: dict[str, str]) -> Iterator[Logged]:
    """``nanogate serve --config`` with stdout and stderr each in a file of their own, until
    /health answers ``ok``; stopped (so that every line is written) when the block ends."""
    port = _free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = data_dir.parent / "stdout.log", data_dir.parent / "stderr.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = spawn(
            [str(nanogate_bin), "serve", "--config", str(config), "--data-dir", str(data_dir), "--port", str(port)],
            cwd=data_dir.parent, env=clean_env(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        root = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(proc, root, lambda: out_path.read_text() + "\n" + err_path.read_text())
            yield Logged(root, data_dir, out_path, err_path)
        finally:
            _stop(proc)


def test_json_logs_carry_request_ids_and_no_secret(nanogate_bin, tmp_path) -> None:
    """``NANOGATE_LOG_FORMAT=json`` at ``LOG_LEVEL=trace``: stdout is JSON objects, one a line;
    a request's ``request`` line carries its id, route, status, duration and model, a failed
    one's its error code; and after a realistic mix (signed image URL fetched, wrong key, the
    Google-style ``?key=``, the admin API) no key, token or URL signature is on stdout or stderr."""
    with emulator(nanogate_bin, "--accept-key", DEMO_GOOGLE_KEY) as upstream:
        config = write_config(tmp_path / "conf" / "nanogate.json", {
            "channels": [{"name": "gemini", "kind": "gemini", "base_url": upstream, "api_keys": [DEMO_GOOGLE_KEY]}],
        })
        env = {"NANOGATE_LOG_FORMAT": "json", "LOG_LEVEL": "trace", "NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        wrong_key = "sk-wrong-" + uuid.uuid4().hex
        wrong_admin = "wrong-admin-token-" + uuid.uuid4().hex
        signatures: list[str] = []
        with serve_logged(nanogate_bin, config, tmp_path / "data", env) as served:
            key = create_key(nanogate_bin, served.data_dir, "observer")
            root = served.root

            # A generation answered with a signed URL, then the image fetched through it.
            rid_url = new_request_id()
            answer = generate(root, key, response_format="url", request_id=rid_url)
            assert answer.status == 200, answer.body[:500]
            image_url = answer.json()["data"][0]["url"]
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(image_url).query)
            signatures += query.get("signature", [])
            assert signatures and all(len(s) >= 16 for s in signatures), image_url
            rid_fetch = new_request_id()
            fetched = http("GET", image_url, {"x-request-id": rid_fetch})
            assert fetched.status == 200 and fetched.body[:8] == b"\x89PNG\r\n\x1a\n", (fetched.status, fetched.body[:100])

            # Failures: an unknown model, a wrong key (as bearer and as ?key=).
            rid_404 = new_request_id()
            unknown = generate(root, key, model="no-such-model", request_id=rid_404)
            assert unknown.status == 404, unknown.body[:500]
            rid_401 = new_request_id()
            refused = generate(root, wrong_key, request_id=rid_401)
            assert refused.status == 401, refused.body[:500]
            native = "/v1beta/models/nano-banana:generateContent"
            minimal = {"contents": [{"parts": [{"text": "a cat"}]}]}
            assert http("POST", f"{root}{native}?key={wrong_key}", body=minimal).status in (400, 401, 403)

            # The Google-style call with the gateway key in the query string.
            rid_native = new_request_id()
            google = http("POST", f"{root}{native}?key={urllib.parse.quote(key)}", {"x-request-id": rid_native}, minimal)
            assert google.status == 200, google.body[:500]
            assert google.request_id == rid_native, google.headers

            # The admin API, with the token and with a wrong one.
            rid_admin = new_request_id()
            admin = http("GET", root + "/admin/v1/channels", {**bearer(ADMIN_TOKEN), "x-request-id": rid_admin})
            assert admin.status == 200, admin.body[:500]
            assert http("GET", root + "/admin/v1/channels", bearer(wrong_admin)).status == 401
            # A key made through the admin API (its secret is in the answer), then used.
            made = http("POST", root + "/admin/v1/keys", bearer(ADMIN_TOKEN), {"name": "made-by-admin", "group": "default"})
            assert made.status == 201, made.body[:500]
            admin_made_key = made.json()["secret"]
            assert admin_made_key.startswith("sk-ng-"), made.body[:500]
            rid_chat = new_request_id()
            chatted = chat(root, admin_made_key, request_id=rid_chat)
            assert chatted.status == 200, chatted.body[:500]
            # A channel stored through the admin API: its row binds the credential in SQL.
            channel_key = "AIza-channel-secret-" + uuid.uuid4().hex
            stored = http("POST", root + "/admin/v1/channels", bearer(ADMIN_TOKEN),
                          {"name": "stored-channel", "kind": "gemini", "base_url": "http://127.0.0.1:9", "api_keys": [channel_key], "weight": 0})
            assert stored.status == 201, stored.body[:500]
            assert channel_key.encode() not in stored.body, "the credential is not echoed"

            usage_row(nanogate_bin, served.data_dir, rid_url)  # settled before the gateway stops

        stdout = served.stdout.read_text(encoding="utf-8", errors="replace")
        stderr = served.stderr.read_text(encoding="utf-8", errors="replace")

    # One JSON object per line, every line.
    lines = []
    for number, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            pytest.fail(f"stdout line {number} is not JSON ({error}): {line[:500]!r}")
        assert isinstance(value, dict), f"stdout line {number} is not an object: {line[:500]!r}"
        missing = {"time", "level", "label", "message", "source"} - set(value)
        assert not missing, f"stdout line {number} lacks {missing}: {line[:500]!r}"
        assert value["level"] in ("trace", "debug", "info", "notice", "warning", "error", "critical"), value
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", str(value["time"])), value
        lines.append(value)
    assert len(lines) >= 6, stdout[-3000:]

    def request_line(request_id: str) -> dict:
        found = [v for v in lines if v.get("message") == "request" and v.get("request_id") == request_id]
        assert len(found) == 1, f"{len(found)} 'request' lines for {request_id}; lines with the id: {[v for v in lines if v.get('request_id') == request_id]}"
        return found[0]

    line = request_line(rid_url)
    assert line.get("http.method") == "POST" and line.get("http.route") == GENERATIONS, line
    assert line.get("http.path") == GENERATIONS and str(line.get("http.status")) == "200", line
    assert str(line.get("duration_ms", "")).isdigit(), line
    assert line.get("model") == "nano-banana", line
    assert "error.code" not in line, line

    line = request_line(rid_fetch)
    assert str(line.get("http.status")) == "200" and "?" not in str(line.get("http.path")), line

    line = request_line(rid_404)
    assert str(line.get("http.status")) == "404" and line.get("error.code") == error_code(unknown), line
    line = request_line(rid_401)
    assert str(line.get("http.status")) == "401" and line.get("error.code") == error_code(refused), line
    assert line.get("error.code"), line

    line = request_line(rid_native)
    assert str(line.get("http.status")) == "200" and line.get("http.path") == native, line
    assert line.get("model") == "nano-banana", line
    assert request_line(rid_admin).get("http.route", "").startswith("/admin/v1/"), request_line(rid_admin)
    line = request_line(rid_chat)
    assert line.get("http.route") == CHAT and str(line.get("http.status")) == "200" and line.get("model") == "nano-banana", line

    # Every line logged while answering a request (Hummingbird tags them hb.request.id) has
    # that request's id, the same on all of them.
    per_request: dict[str, set] = {}
    for value in lines:
        if "hb.request.id" in value:
            per_request.setdefault(value["hb.request.id"], set()).add(value.get("request_id"))
    assert per_request, "no line logged while answering a request"
    bad = {hb: ids for hb, ids in per_request.items() if len(ids) != 1 or None in ids}
    assert not bad, f"request lines without (or with differing) request_id: {bad}"

    # No secret anywhere in what the gateway wrote.
    secrets = {
        "the gateway key": key,
        "the key made through the admin API": admin_made_key,
        "the wrong key": wrong_key,
        "the admin token": ADMIN_TOKEN,
        "the wrong admin token": wrong_admin,
        "the Google key": DEMO_GOOGLE_KEY,
        "a stored channel's key": channel_key,
        **{f"signature #{n}": s for n, s in enumerate(signatures, 1)},
    }
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        leaked = [what for what, secret in secrets.items() if secret in text]
        assert not leaked, f"{', '.join(leaked)} in the gateway's {stream}: " + "; ".join(
            next(l for l in text.splitlines() if secrets[what] in l)[:400] for what in leaked
        )
