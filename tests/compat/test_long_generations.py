"""Long generations behind a proxy that cuts silent connections (Cloudflare answers 524 after
~100 s without a byte; here the cut comes after 1.5 s and the emulator takes 4 s).

``Prefer: keep-alive`` makes a non-streamed answer send its status and headers at once and a
space every interval until the JSON, which the official SDK parses as usual; a failure then
arrives as a 200 whose body is OpenAI's error; with an ``Idempotency-Key`` a client that left
gets the stored image on its retry, generated and charged once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import threading
import time
import urllib.parse
from typing import Iterator

import openai
import pytest

from conftest import CLIENT_TIMEOUT, Gateway
from test_observability import http

PNG = b"\x89PNG\r\n\x1a\n"


SLOW = "[emulate:slow=4000]"


class SilenceCuttingProxy:
    """A TCP proxy in front of the gateway that gives up on an answer silent for ``silence``
    seconds: a 524 when nothing was answered yet, else it closes the connection (as Cloudflare
    and other proxies in front of gateways do)."""

    def __init__(self, target_port: int, silence: float):
        self.target_port = target_port
        self.silence = silence
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        answered = False
        last_answer = time.monotonic()
        waiting = False
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 0.1)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                    if not waiting:
                        waiting, last_answer = True, time.monotonic()
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
                    answered, last_answer = True, time.monotonic()
                if waiting and time.monotonic() - last_answer > self.silence:
                    self.cuts += 1
                    if not answered:
                        client.sendall(b"HTTP/1.1 524 A Timeout Occurred\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[SilenceCuttingProxy]:
    port = urllib.parse.urlsplit(gateway.base_url).port
    cutting = SilenceCuttingProxy(port, silence=1.5)
    yield cutting
    cutting.close()


def proxied_client(gateway: Gateway, proxy: SilenceCuttingProxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=gateway.key, base_url=f"http://127.0.0.1:{proxy.port}/v1", timeout=CLIENT_TIMEOUT, max_retries=0,
        default_headers=headers or None,
    )


def test_a_slow_generation_is_cut_by_the_proxy_without_keep_alive(gateway: Gateway, proxy: SilenceCuttingProxy):
    """The failure the preference exists for: the proxy answers 524 while Google still works."""
    with pytest.raises(openai.APIStatusError) as raised:
        proxied_client(gateway, proxy).images.generate(model="nano-banana", prompt=f"a banana {SLOW}", response_format="b64_json")
    assert raised.value.status_code == 524
    assert proxy.cuts == 1


def test_keep_alive_answer_passes_the_proxy_and_parses(gateway: Gateway, proxy: SilenceCuttingProxy):
    """With ``Prefer: keep-alive=1`` the SDK gets its image through the same proxy: the headers
    came at once, spaces kept the connection busy, and the JSON after them parses as usual."""
    client = proxied_client(gateway, proxy, Prefer="keep-alive=1")
    raw = client.images.with_raw_response.generate(model="nano-banana-pro-4k", prompt=f"a banana {SLOW}", size="1:1", response_format="b64_json")
    assert raw.headers.get("preference-applied") == "keep-alive"
    assert raw.http_response.content.startswith(b"   "), raw.http_response.content[:20]
    image = raw.parse()
    png = base64.b64decode(image.data[0].b64_json)
    assert png.startswith(PNG) and int.from_bytes(png[16:20], "big") == 4096, "a 4K image came through"
    assert image.usage is not None and image.usage.output_tokens > 0
    assert proxy.cuts == 0

    chat = client.chat.completions.create(model="nano-banana", messages=[{"role": "user", "content": f"draw a banana {SLOW}"}])
    message = chat.choices[0].message
    assert "![" in (message.content or "") or getattr(message, "images", None), message
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    assert proxy.cuts == 0


def test_a_slow_4k_generation_arrives_through_a_job_behind_the_proxy(gateway: Gateway, proxy: SilenceCuttingProxy):
    """The other way past the proxy: 202 at once, then polls, each answered at once."""
    root = f"http://127.0.0.1:{proxy.port}"
    body = {"model": "nano-banana-pro-4k", "prompt": f"a banana {SLOW}", "size": "1:1", "response_format": "b64_json"}
    submitted = http("POST", f"{root}/v1/images/generations", {"Authorization": f"Bearer {gateway.key}", "Prefer": "respond-async"}, body)
    assert submitted.status == 202, submitted.body[:300]
    job_url = f"{root}/v1/images/jobs/{submitted.json()['id']}"
    deadline = time.monotonic() + 120
    while True:
        job = http("GET", job_url, {"Authorization": f"Bearer {gateway.key}"}).json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    png = base64.b64decode(job["result"]["data"][0]["b64_json"])
    assert png.startswith(PNG) and int.from_bytes(png[16:20], "big") == 4096
    assert proxy.cuts == 0


def test_a_failure_after_keep_alive_is_a_200_with_an_error_body(gateway: Gateway):
    """The documented trade-off: the status was sent before the outcome, so the error is in the body."""
    response = http(
        "POST", f"{gateway.base_url}/images/generations", {"Authorization": f"Bearer {gateway.key}", "Prefer": "keep-alive"},
        {"model": "nano-banana", "prompt": "a banana [emulate:prompt_block]", "response_format": "b64_json"},
    )
    assert response.status == 200 and response.headers["preference-applied"] == "keep-alive"
    error = response.json()["error"]
    assert error["type"] and error["message"] and error["code"], error


def test_without_the_preference_nothing_changes(gateway: Gateway):
    response = http(
        "POST", f"{gateway.base_url}/images/generations", {"Authorization": f"Bearer {gateway.key}"},
        {"model": "nano-banana", "prompt": "a banana [emulate:prompt_block]", "response_format": "b64_json"},
    )
    assert response.status == 400 and "preference-applied" not in response.headers
    assert not response.body.startswith(b" ")


def test_an_idempotent_keep_alive_request_whose_client_left_is_kept_for_its_retry(gateway: Gateway, cli):
    """The client hangs up after the headers; the generation goes on, is stored and charged
    once, and the retry with the same Idempotency-Key receives that very image."""
    key = f"long-{time.time_ns()}"
    fields = {"model": "nano-banana", "prompt": f"a kept banana {SLOW} {key}", "response_format": "b64_json"}
    body = json.dumps(fields).encode()
    port = urllib.parse.urlsplit(gateway.base_url).port
    before = len(json.loads(cli("usage", "--json").stdout))
    with contextlib.closing(socket.create_connection(("127.0.0.1", port))) as connection:
        connection.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {gateway.key}\r\nPrefer: keep-alive=1\r\nIdempotency-Key: {key}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = connection.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
    # Gone before the image: the retry waits while the first run is still in progress.
    deadline = time.monotonic() + 60
    while True:
        retry = http("POST", f"{gateway.base_url}/images/generations", {"Authorization": f"Bearer {gateway.key}", "Idempotency-Key": key}, fields)
        if retry.status != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert retry.status == 200, retry.body[:300]
    assert retry.headers.get("idempotent-replayed") == "true"
    assert base64.b64decode(retry.json()["data"][0]["b64_json"]).startswith(PNG)
    rows = json.loads(cli("usage", "--json").stdout)
    assert len(rows) == before + 1, "generated and charged once"


def test_a_catalog_name_can_answer_with_keep_alive_for_every_client(private_gateway, tmp_path):
    """`keep_alive: 1` on a name in the configuration file: clients that send nothing special
    get the keep-alive answer for it, and pass the proxy; other names are unchanged."""
    config = tmp_path / "nanogate.json"
    config.write_text(json.dumps({"models": [{"name": "patient-banana", "like": "nano-banana", "keep_alive": 1}]}))
    gateway = private_gateway(args=["--config", str(config)])
    port = urllib.parse.urlsplit(gateway.base_url).port
    cutting = SilenceCuttingProxy(port, silence=1.5)
    try:
        client = proxied_client(gateway, cutting)
        raw = client.images.with_raw_response.generate(model="patient-banana", prompt=f"a banana {SLOW}", response_format="b64_json")
        assert raw.headers.get("preference-applied") == "keep-alive"
        assert base64.b64decode(raw.parse().data[0].b64_json).startswith(PNG)
        with pytest.raises(openai.APIStatusError) as raised:
            # A new connection (the proxy judges silence per connection, as a 524 needs nothing answered yet).
            proxied_client(gateway, cutting).images.generate(model="nano-banana", prompt=f"a banana {SLOW}", response_format="b64_json")
        assert raised.value.status_code == 524
    finally:
        cutting.close()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [{"name": "x", "like": "nano-banana", "keep_alive": 600}]}))
    from test_channels import cli
    from conftest import _nanogate_bin

    refused = cli(_nanogate_bin(), "models", "export", "--config", str(bad))
    assert refused.returncode != 0 and "keep_alive" in refused.stderr + refused.stdout
