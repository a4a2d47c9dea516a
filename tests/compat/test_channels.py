"""Upstream channels (``channels:`` in the configuration file), over real HTTP with the built
binaries: a Vertex AI service-account channel against fake token and Vertex endpoints written
here (the JWT checked independently with ``cryptography``), an OpenAI-compatible channel that
relays to a second NanoGate, failover from a rate-limited emulator to a healthy one, and a
refused key reported by the admin API and ``nanogate channels list|test``.

Every gateway here is a real ``nanogate serve --config FILE`` (not ``--demo``), with keys made
by ``nanogate keys create``; every process and server started is stopped when its test ends.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import json
import os
import queue
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import openai
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from PIL import Image

from conftest import CLI_TIMEOUT, CLIENT_TIMEOUT, STARTUP_TIMEOUT, _demo_in_temp_dir, _free_port, _stop, wait_until_healthy, wait_out_key_cache

ADMIN_TOKEN = "channels-admin-token-0123456789abcdef"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROMPT = "a banana on the moon"
FLASH25 = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


# ---------------------------------------------------------------------------------------------
# Processes: a configured gateway, the standalone emulator, the CLI


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any NanoGate, Gemini or AWS setting (so nothing of the
    developer's shell reaches the gateway, S3 credentials included), plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NANOGATE_", "AWS_")) and name not in ("GEMINI_API_KEY", "LOG_LEVEL")
    }
    env.update(extra or {})
    return env


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen``, retried for a while when the binary is being relinked by a
    concurrent build (ETXTBSY, or missing for a moment)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return subprocess.Popen(args, **kwargs)
        except OSError as error:
            if error.errno not in (errno.ETXTBSY, errno.ENOENT) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Served(NamedTuple):
    """A running ``nanogate serve --config``: its root URL, port, data dir, output so far and
    process (to kill it)."""

    root: str
    port: int
    data_dir: Path
    output: Callable[[], str]
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return self.root + "/v1"


@contextlib.contextmanager
def serve(
    nanogate_bin: Path, config: Path, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[Served]:
    """``nanogate serve --config CONFIG --data-dir DATA --port P`` (cwd: the data dir's parent,
    not the config's folder), until /health answers ``ok``; stopped when the block ends."""
    port = port or _free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    proc = spawn(
        [str(nanogate_bin), "serve", "--config", str(config), "--data-dir", str(data_dir), "--port", str(port)],
        cwd=data_dir.parent, env=clean_env(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )

    def output() -> str:
        log.flush()
        log.seek(0)
        return log.read()

    root = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, root, output)
        yield Served(root=root, port=port, data_dir=data_dir, output=output, proc=proc)
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def emulator(nanogate_bin: Path, *args: str) -> Iterator[str]:
    """The standalone ``gemini-emulator`` (beside the gateway binary) on a port it picks, with
    ``args`` (``--fault 429``, ``--accept-key K``); yields the URL it prints."""
    binary = nanogate_bin.parent / "gemini-emulator"
    deadline = time.monotonic() + 30
    while not binary.exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # relinked by a concurrent build
    if not binary.exists():
        pytest.fail(f"gemini-emulator not found at {binary}")
    proc = spawn(
        [str(binary), "--port", "0", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
    )
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        for line in iter(proc.stdout.readline, ""):
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    pytest.fail(f"gemini-emulator printed no URL within 30s:\n{''.join(seen)}")
                continue
            if line is None:
                proc.wait(timeout=15)
                pytest.fail(f"gemini-emulator exited with {proc.returncode}:\n{''.join(seen)}")
            seen.append(line)
            # Its own line, or Hummingbird's log line (the print may sit in a pipe's buffer).
            if match := re.search(r"listening on (?:http://)?(127\.0\.0\.1:\d+)", line):
                url = "http://" + match.group(1)
        yield url
    finally:
        _stop(proc)


def cli(nanogate_bin: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``nanogate ARGS`` with a clean environment (plus ``env``), output captured."""
    proc = spawn(
        [str(nanogate_bin), *args], env=clean_env(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    wait_out_key_cache(args)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def create_key(nanogate_bin: Path, data_dir: Path, name: str, group: str = "default") -> str:
    """``nanogate keys create --json``; returns the secret."""
    created = json.loads(ok(cli(nanogate_bin, "keys", "create", "--name", name, "--group", group, "--data-dir", str(data_dir), "--json")))
    assert created["secret"].startswith("sk-ng-"), created
    return created["secret"]


def usage_rows(nanogate_bin: Path, data_dir: Path) -> list[dict]:
    """``nanogate usage --json``: every row, newest first."""
    return json.loads(ok(cli(nanogate_bin, "usage", "--data-dir", str(data_dir), "--json")))


def usage_row(nanogate_bin: Path, data_dir: Path, request_id: str) -> dict:
    """The usage row of the request sent with ``x-request-id: request_id`` (waiting for it to be
    written, which may happen just after the answer)."""
    deadline = time.monotonic() + 30
    while True:
        rows = [row for row in usage_rows(nanogate_bin, data_dir) if row["request_id"] == request_id]
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        assert time.monotonic() < deadline, f"no usage row for request {request_id}"
        time.sleep(0.3)


def admin_channels(served: Served, token: str = ADMIN_TOKEN) -> dict[str, dict]:
    """GET /admin/v1/channels, by channel name."""
    request = urllib.request.Request(served.root + "/admin/v1/channels", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        body = json.load(response)
    assert body["object"] == "list", body
    return {channel["name"]: channel for channel in body["data"]}


def attempts_of(row: dict) -> list[tuple]:
    """A usage row's upstream attempts as (channel, key position, status, error code). A
    successful attempt's entry leaves ``error`` out (no null), so absent reads as None."""
    attempts = row["upstream_attempts"]
    assert all(isinstance(a.get("milliseconds"), int) and a["milliseconds"] >= 0 for a in attempts), attempts
    return [(a["channel"], a["key"], a.get("status"), a.get("error")) for a in attempts]


def client_for(served: Served, secret: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=secret, base_url=served.base_url, timeout=CLIENT_TIMEOUT, max_retries=0)


def request_id() -> str:
    return f"chan-{uuid.uuid4().hex[:16]}"


def decoded_png(b64: str | None) -> bytes:
    assert b64, "no b64_json in the answer"
    data = base64.b64decode(b64, validate=True)
    assert data[:8] == PNG_SIGNATURE, f"not a PNG (starts with {data[:8]!r})"
    return data


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A real PNG made with Pillow: one colour, one differently coloured corner pixel."""
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_config(path: Path, config: dict) -> Path:
    """The configuration as JSON (which the gateway reads as YAML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


# ---------------------------------------------------------------------------------------------
# Fake HTTP servers (http.server in a thread)


class Call(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Call], tuple[int, dict[str, str], bytes]]


@contextlib.contextmanager
def fake_server(handle: Handler) -> Iterator[tuple[str, list[Call]]]:
    """An HTTP/1.1 server on 127.0.0.1 that records every call and answers with ``handle``;
    yields its root URL and the list of calls."""
    calls: list[Call] = []
    lock = threading.Lock()

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def answer(self) -> None:
            call = Call(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.read_body())
            with lock:
                calls.append(call)
            try:
                status, headers, body = handle(call)
            except Exception as error:  # a bug in the fake: make it visible, not a hang
                status, headers, body = 500, {"Content-Type": "text/plain"}, f"fake server error: {error!r}".encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def json_answer(status: int, value) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


# ---------------------------------------------------------------------------------------------
# 1. Vertex AI with a service account


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_problems(form: dict[str, list[str]], public_key, kid: str, email: str, audience: str) -> list[str]:
    """What is wrong with a token request's JWT bearer grant, checked independently of the
    gateway: the grant type, the RS256 signature with the service account's public key, the
    header (alg, typ, kid) and the claims (iss, scope, aud, exp - iat == 3600)."""
    problems = []
    if form.get("grant_type") != [JWT_BEARER]:
        problems.append(f"grant_type is {form.get('grant_type')}")
    assertions = form.get("assertion") or []
    if len(assertions) != 1:
        return problems + [f"{len(assertions)} assertions"]
    pieces = assertions[0].split(".")
    if len(pieces) != 3:
        return problems + [f"the assertion has {len(pieces)} parts, not 3"]
    try:
        public_key.verify(b64url_decode(pieces[2]), f"{pieces[0]}.{pieces[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        problems.append("the RS256 signature does not verify with the service account's public key")
    header = json.loads(b64url_decode(pieces[0]))
    claims = json.loads(b64url_decode(pieces[1]))
    for name, expected in {"alg": "RS256", "typ": "JWT", "kid": kid}.items():
        if header.get(name) != expected:
            problems.append(f"header {name} is {header.get(name)!r}, not {expected!r}")
    for name, expected in {"iss": email, "scope": SCOPE, "aud": audience}.items():
        if claims.get(name) != expected:
            problems.append(f"claim {name} is {claims.get(name)!r}, not {expected!r}")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        problems.append(f"iat {iat!r} / exp {exp!r} are not integers")
    else:
        if exp - iat != 3600:
            problems.append(f"exp - iat is {exp - iat}, not 3600")
        if abs(iat - time.time()) > 600:
            problems.append(f"iat {iat} is not now ({int(time.time())})")
    return problems


def test_vertex_service_account_channel(nanogate_bin, tmp_path):
    """A ``kind: vertex`` channel signs a JWT with the service account's key, trades it at the
    token endpoint for a bearer token (once, cached across requests), and calls Vertex's project
    path for the model with that token and a role on every content; the client gets the PNG."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    email = "nanogate-test@sa-home-project.iam.gserviceaccount.com"
    kid = "kid-" + uuid.uuid4().hex
    token_problems: list[list[str]] = []
    token_url_box: list[str] = []

    def token_endpoint(call: Call):
        form = urllib.parse.parse_qs(call.body.decode(), keep_blank_values=True)
        problems = jwt_problems(form, key.public_key(), kid, email, token_url_box[0])
        if call.method != "POST" or call.path != "/token":
            problems.append(f"{call.method} {call.path}")
        if not call.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            problems.append(f"content-type {call.headers.get('content-type')!r}")
        token_problems.append(problems)
        if problems:
            return json_answer(400, {"error": "invalid_grant", "error_description": "; ".join(problems)})
        return json_answer(200, {"access_token": "tok-123", "expires_in": 3600, "token_type": "Bearer"})

    picture = png_bytes((1024, 1024), (12, 200, 34))

    def vertex_endpoint(call: Call):
        return json_answer(200, {
            "candidates": [{
                "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(picture).decode()}}]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {
                "promptTokenCount": 9, "candidatesTokenCount": 1120, "totalTokenCount": 1129,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
            },
            "modelVersion": PRO,
        })

    with fake_server(token_endpoint) as (token_root, token_calls), fake_server(vertex_endpoint) as (vertex_root, vertex_calls):
        token_url_box.append(token_root + "/token")
        folder = tmp_path / "conf"
        folder.mkdir()
        # The file's own project and token_uri lose to the channel's project and token_url.
        (folder / "sa.json").write_text(json.dumps({
            "type": "service_account", "project_id": "sa-home-project", "private_key_id": kid, "private_key": pem,
            "client_email": email, "client_id": "1234567890", "token_uri": "http://127.0.0.1:9/unused-token-uri",
        }))
        config = write_config(folder / "nanogate.json", {
            "check_models": False,
            "channels": [{
                "name": "vertex-sa", "kind": "vertex", "base_url": vertex_root, "service_account_file": "sa.json",
                "project": "proj-1", "location": "global", "token_url": token_root + "/token",
            }],
        })
        with serve(nanogate_bin, config, tmp_path / "data") as served:
            secret = create_key(nanogate_bin, served.data_dir, "vertex-user")
            client = client_for(served, secret)
            rids = [request_id(), request_id()]
            for number, rid in enumerate(rids):
                result = client.images.generate(
                    model="nano-banana-pro", prompt=f"{PROMPT} #{number}", response_format="b64_json", extra_headers={"x-request-id": rid}
                )
                assert result.data is not None and len(result.data) == 1
                image = Image.open(io.BytesIO(decoded_png(result.data[0].b64_json)))
                assert image.size == (1024, 1024)
                assert image.convert("RGB").getpixel((10, 10)) == (12, 200, 34), "not the fake Vertex endpoint's picture"
                assert result.usage is not None and result.usage.output_tokens_details.image_tokens == 1120

            assert token_problems and not any(token_problems), token_problems
            assert len(token_calls) == 1, f"the token was fetched {len(token_calls)} times for two requests"
            assert len(vertex_calls) == 2, [call.path for call in vertex_calls]
            for number, call in enumerate(vertex_calls):
                assert call.method == "POST"
                assert call.path == f"/v1/projects/proj-1/locations/global/publishers/google/models/{PRO}:generateContent"
                assert call.headers.get("authorization") == "Bearer tok-123"
                assert "x-goog-api-key" not in call.headers
                body = json.loads(call.body)
                assert body["contents"], body
                for content in body["contents"]:
                    assert content.get("role") in ("user", "model"), f"a content without a role: {content}"
                texts = [part.get("text", "") for content in body["contents"] for part in content.get("parts", [])]
                assert any(f"{PROMPT} #{number}" in text for text in texts), texts

            for rid in rids:
                row = usage_row(nanogate_bin, served.data_dir, rid)
                assert row["upstream_key"] == "vertex-sa#1", row
                assert attempts_of(row) == [("vertex-sa", 1, 200, None)], row
                assert row["status"] == 200 and row["upstream_model"] == PRO and row["output_image_tokens"] == 1120, row


# ---------------------------------------------------------------------------------------------
# 2. An OpenAI-compatible channel: one NanoGate relaying to another


class Reseller(NamedTuple):
    a: Served
    secret: str
    b_data_dir: Path


@pytest.fixture(scope="module")
def reseller(nanogate_bin, tmp_path_factory) -> Iterator[Reseller]:
    """Gateway B (``serve --demo``) and gateway A with one channel ``reseller`` (kind openai)
    that uses B with B's demo key; a key of A's own (group default)."""
    with _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-b") as b:
        folder = tmp_path_factory.mktemp("nanogate-a")
        config = write_config(folder / "nanogate.json", {
            "check_models": False,
            "channels": [{"name": "reseller", "kind": "openai", "base_url": b.base_url.removesuffix("/v1"), "api_keys": [b.key]}],
        })
        with serve(nanogate_bin, config, folder / "data") as a:
            yield Reseller(a=a, secret=create_key(nanogate_bin, a.data_dir, "shopper"), b_data_dir=b.data_dir)


def chat_images(completion, base_url: str) -> list[bytes]:
    """The PNGs of a chat answer: Markdown images in the content and/or ``message.images``."""
    message = completion.choices[0].message
    urls = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", message.content or "")
    urls += [image["image_url"]["url"] for image in (message.model_extra or {}).get("images") or []]
    urls = list(dict.fromkeys(urls))  # a non-streamed answer carries its image in both places
    found = []
    for url in urls:
        if url.startswith("data:"):
            found.append(base64.b64decode(url.split(",", 1)[1], validate=True))
        else:
            assert url.startswith(base_url.removesuffix("/v1")), url
            with urllib.request.urlopen(url, timeout=120) as response:
                found.append(response.read())
    for data in found:
        assert data[:8] == PNG_SIGNATURE, data[:8]
    return found


def check_relayed(nanogate_bin: Path, setup: Reseller, rid: str) -> dict:
    """A's row for the request: served by the reseller channel's first key, in one attempt."""
    row = usage_row(nanogate_bin, setup.a.data_dir, rid)
    assert row["status"] == 200, row
    assert row["upstream_key"] == "reseller#1", row
    assert attempts_of(row) == [("reseller", 1, 200, None)], row
    return row


def test_openai_channel_generate_edit_chat(nanogate_bin, reseller):
    """Through A, generations, an edit with one input image and a one-message chat are each
    answered by B: a real PNG and B's usage, A's row naming ``reseller#1``, B's log a row per call."""
    before = {row["request_id"] for row in usage_rows(nanogate_bin, reseller.b_data_dir)}
    client = client_for(reseller.a, reseller.secret)

    rid = request_id()
    generated = client.images.generate(model="nano-banana", prompt=PROMPT, response_format="b64_json", extra_headers={"x-request-id": rid})
    assert generated.data is not None and len(generated.data) == 1
    assert Image.open(io.BytesIO(decoded_png(generated.data[0].b64_json))).size == (1024, 1024)
    usage = generated.usage
    assert usage is not None and usage.output_tokens_details is not None
    assert usage.output_tokens_details.image_tokens >= 1290, usage
    assert usage.input_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens, usage
    generate_row = check_relayed(nanogate_bin, reseller, rid)
    assert generate_row["cost_usd"] > 0, generate_row

    rid = request_id()
    edited = client.images.edit(
        model="nano-banana", image=("in.png", png_bytes((64, 64), (200, 30, 30)), "image/png"),
        prompt="put a hat on it", response_format="b64_json", extra_headers={"x-request-id": rid},
    )
    assert edited.data is not None and len(edited.data) == 1
    decoded_png(edited.data[0].b64_json)
    check_relayed(nanogate_bin, reseller, rid)

    rid = request_id()
    completion = client.chat.completions.create(
        model="nano-banana", messages=[{"role": "user", "content": PROMPT}], extra_headers={"x-request-id": rid}
    )
    assert completion.choices[0].finish_reason == "stop", completion
    assert len(chat_images(completion, reseller.a.base_url)) == 1, completion.choices[0].message
    assert completion.usage is not None and completion.usage.completion_tokens >= 1290, completion.usage
    check_relayed(nanogate_bin, reseller, rid)

    deadline = time.monotonic() + 30
    while True:
        rows = [row for row in usage_rows(nanogate_bin, reseller.b_data_dir) if row["request_id"] not in before]
        if len(rows) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(rows) == 3, rows
    assert all(row["status"] == 200 and row["key"] == "demo" and row["images"] == 1 for row in rows), rows
    assert all(row["upstream_model"] == FLASH25 for row in rows), rows
    endpoints = sorted(row["endpoint"] for row in rows)
    assert sum("edits" in endpoint for endpoint in endpoints) == 1, endpoints
    assert sum("generations" in endpoint for endpoint in endpoints) == 2, endpoints
    edit_row = next(row for row in rows if "edits" in row["endpoint"])
    assert edit_row["input_image_tokens"] > 0, f"B did not receive the input image: {edit_row}"


def test_openai_channel_relays_a_conversation(nanogate_bin, reseller):
    """A conversation (user, assistant, user) through A reaches B's /v1/chat/completions and
    comes back with an image."""
    before = {row["request_id"] for row in usage_rows(nanogate_bin, reseller.b_data_dir)}
    client = client_for(reseller.a, reseller.secret)
    rid = request_id()
    completion = client.chat.completions.create(
        model="nano-banana",
        messages=[
            {"role": "user", "content": "draw a banana"},
            {"role": "assistant", "content": "Here is a banana."},
            {"role": "user", "content": "now put it on the moon"},
        ],
        extra_headers={"x-request-id": rid},
    )
    assert len(chat_images(completion, reseller.a.base_url)) == 1, completion.choices[0].message
    check_relayed(nanogate_bin, reseller, rid)
    deadline = time.monotonic() + 30
    while not (rows := [row for row in usage_rows(nanogate_bin, reseller.b_data_dir) if row["request_id"] not in before]):
        assert time.monotonic() < deadline, "B logged no request"
        time.sleep(0.3)
    assert len(rows) == 1 and "chat" in rows[0]["endpoint"] and rows[0]["status"] == 200, rows


# ---------------------------------------------------------------------------------------------
# 3. Failover between two emulators


def test_failover_from_rate_limited_channel(nanogate_bin, tmp_path):
    """``first`` (priority 2) answers 429: the request moves on to ``second`` and succeeds, the
    row shows both attempts, the admin API shows the model cooling on ``first``, and the next
    request goes straight to ``second``."""
    with emulator(nanogate_bin, "--fault", "429") as limited, emulator(nanogate_bin) as healthy:
        config = write_config(tmp_path / "nanogate.json", {
            "check_models": False,
            "admin_token": ADMIN_TOKEN,  # a setting from the file
            "channels": [
                {"name": "first", "kind": "gemini", "base_url": limited, "api_keys": ["key-first"], "priority": 2},
                {"name": "second", "kind": "gemini", "base_url": healthy, "api_keys": ["key-second"], "priority": 1},
            ],
        })
        with serve(nanogate_bin, config, tmp_path / "data") as served:
            client = client_for(served, create_key(nanogate_bin, served.data_dir, "failover"))
            listed = admin_channels(served)
            assert listed["first"]["state"] == "ok" and listed["first"]["priority"] == 2, listed
            assert listed["second"]["state"] == "ok" and listed["second"]["priority"] == 1, listed

            rid = request_id()
            result = client.images.generate(model="nano-banana", prompt=PROMPT, response_format="b64_json", extra_headers={"x-request-id": rid})
            decoded_png(result.data[0].b64_json)
            row = usage_row(nanogate_bin, served.data_dir, rid)
            assert row["status"] == 200, row
            assert attempts_of(row) == [("first", 1, 429, "upstream_rate_limited"), ("second", 1, 200, None)], row
            assert row["upstream_key"] == "second#1", row

            listed = admin_channels(served)
            first = listed["first"]
            assert FLASH25 in first["coolingModels"] and first["coolingModels"][FLASH25] > 0, first
            assert first["state"] == "cooling", first
            assert first["disabledKeys"] == [] and first["keys"] == 1, first
            assert listed["second"]["state"] == "ok" and listed["second"]["coolingModels"] == {}, listed["second"]

            rid = request_id()
            decoded_png(client.images.generate(
                model="nano-banana", prompt=PROMPT, response_format="b64_json", extra_headers={"x-request-id": rid}
            ).data[0].b64_json)
            row = usage_row(nanogate_bin, served.data_dir, rid)
            assert attempts_of(row) == [("second", 1, 200, None)], row


# ---------------------------------------------------------------------------------------------
# 4. A refused key: the client's error, the admin API, channels list and channels test


BAD_KEY = "bad-key-5e1f9c"
GOOD_KEY = "good-key-7a3d20"


def test_refused_key_disables_channel(nanogate_bin, tmp_path):
    """A channel whose only key the upstream refuses: the request fails with 503
    ``upstream_auth_failed`` (the key's value nowhere in the answer), the admin API and
    ``channels list`` show the channel disabled with key #1 refused, and ``channels test``
    says ok for a good channel and FAILED for the bad one."""
    with emulator(nanogate_bin, "--accept-key", GOOD_KEY) as url:
        port = _free_port()
        config = write_config(tmp_path / "nanogate.json", {
            "check_models": False,
            "port": port,
            "channels": [
                {"name": "bad", "kind": "gemini", "base_url": url, "api_keys": [BAD_KEY], "models": [FLASH25]},
                {"name": "good", "kind": "gemini", "base_url": url, "api_keys": [GOOD_KEY], "models": [PRO]},
            ],
        })
        admin_env = {"NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN}

        # Without the admin token, list shows the configuration only.
        offline = json.loads(ok(cli(nanogate_bin, "channels", "list", "--config", str(config), "--json")))
        assert {row["name"]: row["state"] for row in offline} == {"bad": "unknown", "good": "unknown"}, offline

        with serve(nanogate_bin, config, tmp_path / "data", env=admin_env, port=port) as served:
            client = client_for(served, create_key(nanogate_bin, served.data_dir, "refused"))
            rid = request_id()
            with pytest.raises(openai.APIStatusError) as raised:
                client.images.generate(model="nano-banana", prompt=PROMPT, response_format="b64_json", extra_headers={"x-request-id": rid})
            error = raised.value
            assert error.status_code == 503, error
            assert error.code == "upstream_auth_failed", error.body
            assert isinstance(error.body, dict) and error.body.get("message"), error.body
            assert BAD_KEY not in error.response.text and GOOD_KEY not in error.response.text

            row = usage_row(nanogate_bin, served.data_dir, rid)
            assert row["status"] == 503 and row["error_code"] == "upstream_auth_failed", row
            assert attempts_of(row) == [("bad", 1, 400, "upstream_auth_failed")], row

            listed = admin_channels(served)
            assert listed["bad"]["state"] == "disabled", listed["bad"]
            assert listed["bad"]["disabledKeys"] == [1], listed["bad"]
            assert listed["good"]["state"] == "ok" and listed["good"]["disabledKeys"] == [], listed["good"]
            assert BAD_KEY not in json.dumps(listed)

            # The good channel still serves its model.
            decoded_png(client.images.generate(model="nano-banana-pro", prompt=PROMPT, response_format="b64_json").data[0].b64_json)

            # channels list finds the running gateway at the configuration's port.
            table = cli(nanogate_bin, "channels", "list", "--config", str(config), env=admin_env)
            lines = {line.split()[0]: line for line in ok(table).splitlines() if line.strip()}
            assert re.search(r"\bdisabled\b", lines["bad"]), table.stdout
            assert "#1" in lines["bad"], table.stdout
            assert re.search(r"\bok\b", lines["good"]), table.stdout
            assert BAD_KEY not in table.stdout + table.stderr
            as_json = json.loads(ok(cli(nanogate_bin, "channels", "list", "--config", str(config), "--json", env=admin_env)))
            bad = next(row for row in as_json if row["name"] == "bad")
            assert bad["state"] == "disabled" and bad["disabledKeys"] == [1], as_json

            # Without the admin token, the refusal the gateway stored in the database (within
            # its 5 s round) shows too, never the key.
            deadline = time.monotonic() + 60
            while True:
                stored = {row["name"]: row for row in json.loads(ok(cli(nanogate_bin, "channels", "list", "--config", str(config), "--data-dir", str(served.data_dir), "--json")))}
                if stored["bad"]["state"] == "disabled" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert stored["bad"]["state"] == "disabled" and stored["bad"]["disabledKeys"] == [1], stored
            assert stored["good"]["state"] == "unknown", stored

        # With no gateway running at all, the table still names the refused key.
        table = cli(nanogate_bin, "channels", "list", "--config", str(config), "--data-dir", str(tmp_path / "data"))
        lines = {line.split()[0]: line for line in ok(table).splitlines() if line.strip()}
        assert re.search(r"\bdisabled\b", lines["bad"]) and "#1" in lines["bad"], table.stdout
        assert BAD_KEY not in table.stdout + table.stderr

        good = cli(nanogate_bin, "channels", "test", "good", "--config", str(config))
        assert good.returncode == 0, good.stdout + good.stderr
        assert good.stdout.startswith("ok  good"), good.stdout
        bad = cli(nanogate_bin, "channels", "test", "bad", "--config", str(config))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert bad.stdout.startswith("FAILED  bad"), bad.stdout
        assert "upstream_auth_failed" in bad.stdout, bad.stdout
        assert BAD_KEY not in bad.stdout + bad.stderr


# ---------------------------------------------------------------------------------------------
# 5. A channel behind an outbound HTTP proxy


class ProxiedRequest(NamedTuple):
    """What an HTTP proxy sees of one client connection: the request line, the headers (names
    lowercased) and, for a CONNECT tunnel, every byte the client then sent through it."""

    request_line: str
    headers: dict[str, str]
    tunnelled: bytes


@contextlib.contextmanager
def http_proxy() -> Iterator[tuple[int, list[ProxiedRequest]]]:
    """A tiny threaded HTTP proxy on 127.0.0.1 (socket and threads only): ``CONNECT host:port``
    answers 200 and then pipes bytes both ways until either side closes; an absolute-form
    request (``POST http://host:port/path HTTP/1.1``) is forwarded in origin form, with the
    Proxy-* headers dropped. It authenticates nobody, it only records: yields its port and the
    requests seen (each connection's first request head; the tunnel's bytes when CONNECT)."""
    seen: list[ProxiedRequest] = []
    lock = threading.Lock()
    sockets: list[socket.socket] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stopping = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while chunk := source.recv(65536):
                if record is not None:
                    record.extend(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve_one(client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
                if len(head) > 65536:
                    return
            head, rest = head.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            request_line, header_lines = lines[0], lines[1:]
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            method, target, version = (request_line.split(" ", 2) + ["", ""])[:3]
            tunnelled = bytearray()
            if method.upper() == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=60)
                client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                if rest:
                    tunnelled.extend(rest)
                    upstream.sendall(rest)
                record: bytearray | None = tunnelled
            else:
                url = urllib.parse.urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                upstream = socket.create_connection((url.hostname, url.port or 80), timeout=60)
                origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
                kept = [line for line in header_lines if not line.lower().startswith(("proxy-authorization:", "proxy-connection:"))]
                upstream.sendall(("\r\n".join([f"{method} {origin} {version}", *kept]) + "\r\n\r\n").encode("latin-1") + rest)
                record = None
            with lock:
                sockets.append(upstream)
            back = threading.Thread(target=pipe, args=(upstream, client, None), daemon=True)
            back.start()
            pipe(client, upstream, record)
            back.join(timeout=60)
            with lock:
                seen.append(ProxiedRequest(request_line, headers, bytes(tunnelled)))
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def accept_loop() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            with lock:
                sockets.append(client)
            threading.Thread(target=serve_one, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()
        with lock:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()


def proxied_target(request_line: str) -> str | None:
    """The ``host:port`` a proxied request is for: a CONNECT's authority, or an absolute-form
    request's (``POST http://host:port/path HTTP/1.1``)."""
    parts = request_line.split(" ")
    if len(parts) != 3:
        return None
    if parts[0].upper() == "CONNECT":
        return parts[1]
    return urllib.parse.urlsplit(parts[1]).netloc or None


PROXY_KEY = "google-key-via-proxy-4b8e1d"


def test_channel_goes_through_its_proxy(nanogate_bin, tmp_path):
    """A channel with ``proxy: http://user:secret@127.0.0.1:P`` reaches its upstream through
    that proxy, authenticating with ``Proxy-Authorization: Basic base64(user:secret)``; the
    Google key travels only inside the CONNECT tunnel (never in what the proxy itself reads),
    and the proxy's credentials never reach the upstream."""
    with emulator(nanogate_bin, "--accept-key", PROXY_KEY) as url, http_proxy() as (proxy_port, seen):
        target = url.removeprefix("http://")
        config = write_config(tmp_path / "nanogate.json", {
            "check_models": False,
            "channels": [{
                "name": "via-proxy", "kind": "gemini", "base_url": url, "api_keys": [PROXY_KEY],
                "proxy": f"http://user:secret@127.0.0.1:{proxy_port}",
            }],
        })
        with serve(nanogate_bin, config, tmp_path / "data") as served:
            client = client_for(served, create_key(nanogate_bin, served.data_dir, "proxied"))
            result = client.images.generate(model="nano-banana", prompt=PROMPT, response_format="b64_json")
            decoded_png(result.data[0].b64_json)
        # The gateway is stopped: every connection through the proxy has ended and been recorded.
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)

    heads = [(r.request_line, r.headers) for r in seen]
    for_target = [r for r in seen if proxied_target(r.request_line) == target]
    assert for_target, f"the proxy saw no request for {target}: {heads}"
    for request in for_target:
        assert request.headers.get("proxy-authorization") == "Basic dXNlcjpzZWNyZXQ=", heads
    connects = [r for r in for_target if r.request_line.upper().startswith("CONNECT ")]
    for request in connects:
        assert request.request_line == f"CONNECT {target} HTTP/1.1", heads
        head = request.request_line + "\r\n" + "\r\n".join(f"{k}: {v}" for k, v in request.headers.items())
        assert PROXY_KEY not in head, f"the Google key is in the CONNECT request itself: {heads}"
        # Inside the tunnel: the key, and not the proxy's credentials.
        assert PROXY_KEY.encode() in request.tunnelled, request.tunnelled[:2000]
        assert b"proxy-authorization" not in request.tunnelled.lower(), request.tunnelled[:2000]
        assert b"dXNlcjpzZWNyZXQ=" not in request.tunnelled, request.tunnelled[:2000]


# ---------------------------------------------------------------------------------------------
# Last, so that under -x it masks nothing above: the reseller's usage split, token for token.


def test_openai_channel_keeps_upstream_usage_split(nanogate_bin, reseller):
    """A bills from B's answer: its usage (and so its charge) splits output tokens into text and
    image exactly as B reported them, rather than counting B's text tokens as image tokens."""
    before = {row["request_id"] for row in usage_rows(nanogate_bin, reseller.b_data_dir)}
    rid = request_id()
    result = client_for(reseller.a, reseller.secret).images.generate(
        model="nano-banana", prompt=PROMPT, response_format="b64_json", extra_headers={"x-request-id": rid}
    )
    a_row = check_relayed(nanogate_bin, reseller, rid)
    deadline = time.monotonic() + 30
    while not (b_rows := [row for row in usage_rows(nanogate_bin, reseller.b_data_dir) if row["request_id"] not in before]):
        assert time.monotonic() < deadline, "B logged no request"
        time.sleep(0.3)
    assert len(b_rows) == 1, b_rows
    b_row = b_rows[0]
    fields = ("input_text_tokens", "input_image_tokens", "output_text_tokens", "output_image_tokens")
    assert {f: a_row[f] for f in fields} == {f: b_row[f] for f in fields}, (a_row, b_row)
    details = result.usage.output_tokens_details
    assert (details.image_tokens, details.text_tokens) == (b_row["output_image_tokens"], b_row["output_text_tokens"]), result.usage
    assert a_row["upstream_cost_usd"] == pytest.approx(b_row["cost_usd"]), (a_row, b_row)


# ---------------------------------------------------------------------------------------------
# 7. Each channel's model list: the model × channel matrix, stored for every instance


OLD_KEY = "old-project-key-1c2d"
NEW_KEY = "new-project-key-9e8f"


def test_models_check_prints_the_matrix_and_gateways_route_by_it(nanogate_bin, tmp_path):
    """Two channels on one Google: an old project's key (2.5 still served) and a new one's (2.5
    refused, and not in its model list). ``nanogate models check`` prints per model and channel
    whether the channel serves it, what the model answers with, and a catalog entry for an image
    model the catalog does not know (which ``--config`` then accepts); a gateway on the same data
    directory sends ``nano-banana`` only to the old project, never paying a refused call."""
    with emulator(nanogate_bin, "--new-project-key", NEW_KEY, "--list-model", "gemini-4-flash-image") as url:
        port = _free_port()
        config = write_config(tmp_path / "nanogate.json", {
            "check_models": True,
            "port": port,
            "channels": [
                {"name": "new-project", "kind": "gemini", "base_url": url, "api_keys": [NEW_KEY]},
                {"name": "old-project", "kind": "gemini", "base_url": url, "api_keys": [OLD_KEY]},
            ],
        })
        data_dir = tmp_path / "data"
        checked = cli(nanogate_bin, "models", "check", "--config", str(config), "--data-dir", str(data_dir))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        rows = [line.split() for line in checked.stdout.splitlines()]
        header = rows[0]
        assert header[:2] == ["MODEL", "UPSTREAM"] and "new-project" in header and "old-project" in header, checked.stdout
        new_col, old_col = header.index("new-project"), header.index("old-project")
        nano = next(row for row in rows if row[:2] == ["nano-banana", FLASH25])
        assert nano[new_col] == "not_listed" and nano[old_col] == "listed", checked.stdout
        assert nano[-1] == FLASH25, "answers with 2.5 (the old project serves it)"
        then = rows[rows.index(nano) + 1]
        assert then[:2] == ["then", "gemini-nano-banana-2.1"] and then[new_col] == "listed" and then[old_col] == "listed", checked.stdout
        # The suggestion block is a catalog file the gateway reads back.
        suggestion = checked.stdout[checked.stdout.index("# Image models"):]
        assert "name: gemini-4-flash-image" in suggestion and "upstream: gemini-4-flash-image" in suggestion, suggestion
        suggested = tmp_path / "suggested.yaml"
        suggested.write_text(suggestion)
        exported = ok(cli(nanogate_bin, "models", "export", "--config", str(suggested)))
        assert "gemini-4-flash-image" in exported

        with serve(nanogate_bin, config, data_dir, port=port) as served:
            client = client_for(served, create_key(nanogate_bin, served.data_dir, "matrix"))
            for _ in range(4):
                png = decoded_png(client.images.generate(model="nano-banana", prompt=PROMPT, response_format="b64_json").data[0].b64_json)
                assert png.startswith(PNG_SIGNATURE)
            rows = usage_rows(nanogate_bin, served.data_dir)
            assert len(rows) == 4 and all(row["upstream_model"] == FLASH25 for row in rows), rows
            assert all(attempts_of(row) == [("old-project", 1, 200, None)] for row in rows), [attempts_of(row) for row in rows]
            ready = json.loads(urllib.request.urlopen(served.root + "/ready", timeout=CLIENT_TIMEOUT).read())
            assert ready["models"]["nano-banana"] == FLASH25 and ready["models"]["nano-banana-2"] == "gemini-nano-banana-2.1", ready
