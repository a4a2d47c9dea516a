"""NanoGate against a hostile Gemini upstream (``hostile_upstream.py``).

A reseller's base URL is only semi-trusted, and Google itself has bad days. These tests point a
real ``nanogate serve`` at an in-process upstream that redirects, stalls after its headers,
sends absurd numbers, fails in the middle of a stream or splits a stream in two, and check what
a user of the gateway would notice: the status and error code they get, that the request ends,
that the gateway stays up, and what the usage log bills.

Each test starts a gateway of its own (one Google key, ``k``; ``NANOGATE_UPSTREAM_TIMEOUT=3``;
``NANOGATE_UPSTREAM_ATTEMPTS=1`` unless the test says otherwise), so a crash or a resting key
never leaks into another test. HTTP is spoken over raw sockets with an overall deadline per
request, so no test can hang however the gateway behaves.

See /work/shared/reviews/2026-12-01-security-review.md, findings 2, 4, 6, 7 and 10.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

import pytest

import hostile_upstream as hu

GOOGLE_KEY = "k"
UPSTREAM_TIMEOUT = 3  # NANOGATE_UPSTREAM_TIMEOUT for every gateway here, seconds
CLIENT_DEADLINE = 30.0  # overall deadline of one client request: the old gateway fails, never hangs
STARTUP_TIMEOUT = 60.0
USAGE_WAIT = 10.0  # how long a usage_log row may take to appear after the client saw the end
MAX_SAFE_INTEGER = 2**53


# ---------------------------------------------------------------------------------------------
# A tiny HTTP/1.1 client over a raw socket, with one deadline for the whole exchange


class GatewayUnreachable(Exception):
    """The connection was refused, reset or closed before a whole answer arrived."""


class DeadlineExceeded(Exception):
    """The answer did not complete before the deadline."""


class Response:
    """One HTTP response, read incrementally from a socket under an overall deadline."""

    def __init__(self, sock: socket.socket, deadline: float, description: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.description = description
        self._buf = bytearray()
        self.complete = False  # the body ended as HTTP framed it
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers[name.strip().lower()] = value.strip()
        self._body: Optional[bytes] = None

    # -- low level ----------------------------------------------------------------------------

    def _fill(self, eof_ok: bool = False) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.description}: no complete answer before the deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise DeadlineExceeded(f"{self.description}: no complete answer before the deadline") from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as error:
            raise GatewayUnreachable(f"{self.description}: connection reset ({error})") from None
        if not data:
            if eof_ok:
                return False
            raise GatewayUnreachable(f"{self.description}: the gateway closed the connection mid-answer")
        self._buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            index = self._buf.find(marker)
            if index >= 0:
                data = bytes(self._buf[:index])
                del self._buf[: index + len(marker)]
                return data
            self._fill()

    def _read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def iter_body(self) -> Iterator[bytes]:
        """The body's bytes as they arrive (chunked, Content-Length or until close)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self._read_until(b"\r\n"):
                        pass
                    self.complete = True
                    return
                yield self._read_exact(size)
                self._read_exact(2)
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                if not self._buf:
                    self._fill()
                piece = bytes(self._buf[:remaining])
                del self._buf[: len(piece)]
                remaining -= len(piece)
                yield piece
            self.complete = True
        else:
            while True:
                if self._buf:
                    piece = bytes(self._buf)
                    self._buf.clear()
                    yield piece
                if not self._fill(eof_ok=True):
                    self.complete = True
                    return

    def iter_lines(self) -> Iterator[bytes]:
        pending = b""
        for piece in self.iter_body():
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield pending.rstrip(b"\r")

    # -- high level ---------------------------------------------------------------------------

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.iter_body())
        return self._body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"{self.description}: HTTP {self.status}, body is not JSON: {self.body[:500]!r}") from None

    def close(self, abort: bool = False) -> None:
        """Closes the connection; ``abort`` resets it (RST), as a client that is killed or
        loses its network does, so the gateway cannot mistake it for a half-close."""
        with contextlib.suppress(OSError):
            if abort:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.description}>"


def http_request(
    port: int, method: str, target: str, *, body: Optional[bytes] = None, headers: Optional[dict[str, str]] = None,
    deadline: float = CLIENT_DEADLINE,
) -> Response:
    """Sends one request to 127.0.0.1:``port`` and returns the response with its head read;
    the body is read lazily, all of it before ``deadline`` seconds from now."""
    end = time.monotonic() + deadline
    description = f"{method} {target.split('?')[0]}"
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=min(deadline, 10))
    except OSError as error:
        raise GatewayUnreachable(f"{description}: cannot connect ({error})") from None
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", "Accept-Encoding: identity"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    try:
        sock.sendall(payload)
        return Response(sock, end, description)
    except (OSError, GatewayUnreachable, DeadlineExceeded):
        sock.close()
        raise


def read_sse(
    response: Response, until: Optional[Callable[[Any], bool]] = None
) -> tuple[list[Any], Optional[Exception]]:
    """The ``data:`` payloads of an SSE body, parsed (JSON, or the string ``"[DONE]"``), and
    what stopped the reading early (the deadline, a broken connection) or None; comments
    (keep-alives) are skipped. Stops, without closing, once ``until(event)`` is true."""
    events: list[Any] = []
    try:
        for line in response.iter_lines():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            event: Any = "[DONE]" if payload == b"[DONE]" else json.loads(payload)
            events.append(event)
            if until is not None and until(event):
                break
    except (DeadlineExceeded, GatewayUnreachable) as error:
        return events, error
    return events, None


# ---------------------------------------------------------------------------------------------
# The gateway under test


class Gateway:
    """A running ``nanogate serve`` pointed at a hostile upstream, with one NanoGate key."""

    def __init__(self, binary: Path, data_dir: Path, upstream: hu.HostileUpstream, env: dict[str, str]) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.upstream = upstream
        self.port = _free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}-gateway.log"
        created = subprocess.run(
            [str(binary), "keys", "create", "--name", "t", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        assert created.returncode == 0, f"keys create failed: {created.stdout}\n{created.stderr}"
        self.key = [line for line in created.stdout.splitlines() if line.strip()][-1].strip()
        environment = {
            **os.environ,
            "GEMINI_API_KEY": GOOGLE_KEY,
            "NANOGATE_GEMINI_BASE_URL": upstream.base_url,
            "NANOGATE_DATA_DIR": str(data_dir),
            "NANOGATE_PORT": str(self.port),
            "NANOGATE_HOST": "127.0.0.1",
            "NANOGATE_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
            "NANOGATE_UPSTREAM_ATTEMPTS": "1",
            # A trap would otherwise spend ~15 s symbolicating a backtrace; the runtime's
            # "Fatal error: ..." line still reaches the log. Set SWIFT_BACKTRACE to override.
            "SWIFT_BACKTRACE": os.environ.get("SWIFT_BACKTRACE", "enable=no"),
            # The start-up model check would be one more upstream request; these tests count them.
            "NANOGATE_CHECK_MODELS": "0",
            **env,
        }
        self._log = open(self.log_path, "w+b")
        self.proc = subprocess.Popen(
            [str(binary), "serve"], env=environment, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.health(timeout=2) != 200:
            if self.proc.poll() is not None:
                pytest.fail(f"nanogate serve exited at startup with {self.exit_description()}\n{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"nanogate serve did not answer /health within {STARTUP_TIMEOUT:.0f}s\n{self.log_tail()}", pytrace=False)
            time.sleep(0.2)

    # -- process --------------------------------------------------------------------------------

    def exit_description(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "no exit (still running)"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"signal {signal.Signals(-code).name}"
        return f"exit status {code}"

    def log_tail(self, size: int = 3000) -> str:
        self._log.flush()
        data = self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        return f"--- gateway log (tail) ---\n{data}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def crashed(self) -> Optional[str]:
        """Why the gateway process is gone, or None while it runs."""
        # A trap takes a moment to be reaped; give it one.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)
        return None if self.proc.poll() is None else self.exit_description()

    # -- HTTP -----------------------------------------------------------------------------------

    def health(self, timeout: float = 5) -> Optional[int]:
        """The status of ``GET /health``, or None if the gateway does not answer."""
        try:
            response = http_request(self.port, "GET", "/health", deadline=timeout)
            response.body
            response.close()
            return response.status
        except (GatewayUnreachable, DeadlineExceeded, ValueError, IndexError):
            return None

    def assert_healthy(self, after: str) -> None:
        status = self.health(timeout=10)
        if status != 200:
            why = self.crashed()
            detail = f"the gateway process died ({why})" if why else f"GET /health answered {status}"
            pytest.fail(f"after {after}: {detail}\n{self.log_tail()}", pytrace=False)

    def _fail_unreachable(self, error: Exception) -> None:
        why = self.crashed()
        if why:
            pytest.fail(f"the gateway crashed ({why}) instead of answering: {error}\n{self.log_tail()}", pytrace=False)
        pytest.fail(f"{error}\n{self.log_tail()}", pytrace=False)

    def open(self, method: str, path: str, body: Any = None, deadline: float = CLIENT_DEADLINE) -> Response:
        """Sends a request with this gateway's key; returns once the response head arrived."""
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        problem: Exception
        try:
            return http_request(self.port, method, path, body=data, headers=headers, deadline=deadline)
        except GatewayUnreachable as error:
            problem = error
        except DeadlineExceeded as error:
            problem = error
        if isinstance(problem, DeadlineExceeded):
            pytest.fail(f"{problem} (not even the response headers arrived)", pytrace=False)
        self._fail_unreachable(problem)
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, deadline: float = CLIENT_DEADLINE) -> Response:
        """A whole exchange: the response with its body read (fails the test on a crash or the deadline)."""
        response = self.open(method, path, body, deadline)
        problem: Optional[Exception] = None
        try:
            response.body
        except (GatewayUnreachable, DeadlineExceeded) as error:
            problem = error
        finally:
            response.close()
        if isinstance(problem, DeadlineExceeded):
            pytest.fail(f"{problem} (HTTP {response.status} headers arrived, the body never ended)", pytrace=False)
        if problem is not None:
            self._fail_unreachable(problem)
        return response

    def generate(self, model: str = "nano-banana", deadline: float = CLIENT_DEADLINE, **fields: Any) -> Response:
        return self.call("POST", "/v1/images/generations", {"model": model, "prompt": "a banana on the moon", **fields}, deadline)

    def stream_chat(self, model: str = "nano-banana", deadline: float = CLIENT_DEADLINE, **fields: Any) -> Response:
        body = {"model": model, "stream": True, "modalities": ["image", "text"], "messages": [{"role": "user", "content": "x"}], **fields}
        return self.open("POST", "/v1/chat/completions", body, deadline)

    def get_url(self, url: str, deadline: float = 15) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        assert parts.port == self.port, f"image URL does not point at this gateway: {url}"
        response = http_request(self.port, "GET", target, deadline=deadline)
        response.body
        response.close()
        return response

    # -- usage log ------------------------------------------------------------------------------

    def usage_rows(self) -> list[dict[str, Any]]:
        path = self.data_dir / "nanogate.sqlite"
        if not path.exists():
            return []
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        except sqlite3.OperationalError:
            return []
        try:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute("SELECT * FROM usage_log ORDER BY created_at, rowid")]
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                return []
            raise
        finally:
            connection.close()

    def usage_columns(self) -> list[str]:
        connection = sqlite3.connect(f"file:{self.data_dir / 'nanogate.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return [row[1] for row in connection.execute("PRAGMA table_info(usage_log)")]
        finally:
            connection.close()

    def key_view(self) -> dict[str, Any]:
        """The key's money as ``nanogate keys show`` reports it (spent, reserved)."""
        shown = subprocess.run(
            [str(self.binary), "keys", "show", "t", "--json", "--data-dir", str(self.data_dir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        assert shown.returncode == 0, f"keys show failed: {shown.stdout}\n{shown.stderr}"
        return json.loads(shown.stdout)

    def wait_for_usage(self, endpoint: str, count: int = 1, timeout: float = USAGE_WAIT) -> list[dict[str, Any]]:
        """The usage_log rows of ``endpoint`` once there are ``count`` of them (the row is written
        when the request settles, a moment after the client saw the end)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [row for row in self.usage_rows() if row["endpoint"] == endpoint]
            if len(rows) >= count:
                return rows
            if time.monotonic() > deadline:
                pytest.fail(
                    f"usage_log has {len(rows)} {endpoint} row(s) after {timeout:.0f}s, expected {count}: {self.usage_rows()}",
                    pytrace=False,
                )
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def upstream() -> Iterator[hu.HostileUpstream]:
    """The hostile upstream; it answers normal images until the test says otherwise."""
    server = hu.HostileUpstream()
    try:
        yield server
    finally:
        server.stop()
    assert not server.errors, f"the hostile upstream itself failed: {server.errors}"


@pytest.fixture
def catcher() -> Iterator[hu.HostileUpstream]:
    """A second server where a redirect points; it would happily answer an image."""
    server = hu.HostileUpstream(hu.image())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_gateway(nanogate_bin: Path, upstream: hu.HostileUpstream, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``start_gateway(**env)`` runs ``nanogate serve`` against ``upstream`` with extra env vars
    (e.g. ``NANOGATE_UPSTREAM_ATTEMPTS="3"``). Stalls are released before the gateway is
    stopped, so a pinned request cannot hold up its graceful shutdown."""
    started: list[Gateway] = []

    def start(**env: str) -> Gateway:
        data_dir = tmp_path / f"data{len(started)}"
        data_dir.mkdir()
        gateway = Gateway(nanogate_bin, data_dir, upstream, env)
        started.append(gateway)
        return gateway

    try:
        yield start
    finally:
        upstream.release()
        for gateway in started:
            gateway.stop()


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    """A gateway with the defaults of this module (ATTEMPTS=1, TIMEOUT=3)."""
    return start_gateway()


# ---------------------------------------------------------------------------------------------
# Assertions


def assert_openai_error(response: Response) -> dict[str, Any]:
    """The body is OpenAI's ``{"error":{"message","type","param","code"}}``; returns ``error``."""
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"HTTP {response.status}: not an OpenAI error: {body}"
    error = body["error"]
    missing = {"message", "type", "param", "code"} - error.keys()
    assert not missing, f"error object lacks {sorted(missing)}: {error}"
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    return error


def assert_no_google_key(text: str) -> None:
    assert f'"{GOOGLE_KEY}"' not in text and "x-goog-api-key" not in text.lower(), text


def walk_numbers(value: Any, path: str = "usage") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_numbers(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def error_events(events: list[Any]) -> list[dict[str, Any]]:
    return [event["error"] for event in events if isinstance(event, dict) and isinstance(event.get("error"), dict)]


def delta_images(event: Any) -> list[Any]:
    """The ``delta.images`` of a chat chunk (empty for other events)."""
    if not isinstance(event, dict):
        return []
    return [image for choice in event.get("choices") or [] for image in ((choice.get("delta") or {}).get("images") or [])]


def finish_reasons(events: list[Any]) -> list[Any]:
    return [
        choice.get("finish_reason")
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices") or []
        if choice.get("finish_reason") is not None
    ]


# ---------------------------------------------------------------------------------------------
# 1. Redirects are never followed (finding 7: the Google key would go with them)


def test_redirect_is_not_followed(upstream, catcher, gateway):
    """A 307 from the upstream is an upstream failure (5xx, 502 expected), never followed: the
    redirect target is never contacted, so the Google key and the prompt stay where they were sent."""
    upstream.behaviour = hu.redirect(f"{catcher.base_url}/x")

    response = gateway.generate()

    assert upstream.requests, "the gateway never called the upstream (test setup broken)"
    assert upstream.requests[0].headers.get("x-goog-api-key") == GOOGLE_KEY, "setup: the upstream call carries the key"
    leaked = [r.headers for r in catcher.requests]
    assert catcher.connections == 0, (
        f"the gateway followed the redirect: the catcher got {catcher.connections} connection(s), "
        f"requests with headers {leaked} (x-goog-api-key sent: {any('x-goog-api-key' in h for h in leaked)})"
    )
    assert response.status >= 500, f"a redirecting upstream must fail the generation, got HTTP {response.status}: {response.body[:300]!r}"
    assert response.status == 502, f"expected 502 for a redirecting upstream, got {response.status}"
    error = assert_openai_error(response)
    assert_no_google_key(json.dumps(error))


# ---------------------------------------------------------------------------------------------
# 2. A body that stalls after the headers times out (finding 2)


def test_stall_after_headers_times_out(upstream, gateway):
    """Google's headers arrive, then the body stalls: the generation still ends, with
    504 ``upstream_timeout``, within about TIMEOUT x ATTEMPTS + 10 s; /health answers meanwhile."""
    upstream.behaviour = hu.stall_after_headers()
    attempts = 1
    outcome: dict[str, Any] = {}

    def generate() -> None:
        started = time.monotonic()
        response = None
        try:
            response = http_request(
                gateway.port, "POST", "/v1/images/generations",
                body=json.dumps({"model": "nano-banana", "prompt": "a banana"}).encode(),
                headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
                deadline=CLIENT_DEADLINE,
            )
            response.body
            outcome["response"] = response
        except Exception as error:  # reported by the main thread
            outcome["error"] = error
        finally:
            outcome["elapsed"] = time.monotonic() - started
            if response is not None:
                response.close()

    client = threading.Thread(target=generate, daemon=True)
    client.start()
    assert upstream.wait_for_requests(1, timeout=20), "the gateway never called the upstream"
    health = gateway.health(timeout=10)
    client.join(timeout=CLIENT_DEADLINE + 10)

    assert health == 200, f"/health answered {health} while a request was stalled upstream"
    assert not client.is_alive(), "the client thread did not finish"
    if "error" in outcome:
        pytest.fail(f"the stalled generation did not end properly after {outcome['elapsed']:.1f}s: {outcome['error']}", pytrace=False)
    response = outcome["response"]
    assert response.status == 504, f"expected 504 for a stalled upstream body, got {response.status}: {response.body[:300]!r}"
    assert assert_openai_error(response)["code"] == "upstream_timeout"
    bound = UPSTREAM_TIMEOUT * attempts + 10
    assert outcome["elapsed"] <= bound, f"the timeout took {outcome['elapsed']:.1f}s, expected at most {bound}s"


# ---------------------------------------------------------------------------------------------
# 3. A stream that stalls after its first event times out (finding 2)


def test_stalled_stream_times_out(upstream, gateway):
    """Streamed chat; Google sends 200, one text event, then nothing. The client gets an SSE
    error event with code ``upstream_timeout`` followed by ``data: [DONE]`` and the stream ends
    (a plain HTTP 504 ``upstream_timeout`` is accepted if the gateway answers before streaming)."""
    upstream.behaviour = hu.sse_stall()

    response = gateway.stream_chat(deadline=CLIENT_DEADLINE)
    try:
        if response.status != 200:
            assert response.status == 504, f"expected an SSE stream or a 504, got {response.status}: {response.body[:300]!r}"
            assert assert_openai_error(response)["code"] == "upstream_timeout"
            return
        events, problem = read_sse(response)
    finally:
        response.close()
    if isinstance(problem, DeadlineExceeded):
        pytest.fail(f"the stalled stream was still open after {CLIENT_DEADLINE:.0f}s; events so far: {events}", pytrace=False)
    if problem is not None:
        pytest.fail(f"the stream broke instead of ending with an error event: {problem}; events: {events}", pytrace=False)

    errors = error_events(events)
    assert errors, f"no SSE error event; events: {events}"
    assert errors[0].get("code") == "upstream_timeout", errors[0]
    assert events[-1] == "[DONE]", f"the error event is not followed by [DONE]: {events[-3:]}"
    assert events.index("[DONE]") > next(i for i, e in enumerate(events) if isinstance(e, dict) and "error" in e)
    assert "stop" not in finish_reasons(events), "a stalled stream must not look like a normal end"
    assert response.complete, "the chunked stream was not terminated"


# ---------------------------------------------------------------------------------------------
# 4. Absurd retryDelay values (finding 6)

RETRY_DELAYS = ["1e300s", "infs", "nans", "-5s", "garbage", "-1e300s"]


@pytest.mark.parametrize("retry_delay", RETRY_DELAYS)
def test_absurd_retry_delay(upstream, gateway, retry_delay):
    """Google's 429 with a ``retryDelay`` no sane client can wait for: the client gets 429
    ``rate_limit_exceeded`` with a ``Retry-After`` that is an integer from 1 to 86400 (or no
    ``Retry-After`` at all when the delay is unusable), and the gateway stays up."""
    upstream.behaviour = hu.rate_limited(retry_delay)

    response = gateway.generate()

    assert response.status == 429, f"expected 429, got {response.status}: {response.body[:300]!r}"
    assert assert_openai_error(response)["code"] == "rate_limit_exceeded"
    retry_after = response.headers.get("retry-after")
    if retry_after is not None:
        assert re.fullmatch(r"[0-9]+", retry_after), f"Retry-After is not a whole number of seconds: {retry_after!r}"
        assert 1 <= int(retry_after) <= 86400, f"Retry-After out of range: {retry_after}"
    gateway.assert_healthy(f"a 429 with retryDelay {retry_delay!r}")


# ---------------------------------------------------------------------------------------------
# 5. Absurd token counts (finding 6)

INT64_MAX = 2**63 - 1
ABSURD_USAGE = {
    "int64_max": {
        "promptTokenCount": INT64_MAX, "candidatesTokenCount": INT64_MAX, "thoughtsTokenCount": INT64_MAX,
        "totalTokenCount": INT64_MAX,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": INT64_MAX}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": INT64_MAX}],
    },
    "int64_max_prompt_only": {"promptTokenCount": INT64_MAX, "candidatesTokenCount": 1290},
    "negative": {
        "promptTokenCount": -5, "candidatesTokenCount": -1290, "totalTokenCount": -1295,
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": -1290}],
    },
    "beyond_int64": {"promptTokenCount": 10**30, "candidatesTokenCount": 1290, "totalTokenCount": 10**30},
    "float_1e300": {"promptTokenCount": 1e300, "candidatesTokenCount": 1290, "totalTokenCount": 1e300},
    "string": {"promptTokenCount": "lots", "candidatesTokenCount": 1290, "totalTokenCount": "lots"},
}


ABSURD_CASES = [(case, 1) for case in ABSURD_USAGE] + [("int64_max", 2), ("negative", 2)]


@pytest.mark.parametrize(("case", "n"), ABSURD_CASES, ids=[f"{case}-n{n}" for case, n in ABSURD_CASES])
def test_absurd_token_counts(upstream, gateway, case, n):
    """A 200 with an image but nonsense ``usageMetadata`` (2**63-1, negative, beyond int64, 1e300,
    a string): the client still gets its image(s) with HTTP 200, every usage number in the answer
    is an integer in [0, 2**53), and the gateway stays up. (``n=2`` sums two such usages.)"""
    upstream.behaviour = hu.image(usage=ABSURD_USAGE[case])

    response = gateway.generate(n=n, response_format="b64_json")

    assert response.status == 200, f"expected 200 with the image, got {response.status}: {response.body[:300]!r}"
    body = response.json()
    assert len(body.get("data") or []) == n, body
    for item in body["data"]:
        assert base64.b64decode(item["b64_json"]).startswith(hu.PNG_MAGIC), "the image is not the upstream's PNG"
    numbers = list(walk_numbers(body.get("usage")))
    for path, value in numbers:
        if path == "usage.cost":
            # USD (the usage row's charge), from the clamped counts: a finite, bounded number.
            assert isinstance(value, (int, float)) and 0 <= value < 1e6, f"{path} = {value!r}"
            continue
        assert isinstance(value, int), f"{path} is not an integer: {value!r}"
        assert 0 <= value < MAX_SAFE_INTEGER, f"{path} = {value} is not in [0, 2**53)"
    gateway.assert_healthy(f"an answer with usage {case}")


# ---------------------------------------------------------------------------------------------
# 6. Errors after a 200 (finding 4)


def test_midstream_error_is_an_error(upstream, gateway):
    """Google streams a text event, then ``{"error":{"code":503,...}}``, then ends the stream:
    the client gets an SSE error event with a code, then ``[DONE]`` -- not a normal
    ``finish_reason: "stop"`` -- and the usage log records a failure (status != 200) at zero cost.
    (A plain HTTP 5xx OpenAI error is accepted too, should the gateway answer before streaming.)"""
    upstream.behaviour = hu.sse_midstream_error()

    response = gateway.stream_chat()
    try:
        if response.status != 200:
            assert response.status >= 500, f"expected a stream or a 5xx, got {response.status}: {response.body[:300]!r}"
            assert assert_openai_error(response)["code"]
        else:
            events, problem = read_sse(response)
            assert problem is None, f"the stream did not end properly after Google's error event ({problem}); events: {events}"
            errors = error_events(events)
            assert "stop" not in finish_reasons(events), f"a failed stream ended like a success: {events}"
            assert errors, f"no SSE error event after Google's mid-stream error; events: {events}"
            code = errors[0].get("code")
            assert isinstance(code, str) and code, f"the error event has no code: {errors[0]}"
            assert events[-1] == "[DONE]", f"the error event is not followed by [DONE]: {events[-3:]}"
    finally:
        response.close()

    row = gateway.wait_for_usage("chat.completions")[-1]
    assert row["status"] != 200, f"a failed stream was logged as a success: {row}"
    assert row["cost_micro_usd"] == 0, f"a failed stream was billed: {row}"


def test_an_image_cut_mid_stream_ends_the_chat_stream_broken(upstream, gateway):
    """Streamed chat whose ``data:`` image is written as it arrives: Google's stream breaks off
    inside the image. The client's stream must end broken (its chunked body never terminated,
    no ``[DONE]``), never as an event that parses with half an image; nothing is charged."""
    cut = threading.Event()  # Google breaks off once the client has seen the image begin
    upstream.behaviour = hu.sse_image_cut(cut)

    response = gateway.stream_chat(response_format="b64_json")
    body = bytearray()
    broken: Optional[Exception] = None
    try:
        assert response.status == 200, response.body[:300]
        for piece in response.iter_body():
            body += piece
            if b"data:image/png;base64," in body:
                cut.set()
    except (GatewayUnreachable, DeadlineExceeded) as error:
        broken = error
    finally:
        cut.set()
        response.close()
    assert not isinstance(broken, DeadlineExceeded), f"the broken stream was still open after the deadline: {broken}"
    assert not response.complete, f"the stream ended as if complete: {bytes(body[:300])!r} … {bytes(body[-300:])!r}"
    assert b"[DONE]" not in body
    assert b"data:image/png;base64,iVBOR" in body, "the image was not being written as it arrived"
    # Every complete event before the break parses; the image's event is the one left open.
    events = body.split(b"\n\n")
    for event in events[:-1]:
        if event.startswith(b"data: "):
            json.loads(event[6:])
    assert b"base64," in events[-1]

    row = gateway.wait_for_usage("chat.completions")[-1]
    assert row["status"] != 200, f"a broken stream was logged as a success: {row}"
    assert row["cost_micro_usd"] == 0, f"a broken stream was billed: {row}"


def test_midstream_error_after_usage_is_not_charged(upstream, gateway):
    """Google's text event carries its usage so far (the prompt's tokens), then the stream
    breaks: the failed answer costs nothing (it used to be charged its input tokens)."""
    upstream.behaviour = hu.sse_midstream_error_after_usage()
    response = gateway.stream_chat()
    try:
        if response.status == 200:
            events, _ = read_sse(response)
            assert error_events(events), f"no SSE error event: {events}"
    finally:
        response.close()
    row = gateway.wait_for_usage("chat.completions")[-1]
    assert row["status"] != 200 and row["cost_micro_usd"] == 0, f"a failed stream was billed: {row}"
    assert row["input_tokens"] == 9, "what Google billed is still logged"
    view = gateway.key_view()
    assert view["spent_usd"] == 0 and view["reserved_usd"] == 0, f"the key paid for a failed stream: {view}"


def test_a_decompression_bomb_from_upstream_is_not_converted(upstream, gateway):
    """A hostile upstream answers a 60 KB PNG of 7000x7000 RGBA (49 MP, ~196 MB decoded) to a
    request for JPEG: the conversion is refused (Google's largest image is ~19 MP; the limit is
    40 MP) instead of allocating it, the client gets an error, nothing is charged, and the
    gateway keeps serving."""
    upstream.behaviour = hu.image_bytes(hu.make_png_bomb(7000, 7000))
    response = gateway.generate(output_format="jpeg", response_format="b64_json")
    assert response.status >= 500, f"the bomb was converted: HTTP {response.status}"
    assert_openai_error(response)
    row = gateway.wait_for_usage("images.generations")[-1]
    assert row["cost_micro_usd"] == 0, row
    gateway.assert_healthy("a decompression bomb")


def test_error_body_with_status_200(upstream, gateway):
    """Google answers HTTP 200 whose body is ``{"error":{"code":503,...}}``: the generation is a
    5xx OpenAI error, not a 200."""
    upstream.behaviour = hu.error_body_200()

    response = gateway.generate()

    assert response.status >= 500, f"expected a 5xx for an error body, got {response.status}: {response.body[:300]!r}"
    assert_openai_error(response)
    row = gateway.wait_for_usage("images.generations")[-1]
    assert row["cost_micro_usd"] == 0, row


# ---------------------------------------------------------------------------------------------
# 7. A client that leaves after the image still pays for it (finding 4)


@pytest.mark.parametrize("how", ["reset", "close"])
def test_disconnect_after_image_is_billed(upstream, gateway, how):
    """Google streams the image first and its final event (STOP, usage) 3 s later; the client
    leaves as soon as it has the image chunk, by resetting the connection (``reset``: a killed
    client) or closing it (``close``: FIN, what ``requests``' ``r.close()`` does). The image was
    delivered (its URL works), so the usage log shows images == 1 and a cost above zero."""
    upstream.behaviour = hu.split(delay=3.0)

    response = gateway.stream_chat()
    assert response.status == 200, f"expected a stream, got {response.status}: {response.body[:300]!r}"
    try:
        events, problem = read_sse(response, until=lambda e: bool(delta_images(e)))
    finally:
        response.close(abort=how == "reset")  # the client goes away right after the image

    images = [image for event in events for image in delta_images(event)]
    assert images, f"no image chunk arrived ({problem or 'the stream ended'}); events: {events}"
    url = images[0]["image_url"]["url"]

    # The row appears once the gateway notices the disconnect or the upstream's final event (3 s).
    row = gateway.wait_for_usage("chat.completions", timeout=USAGE_WAIT + 10)[-1]
    assert row["images"] == 1, f"the delivered image is not in the usage log: {row}"
    assert row["cost_micro_usd"] > 0, f"a delivered image was not billed: {row}"

    fetched = gateway.get_url(url)
    assert fetched.status == 200, f"the delivered image URL answers {fetched.status}"
    assert fetched.body.startswith(hu.PNG_MAGIC), "the delivered image URL does not serve a PNG"


# ---------------------------------------------------------------------------------------------
# 8. n=2 with one failed call (finding 10)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed-through"])
def test_partial_success_returns_and_bills_the_images_made(upstream, start_gateway, streamed):
    """``n=2`` makes two upstream calls; the first to arrive gets an image, the second a 503
    (ATTEMPTS=1, so no retry). NanoGate returns the images that succeeded and charges for those:
    HTTP 200 with exactly one image in ``data``, and a usage_log row with images == 1 and a cost
    above zero (Google billed that image). The same when the images stream through
    (``NANOGATE_STREAM_IMAGES=on``, ``b64_json``)."""
    upstream.behaviour = hu.sequence(hu.image(), hu.unavailable())
    gateway = start_gateway(**({"NANOGATE_STREAM_IMAGES": "on"} if streamed else {}))

    response = gateway.generate(n=2, **({"response_format": "b64_json"} if streamed else {}))
    if streamed:
        assert "chunked" in response.headers.get("transfer-encoding", ""), response.headers

    assert upstream.wait_for_requests(2, timeout=5), f"expected two upstream calls, got {len(upstream.requests)}"
    assert response.status == 200, f"expected 200 with the image that succeeded, got {response.status}: {response.body[:300]!r}"
    data = response.json().get("data") or []
    assert len(data) == 1, f"expected exactly 1 image, got {len(data)}: {data}"
    row = gateway.wait_for_usage("images.generations")[-1]
    assert row["images"] == 1, f"usage_log does not count the image made: {row}"
    assert row["cost_micro_usd"] > 0, f"the image Google made (and billed) was not charged: {row}"


# ---------------------------------------------------------------------------------------------
# 9. A rate limit rests a key for one model only


def test_rate_limit_cools_down_one_model_only(upstream, gateway):
    """One Google key, ATTEMPTS=1. Google rate-limits the flash model (retryDelay 60s) and not the
    pro model: ``nano-banana`` gets 429, and ``nano-banana-pro`` right after still gets its image
    (Google's quotas are per model, so the key must not rest for every model)."""
    upstream.behaviour = hu.by_model(flash=hu.rate_limited("60s"), pro=hu.image())

    flash = gateway.generate("nano-banana")
    assert flash.status == 429, f"expected 429 for the rate-limited model, got {flash.status}: {flash.body[:300]!r}"
    assert assert_openai_error(flash)["code"] == "rate_limit_exceeded"

    pro = gateway.generate("nano-banana-pro")

    families = [r.family for r in upstream.requests]
    assert pro.status == 200, (
        f"nano-banana-pro got {pro.status} after a flash-only rate limit "
        f"(upstream calls by model: {families}): {pro.body[:300]!r}"
    )
    assert families == ["flash", "pro"], families
    assert len(pro.json().get("data") or []) == 1


# ---------------------------------------------------------------------------------------------
# 10. The usage log counts upstream attempts


def test_usage_log_counts_attempts(upstream, start_gateway):
    """ATTEMPTS=3; Google answers 503, 503, then an image: the generation answers 200 and its
    usage_log row has ``attempts`` == 3 (the upstream HTTP calls made). A following generation
    that succeeds at once logs ``attempts`` == 1."""
    gateway = start_gateway(NANOGATE_UPSTREAM_ATTEMPTS="3")
    upstream.behaviour = hu.sequence(hu.unavailable(), hu.unavailable(), hu.image())

    response = gateway.generate()

    assert response.status == 200, f"expected 200 after two 503s, got {response.status}: {response.body[:300]!r}"
    assert len(upstream.requests) == 3, f"expected 3 upstream calls, got {len(upstream.requests)}"
    gateway.wait_for_usage("images.generations")
    columns = gateway.usage_columns()
    assert "attempts" in columns, f"usage_log has no 'attempts' column: {columns}"
    row = gateway.wait_for_usage("images.generations")[-1]
    assert row["attempts"] == 3, f"expected attempts == 3: {row}"

    again = gateway.generate()
    assert again.status == 200, again.body[:300]
    rows = gateway.wait_for_usage("images.generations", count=2)
    assert rows[-1]["attempts"] == 1, f"expected attempts == 1 for a first-try success: {rows[-1]}"
