"""A hostile Gemini upstream for NanoGate's tests: a small threaded HTTP/1.1 server that speaks
Google's ``generateContent`` / ``streamGenerateContent?alt=sse`` wire format when it wants to, and
misbehaves (redirects, stalls, absurd numbers, errors in the middle of a stream) when the test
says so.

It runs in-process on 127.0.0.1 with a port the OS picks. What it does with a request is the
``behaviour`` attribute: a callable that receives an :class:`Exchange` (the request plus helpers
to answer it). The module-level factories (:func:`image`, :func:`redirect`, :func:`stall_after_headers`,
:func:`sequence`, :func:`by_model`, ...) build those callables. Every request is recorded
(method, path, headers, body) and every accepted TCP connection is counted, so a test can also
assert that nobody ever connected (the redirect "catcher").

Stalls wait on an event that :meth:`HostileUpstream.release` (and :meth:`HostileUpstream.stop`)
sets, so a stalled handler ends when the test ends and never keeps the test process alive.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

# ---------------------------------------------------------------------------------------------
# A real (small) PNG


def make_png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (250, 210, 40)) -> bytes:
    """A valid RGB PNG of one colour, built with zlib and struct."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


PNG = make_png()
PNG_B64 = base64.b64encode(PNG).decode("ascii")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Google's figures for one gemini-2.5-flash-image answer.
NORMAL_USAGE: dict[str, Any] = {
    "promptTokenCount": 9,
    "candidatesTokenCount": 1290,
    "totalTokenCount": 1299,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
    "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
}


def image_part() -> dict:
    return {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}


def text_part(text: str) -> dict:
    return {"text": text}


def response(parts: list, finish_reason: Optional[str] = "STOP", usage: Optional[dict] = None) -> dict:
    """A ``GenerateContentResponse`` with one candidate."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "hostile-1"}
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def image_response(usage: Optional[dict] = None, text: str = "Here is your image.") -> dict:
    """A whole, successful image answer."""
    return response([text_part(text), image_part()], "STOP", NORMAL_USAGE if usage is None else usage)


def google_error_body(code: int, status: str, message: str, details: Optional[list] = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


# ---------------------------------------------------------------------------------------------
# Requests and the exchange a behaviour gets


@dataclass
class Recorded:
    """One request the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def streaming(self) -> bool:
        return ":streamGenerateContent" in self.path

    @property
    def family(self) -> str:
        """``flash`` or ``pro``, from the model in the URL path (``other`` if neither)."""
        model = self.path.split("/models/", 1)[-1].split(":", 1)[0]
        if "flash" in model:
            return "flash"
        if "pro" in model:
            return "pro"
        return "other"

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class ClientGone(Exception):
    """The gateway closed the connection while the upstream was writing."""


class Exchange:
    """A request being answered: what a behaviour reads and writes."""

    def __init__(self, handler: "_Handler", request: Recorded, upstream: "HostileUpstream", index: int) -> None:
        self._handler = handler
        self.request = request
        self.upstream = upstream
        #: 0-based position of this request among all requests this upstream received.
        self.index = index
        self._chunked = False

    # -- plain answers ------------------------------------------------------------------------

    def send_json(self, status: int, body: Any, headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(body).encode()
        self.send_raw(status, data, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})})

    def send_raw(self, status: int, data: bytes, headers: Optional[dict[str, str]] = None) -> None:
        h = self._handler
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        self._write(data)

    # -- streamed answers (chunked SSE, as Google sends them) ---------------------------------

    def start_sse(self, status: int = 200) -> None:
        h = self._handler
        h.send_response(status)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        self._chunked = True
        self._flush()

    def sse_event(self, body: Any) -> None:
        self.chunk(b"data: " + json.dumps(body).encode() + b"\r\n\r\n")

    def chunk(self, data: bytes) -> None:
        assert self._chunked, "start_sse() first"
        if data:
            self._write(b"%x\r\n" % len(data) + data + b"\r\n")

    def end_sse(self) -> None:
        self._write(b"0\r\n\r\n")
        self._chunked = False

    # -- misbehaviour -------------------------------------------------------------------------

    def stall(self, seconds: float = 600.0) -> None:
        """Send nothing more until the upstream is released or stopped (or ``seconds`` pass);
        then drop the connection."""
        self.upstream.stopping.wait(seconds)
        self.close()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (less if the upstream is being stopped); False if it is."""
        return not self.upstream.stopping.wait(seconds)

    def close(self) -> None:
        self._handler.close_connection = True

    def _write(self, data: bytes) -> None:
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError) as error:
            raise ClientGone() from error

    def _flush(self) -> None:
        try:
            self._handler.wfile.flush()
        except OSError as error:
            raise ClientGone() from error


Behaviour = Callable[[Exchange], None]


# ---------------------------------------------------------------------------------------------
# Behaviours


def image(usage: Optional[dict] = None, text: str = "Here is your image.") -> Behaviour:
    """A normal image answer: JSON for ``generateContent``; for ``streamGenerateContent`` a text
    event, the image event, then the final event with ``finishReason`` and ``usageMetadata``."""

    def answer(ex: Exchange) -> None:
        final_usage = NORMAL_USAGE if usage is None else usage
        if ex.request.streaming:
            ex.start_sse()
            ex.sse_event(response([text_part(text)], None))
            ex.sse_event(response([image_part()], None))
            ex.sse_event(response([text_part("")], "STOP", final_usage))
            ex.end_sse()
        else:
            ex.send_json(200, image_response(final_usage, text))

    return answer


def redirect(location: str, status: int = 307) -> Behaviour:
    """``307 Temporary Redirect`` (keeps method, body and, in a naive client, the API key header)."""

    def answer(ex: Exchange) -> None:
        ex.send_json(status, {}, {"Location": location})

    return answer


def stall_after_headers(content_length: int = 99, first_bytes: bytes = b"{") -> Behaviour:
    """200 with a ``Content-Length`` larger than what is sent: a few bytes, then silence."""

    def answer(ex: Exchange) -> None:
        h = ex._handler
        h.send_response(200)
        h.send_header("Content-Type", "application/json; charset=UTF-8")
        h.send_header("Content-Length", str(content_length))
        h.end_headers()
        ex._write(first_bytes)
        ex.stall()

    return answer


def sse_stall(text: str = "Let me draw that.") -> Behaviour:
    """A streamed answer that sends its headers and one text event, then nothing."""

    def answer(ex: Exchange) -> None:
        ex.start_sse()
        ex.sse_event(response([text_part(text)], None))
        ex.stall()

    return answer


def google_error(code: int, status: str, message: str, details: Optional[list] = None) -> Behaviour:
    """An HTTP error with Google's ``google.rpc.Status`` body."""

    def answer(ex: Exchange) -> None:
        ex.send_json(code, google_error_body(code, status, message, details))

    return answer


def rate_limited(retry_delay: Any = "27s") -> Behaviour:
    """429 RESOURCE_EXHAUSTED with a ``RetryInfo`` detail carrying ``retry_delay`` verbatim."""
    return google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "Resource has been exhausted (e.g. check quota).",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}],
    )


def unavailable() -> Behaviour:
    return google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def invalid_argument() -> Behaviour:
    return google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")


MIDSTREAM_ERROR = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}


def sse_midstream_error(text: str = "Let me draw that.") -> Behaviour:
    """200 SSE: one text event, then an ``{"error":{...}}`` event, then the stream ends."""

    def answer(ex: Exchange) -> None:
        ex.start_sse()
        ex.sse_event(response([text_part(text)], None))
        ex.sse_event(MIDSTREAM_ERROR)
        ex.end_sse()

    return answer


def sse_image_cut(cut: threading.Event, text: str = "Here is your image.") -> Behaviour:
    """200 SSE: a text event, then an image event whose base64 breaks off after 64 KiB: once
    ``cut`` is set (or after 30 s) the connection closes without the chunked body's end, as a
    reset from Google would leave it."""

    def answer(ex: Exchange) -> None:
        ex.start_sse()
        ex.sse_event(response([text_part(text)], None))
        data = base64.b64encode(make_png(256, 256) + bytes(96 * 1024)).decode()
        ex.chunk(b'data: {"candidates":[{"content":{"role":"model","parts":[{"inlineData":{"mimeType":"image/png","data":"' + data[: 64 * 1024].encode())
        cut.wait(30)
        ex.close()

    return answer


def sse_midstream_error_after_usage(text: str = "Let me draw that.") -> Behaviour:
    """200 SSE: one text event carrying Google's usage so far (as Google's every event does),
    then an ``{"error":{...}}`` event, then the stream ends."""

    def answer(ex: Exchange) -> None:
        ex.start_sse()
        ex.sse_event(response([text_part(text)], None, {"promptTokenCount": 9, "totalTokenCount": 9}))
        ex.sse_event(MIDSTREAM_ERROR)
        ex.end_sse()

    return answer


def make_png_bomb(width: int, height: int) -> bytes:
    """A valid RGBA PNG of zeros: tiny on the wire, ``width * height * 4`` bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + width * 4)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_bytes(png: bytes) -> Behaviour:
    """A normal answer (JSON) whose image is ``png``."""
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode("ascii")}}

    def answer(ex: Exchange) -> None:
        ex.send_json(200, response([part], "STOP", NORMAL_USAGE))

    return answer


def error_body_200() -> Behaviour:
    """HTTP 200 whose JSON body is a Google error, not a response."""

    def answer(ex: Exchange) -> None:
        ex.send_json(200, {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})

    return answer


def split(delay: float = 3.0) -> Behaviour:
    """SSE: the image event first; ``delay`` seconds later the final event (``STOP`` + usage)."""

    def answer(ex: Exchange) -> None:
        ex.start_sse()
        ex.sse_event(response([image_part()], None))
        if not ex.pause(delay):
            ex.close()
            return
        ex.sse_event(response([text_part("Here is your image.")], "STOP", NORMAL_USAGE))
        ex.end_sse()
        ex.close()

    return answer


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th request (counted across all paths, in arrival order) gets the n-th behaviour;
    the last one repeats."""
    if not behaviours:
        raise ValueError("sequence() needs at least one behaviour")
    lock = threading.Lock()
    count = [0]

    def answer(ex: Exchange) -> None:
        with lock:
            position = count[0]
            count[0] += 1
        behaviours[min(position, len(behaviours) - 1)](ex)

    return answer


def by_model(flash: Behaviour, pro: Behaviour) -> Behaviour:
    """Chooses by the model in the URL path: ``flash`` for paths naming a flash model, else ``pro``."""

    def answer(ex: Exchange) -> None:
        (flash if ex.request.family == "flash" else pro)(ex)

    return answer


# ---------------------------------------------------------------------------------------------
# The server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "HostileUpstream"

    def verify_request(self, request, client_address) -> bool:  # called once per accepted connection
        self.owner._connected(client_address)
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        body = self._body()
        record = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        owner = self.server.owner
        index = owner._record(record)
        exchange = Exchange(self, record, owner, index)
        try:
            owner.behaviour(exchange)
        except ClientGone:
            self.close_connection = True
        except Exception as error:  # a bug in a behaviour: make it visible to the test
            owner.errors.append(f"{type(error).__name__}: {error}")
            self.close_connection = True

    do_POST = _serve
    do_GET = _serve


class HostileUpstream:
    """The server. ``behaviour`` may be reassigned at any time; it applies to the next request."""

    def __init__(self, behaviour: Optional[Behaviour] = None) -> None:
        self.behaviour: Behaviour = behaviour or image()
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self._lock = threading.Condition()
        self._requests: list[Recorded] = []
        self._connections = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections ever accepted."""
        with self._lock:
            return self._connections

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        """True once at least ``count`` requests arrived; False if ``timeout`` passes first."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._requests) >= count, timeout)

    def release(self) -> None:
        """End every stall (now and later)."""
        self.stopping.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, record: Recorded) -> int:
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()
            return len(self._requests) - 1

    def _connected(self, address) -> None:
        with self._lock:
            self._connections += 1
            self._lock.notify_all()

    def __enter__(self) -> "HostileUpstream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
