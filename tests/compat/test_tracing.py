"""OpenTelemetry traces against a small OTLP/HTTP receiver of the test's own, which decodes what
the gateway exports with the official ``opentelemetry-proto`` package: one trace per request, the
caller's ``traceparent`` continued and the answer's naming the trace, children for the
reservation, each upstream attempt and the settlement, GenAI attributes with the image token
buckets and NanoGate's charge, no prompt or key in any attribute, JSON log lines carrying the
trace's ids; and no tracing at all when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is unset.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import secrets
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from test_observability import DEMO_GOOGLE_KEY, create_key, emulator, serve_logged, write_config

PROMPT = "a secret lighthouse at dusk"
WAIT = 30.0
SERVER, CLIENT = Span.SpanKind.SPAN_KIND_SERVER, Span.SpanKind.SPAN_KIND_CLIENT


class Receiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf): every span it was sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, Span]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/traces", self.path
                assert self.headers.get_content_type() == "application/x-protobuf", self.headers
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            receiver.spans += [(resource, span) for span in scope.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: bytes, until) -> list[Span]:
        """The spans of one trace once ``until(spans)`` holds (bounded wait)."""
        deadline = time.monotonic() + WAIT
        while True:
            with self.lock:
                spans = [span for _, span in self.spans if span.trace_id == trace_id]
            if until(spans):
                return spans
            assert time.monotonic() < deadline, f"trace {trace_id.hex()} incomplete: {[s.name for s in spans]}"
            time.sleep(0.1)


def value_of(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(span: Span) -> dict:
    return {a.key: value_of(a.value) for a in span.attributes}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


@contextlib.contextmanager
def traced_gateway(nanogate_bin, tmp_path, receiver: Receiver | None) -> Iterator[tuple[str, str, object]]:
    """A gateway on the emulator with JSON logs, exporting to ``receiver`` (none: OTEL unset)."""
    with emulator(nanogate_bin, "--accept-key", DEMO_GOOGLE_KEY) as upstream:
        config = write_config(tmp_path / "conf" / "nanogate.json", {
            "channels": [{"name": "gemini", "kind": "gemini", "base_url": upstream, "api_keys": [DEMO_GOOGLE_KEY]}],
        })
        env = {"NANOGATE_LOG_FORMAT": "json"}
        if receiver is not None:
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "nanogate-test"})
        with serve_logged(nanogate_bin, config, tmp_path / "data", env) as served:
            yield served.root, create_key(nanogate_bin, served.data_dir, "tracer"), served


def post(url: str, key: str, body: dict, headers: dict | None = None):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return answer.headers, answer.read()


def test_a_request_is_one_trace_continuing_the_callers(nanogate_bin, tmp_path, receiver):
    """The caller's trace id is continued and named back; the server span carries the GenAI
    attributes and the charge; reservation, upstream attempt and settlement are its children;
    no attribute holds the prompt, the key or base64; the request's log line names the trace."""
    caller_trace, caller_span = secrets.token_bytes(16), secrets.token_bytes(8)
    with traced_gateway(nanogate_bin, tmp_path, receiver) as (root, key, served):
        headers, body = post(
            f"{root}/v1/images/generations", key, {"model": "nano-banana", "prompt": PROMPT, "response_format": "b64_json"},
            headers={"traceparent": f"00-{caller_trace.hex()}-{caller_span.hex()}-01", "x-request-id": "trace-test-1"},
        )
        answer = json.loads(body)
        names_back = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", headers["traceparent"])
        assert names_back and names_back[1] == caller_trace.hex(), headers["traceparent"]

        spans = receiver.trace(caller_trace, lambda found: {"nanogate.settle", "nanogate.reserve"} <= {s.name for s in found} and any(s.kind == SERVER for s in found))
    stdout = served.stdout.read_text()

    (server,) = [span for span in spans if span.kind == SERVER]
    assert server.parent_span_id == caller_span and server.span_id.hex() == names_back[2]
    assert server.name == "POST /v1/images/generations"
    found = attributes(server)
    assert found["gen_ai.system"] == "gcp.gemini" and found["gen_ai.operation.name"] == "generate_content"
    assert found["gen_ai.request.model"] == "nano-banana" and found["gen_ai.response.model"] == "gemini-2.5-flash-image"
    assert found["gen_ai.usage.input_tokens"] == answer["usage"]["input_tokens"]
    assert found["gen_ai.usage.output_tokens"] == answer["usage"]["output_tokens"]
    assert found["gen_ai.usage.output_image_tokens"] == 1290 and found["gen_ai.usage.image_count"] == 1
    assert found["nanogate.cost_usd"] == pytest.approx(answer["usage"]["cost"])
    assert found["http.response.status_code"] == 200 and found["http.route"] == "/v1/images/generations"

    children = {span.name: span for span in spans if span.parent_span_id == server.span_id}
    assert {"nanogate.reserve", "nanogate.settle", "generate_content gemini-2.5-flash-image"} <= set(children), list(children)
    attempt = attributes(children["generate_content gemini-2.5-flash-image"])
    assert children["generate_content gemini-2.5-flash-image"].kind == CLIENT
    assert attempt["nanogate.channel"] == "gemini" and attempt["nanogate.upstream_key"] == 1 and attempt["http.response.status_code"] == 200
    assert all(span.start_time_unix_nano >= server.start_time_unix_nano and span.end_time_unix_nano <= server.end_time_unix_nano for span in children.values())

    texts = [str(value) for span in spans for value in attributes(span).values()]
    assert not any(PROMPT in text or key in text or DEMO_GOOGLE_KEY in text or len(text) > 500 for text in texts), texts
    assert receiver.spans[0][0]["service.name"] == "nanogate-test"

    logged = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    (request_line,) = [line for line in logged if line.get("message") == "request" and line.get("request_id") == "trace-test-1"]
    assert request_line.get("trace_id") == caller_trace.hex() and request_line.get("span_id") == server.span_id.hex(), request_line


def test_a_stream_is_traced_to_its_end(nanogate_bin, tmp_path, receiver):
    """Without a caller's trace a new one begins (named in the answer); a streamed chat's span
    lasts to the stream's end and carries the usage settled while streaming."""
    with traced_gateway(nanogate_bin, tmp_path, receiver) as (root, key, _):
        headers, body = post(
            f"{root}/v1/chat/completions", key,
            {"model": "nano-banana", "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
        )
        trace_id = bytes.fromhex(headers["traceparent"].split("-")[1])
        assert b"[DONE]" in body
        spans = receiver.trace(trace_id, lambda found: any(s.kind == SERVER for s in found) and any(s.name == "nanogate.settle" for s in found))

    (server,) = [span for span in spans if span.kind == SERVER]
    assert server.parent_span_id == b""
    found = attributes(server)
    assert found["gen_ai.usage.image_count"] == 1 and found["gen_ai.usage.output_image_tokens"] == 1290
    settle = next(span for span in spans if span.name == "nanogate.settle")
    assert settle.end_time_unix_nano <= server.end_time_unix_nano


def test_nothing_is_traced_when_the_endpoint_is_unset(nanogate_bin, tmp_path):
    """No OTEL_EXPORTER_OTLP_ENDPOINT: no traceparent in answers, no trace ids in the logs."""
    with traced_gateway(nanogate_bin, tmp_path, None) as (root, key, served):
        headers, _ = post(
            f"{root}/v1/images/generations", key, {"model": "nano-banana", "prompt": PROMPT, "response_format": "b64_json"},
            headers={"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"},
        )
        assert "traceparent" not in headers
    assert "trace_id" not in served.stdout.read_text()
