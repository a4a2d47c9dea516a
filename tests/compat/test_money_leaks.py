"""The security review of 2026-12-06 (issue 21), reproduced against the built gateway: each test
sends the review's request and checks what the key was charged (its spent and the usage log) or
what the gateway had to hold.

- a job's refund counts only its own charges, never rows a client tagged with its id (finding 1);
- a native stream of text is charged like ``:generateContent`` (finding 2);
- a batch's Google work is delivered and charged as submitted: no re-fetch at delivery, no
  per-minute limit on its lines, a cancel after Google finished delivers it, a batch whose
  answer could not be read is refused up front (finding 4);
- a batch, a job or a file is admitted only within the key's means, before any fetch (findings
  3 and 5); a slow webhook never holds another key's job back (finding 5);
- parts, files and their bytes are bounded (finding 6).
"""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from conftest import Gateway
from hostile_upstream import make_png
from test_batches import client_for, jsonl, line
from test_channels import cli, create_key, emulator, ok, serve, write_config
from test_jobs import ASYNC, call, cli_in, new_key, root_of, wait_for_job
from test_observability import http

PNG = make_png(16, 16)


def key_view(gateway: Gateway, name: str) -> dict:
    return json.loads(ok(cli_in(gateway, "keys", "show", name, "--json")))


def usage(gateway: Gateway, name: str) -> list[dict]:
    return json.loads(ok(cli_in(gateway, "usage", "--key", name, "--json")))


def funded_key(gateway: Gateway, name: str, credit: str = "5", group: str = "gemini") -> str:
    secret = new_key(gateway, name, group=group)
    ok(cli_in(gateway, "keys", "update", name, "--credit", credit))
    return secret


def wait_for_batch(client: openai.OpenAI, batch_id: str, timeout: float = 60, statuses: tuple[str, ...] = ()):
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status in ("validating", "in_progress", "finalizing", *statuses):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
    return batch


class ImageHost:
    """Serves a PNG at any path, counting GETs; each path answers only ``answers`` times (then 404)."""

    def __init__(self, answers: int = 1_000_000) -> None:
        host = self
        self.gets: list[str] = []
        self.answers = answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                host.gets.append(self.path)
                if host.gets.count(self.path) > host.answers:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def image_host():
    host = ImageHost()
    yield host
    host.close()


FETCH = {"NANOGATE_ALLOW_PRIVATE_FETCH": "1", "NANOGATE_ALLOW_HTTP_FETCH": "1"}


def edit_line(index: int, urls: list[str], **body) -> dict:
    return {"custom_id": f"edit-{index}", "method": "POST", "url": "/v1/images/edits",
            "body": {"model": "nano-banana", "prompt": f"edit {index}", "images": [{"image_url": url} for url in urls], **body}}


# --- finding 1: a job's refund --------------------------------------------------------------


def test_a_jobs_refund_counts_only_its_own_charges(nanogate_bin: Path, tmp_path: Path):
    """The review's request: five paid generations tagged ``x-request-id: <job id>``, then a
    restart while the job runs. The job is charged once and the five stay charged (they were
    refunded before: six images for the price of one)."""
    with emulator(nanogate_bin, "--accept-key", "refund-google-key") as upstream:
        config = write_config(tmp_path / "nanogate.json", {"channels": [{"name": "gemini", "kind": "gemini", "base_url": upstream, "api_keys": ["refund-google-key"]}]})
        data = tmp_path / "data"
        data.mkdir()
        secret = create_key(nanogate_bin, data, "tagger", group="gemini")
        ok(cli(nanogate_bin, "keys", "update", "tagger", "--credit", "5", "--data-dir", str(data)))
        # The stopped run's hold lapses with its 3 s lease (released uncharged).
        env = {"NANOGATE_CHECK_MODELS": "0", "NANOGATE_JOB_WORKERS": "1", "NANOGATE_RESERVATION_LEASE": "3"}
        with serve(nanogate_bin, config, data, env=env) as first:
            submitted = call("POST", f"{first.root}/v1/images/generations", secret, {"model": "nano-banana", "prompt": "a banana [emulate:slow=4000]"}, ASYNC)
            assert submitted.status == 202, submitted.body[:300]
            job_id = submitted.json()["id"]
            wait_for_job(first.root, secret, job_id, {"running"})
            for index in range(5):
                paid = call("POST", f"{first.root}/v1/images/generations", secret, {"model": "nano-banana", "prompt": f"paid {index}"}, {"x-request-id": job_id})
                assert paid.status == 200, paid.body[:300]
            first.proc.send_signal(signal.SIGTERM)  # a deploy: the job is given back to the queue
            first.proc.wait(timeout=30)
        with serve(nanogate_bin, config, data, env=env) as second:
            done = wait_for_job(second.root, secret, job_id, {"succeeded", "failed"}, timeout=90)
            assert done["status"] == "succeeded" and done["attempts"] == 2, done
            deadline = time.monotonic() + 30
            while json.loads(ok(cli(nanogate_bin, "keys", "show", "tagger", "--json", "--data-dir", str(data))))["reserved_usd"] != 0:
                assert time.monotonic() < deadline, "the stopped run's hold was never released"
                time.sleep(0.3)
        rows = json.loads(ok(cli(nanogate_bin, "usage", "--key", "tagger", "--json", "--data-dir", str(data))))
        assert all(row["cost_usd"] >= 0 for row in rows), f"a refund took back charges that were not the job's: {rows}"
        charged = [row for row in rows if row["cost_usd"] > 0]
        assert len(charged) == 6, f"five tagged generations and the job: {rows}"
        key = json.loads(ok(cli(nanogate_bin, "keys", "show", "tagger", "--json", "--data-dir", str(data))))
        assert abs(key["spent_usd"] - sum(row["cost_usd"] for row in rows)) < 1e-9 and key["reserved_usd"] == 0, key


# --- finding 2: native streams ------------------------------------------------------------


def test_a_native_text_stream_is_charged_like_generate_content(private_gateway):
    """Gemini 3 Pro text and thinking through ``:streamGenerateContent`` with
    ``responseModalities: ["TEXT"]`` used to be free; it costs what ``:generateContent`` does."""
    gateway = private_gateway()
    name = f"native-{time.time_ns()}"
    secret = funded_key(gateway, name)
    root = root_of(gateway)
    body = {"contents": [{"role": "user", "parts": [{"text": "describe a banana"}]}], "generationConfig": {"responseModalities": ["TEXT"]}}
    headers = {"x-goog-api-key": secret}
    streamed = http("POST", f"{root}/v1beta/models/nano-banana-pro:streamGenerateContent?alt=sse", headers, body)
    assert streamed.status == 200 and b"data: " in streamed.body, streamed.body[:300]
    whole = http("POST", f"{root}/v1beta/models/nano-banana-pro:generateContent", headers, body)
    assert whole.status == 200, whole.body[:300]
    rows = usage(gateway, name)
    by_endpoint = {row["endpoint"]: row for row in rows}
    stream_row, whole_row = by_endpoint["gemini.streamGenerateContent"], by_endpoint["gemini.generateContent"]
    assert whole_row["cost_usd"] > 0
    assert stream_row["status"] == 200 and stream_row["cost_usd"] > 0, f"a streamed text answer was free: {stream_row}"
    assert abs(stream_row["cost_usd"] - stream_row["upstream_cost_usd"]) < 1e-9, "charged what Google billed for it"
    view = key_view(gateway, name)
    assert view["reserved_usd"] == 0 and abs(view["spent_usd"] - stream_row["cost_usd"] - whole_row["cost_usd"]) < 1e-9, view


# --- findings 3 and 4: batches ------------------------------------------------------------


def test_a_batch_is_delivered_and_charged_though_its_image_urls_died(private_gateway):
    """Three edit lines, ``n: 4``, whose image URLs answer once: the images are read at
    submission, and delivery (after Google produced the twelve images) never fetches again."""
    host = ImageHost(answers=1)
    try:
        gateway = private_gateway(env={**FETCH, "NANOGATE_BATCH_POLL": "1"})
        name = f"once-{time.time_ns()}"
        client = client_for(gateway, funded_key(gateway, name))
        lines = [edit_line(index, [host.url(f"once-{index}.png")], n=4, response_format="b64_json") for index in range(3)]
        uploaded = client.files.create(file=("edits.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/edits", completion_window="24h")
        assert len(host.gets) == 3, f"each URL read once, at submission: {host.gets}"
        batch = wait_for_batch(client, batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 3, batch
        assert len(host.gets) == 3, "delivery fetched nothing"
        output = [json.loads(entry) for entry in client.files.content(batch.output_file_id).text.splitlines()]
        assert sum(len(entry["response"]["body"]["data"]) for entry in output) == 12
        charged = [row for row in usage(gateway, name) if row["cost_usd"] > 0]
        assert len(charged) == 3 and sum(row["images"] for row in charged) == 12, charged
        view = key_view(gateway, name)
        assert view["reserved_usd"] == 0 and abs(view["spent_usd"] - sum(row["cost_usd"] for row in charged)) < 1e-9
    finally:
        host.close()


def test_batch_lines_ignore_the_keys_per_minute_limit(private_gateway):
    """``rpm: 1`` and four lines: Google produced all four, so all four are delivered and charged
    (three used to be dropped as 429s)."""
    gateway = private_gateway(env={"NANOGATE_BATCH_POLL": "1"})
    name = f"rpm-{time.time_ns()}"
    client = client_for(gateway, funded_key(gateway, name))
    ok(cli_in(gateway, "keys", "update", name, "--rpm", "1"))
    uploaded = client.files.create(file=("four.jsonl", jsonl([line(index, response_format="b64_json") for index in range(4)])), purpose="batch")
    batch = wait_for_batch(client, client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts.completed == 4 and batch.request_counts.failed == 0, batch
    charged = [row for row in usage(gateway, name) if row["cost_usd"] > 0]
    assert len(charged) == 4
    view = key_view(gateway, name)
    assert view["reserved_usd"] == 0 and abs(view["spent_usd"] - sum(row["cost_usd"] for row in charged)) < 1e-9, view


def test_cancelling_a_batch_google_finished_delivers_and_charges_it(private_gateway):
    """Polled only every 10 minutes, so only the cancel can find Google's batch done (the
    emulator finishes it after 2 s): it is delivered and charged, not dropped for free."""
    gateway = private_gateway(env={"NANOGATE_BATCH_POLL": "600"})
    name = f"late-cancel-{time.time_ns()}"
    client = client_for(gateway, funded_key(gateway, name))
    uploaded = client.files.create(file=("two.jsonl", jsonl([line(index, response_format="b64_json") for index in range(2)])), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    time.sleep(3)  # past the emulator's 2 s: Google's work is done (a precondition, not an absence)
    answered = client.batches.cancel(batch.id)
    assert answered.status == "completed" and answered.request_counts.completed == 2, answered
    assert len(client.files.content(answered.output_file_id).text.splitlines()) == 2
    charged = [row for row in usage(gateway, name) if row["cost_usd"] > 0]
    assert len(charged) == 2
    view = key_view(gateway, name)
    assert view["reserved_usd"] == 0 and view["spent_usd"] > 0
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_cancelling_a_batch_charges_what_google_answered_before_it_stopped(private_gateway):
    """Three lines; Google answered two of them before the cancel reached it (the emulator's
    ``[emulate:batch_early]``). The cancel answers ``cancelling``; the batch then ends
    ``cancelled`` with those two delivered and charged, the third failed, the hold released
    (a cancel used to drop Google's finished work for free)."""
    # Google never finishes it by itself (the emulator holds it for 10 minutes): only the cancel ends it.
    gateway = private_gateway(env={"NANOGATE_BATCH_POLL": "1", "NANOGATE_DEMO_BATCH_DELAY_MS": "600000"})
    name = f"part-cancel-{time.time_ns()}"
    client = client_for(gateway, funded_key(gateway, name))
    lines = [line(0, prompt="early one [emulate:batch_early]", response_format="b64_json"),
             line(1, prompt="early two [emulate:batch_early]", response_format="b64_json"),
             line(2, prompt="never ran", response_format="b64_json")]
    uploaded = client.files.create(file=("three.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    answered = client.batches.cancel(batch.id)
    assert answered.status == "cancelling", answered
    batch = wait_for_batch(client, batch.id, statuses=("cancelling",))
    assert batch.status == "cancelled" and batch.request_counts.completed == 2 and batch.request_counts.failed == 1, batch
    output = {entry["custom_id"]: entry for entry in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())}
    assert [output[f"req-{index}"]["response"]["status_code"] for index in range(3)] == [200, 200, 502], output.keys()
    charged = [row for row in usage(gateway, name) if row["cost_usd"] > 0]
    assert len(charged) == 2 and sum(row["images"] for row in charged) == 2, charged
    view = key_view(gateway, name)
    assert view["reserved_usd"] == 0 and abs(view["spent_usd"] - sum(row["cost_usd"] for row in charged)) < 1e-9, view


def test_a_batch_whose_answer_could_not_be_read_is_refused_up_front(private_gateway):
    """Google's inline answer is read up to 256 MiB: six 4K Pro lines could answer more, and
    such a batch used to be lost (polled for ever, never charged); it is refused at once."""
    gateway = private_gateway()
    client = client_for(gateway, gateway.key)
    lines = [line(index, model="nano-banana-pro", size="4k", aspect_ratio="1:1") for index in range(6)]
    uploaded = client.files.create(file=("big.jsonl", jsonl(lines)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    assert refused.value.body["code"] == "batch_too_large", refused.value.body


def test_a_batch_beyond_the_keys_credit_fetches_nothing(private_gateway, image_host):
    """The review's request: 100 edit lines of 6 URLs each from a key that cannot pay. It used to
    make 600 downloads before the credit check; now the check comes first, and a batch naming
    more than 100 URLs is refused before any fetch."""
    gateway = private_gateway(env=FETCH)
    name = f"poor-{time.time_ns()}"
    client = client_for(gateway, funded_key(gateway, name, credit="0.01"))
    urls = lambda index: [image_host.url(f"img-{index}-{k}.png") for k in range(6)]  # noqa: E731
    small = client.files.create(file=("small.jsonl", jsonl([edit_line(index, urls(index)) for index in range(10)])), purpose="batch")
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(input_file_id=small.id, endpoint="/v1/images/edits", completion_window="24h")
    assert refused.value.body["code"] == "insufficient_quota"
    big = client.files.create(file=("big.jsonl", jsonl([edit_line(index, urls(index)) for index in range(100)])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=big.id, endpoint="/v1/images/edits", completion_window="24h")
    assert refused.value.body["code"] == "too_many_images"
    assert image_host.gets == [], f"{len(image_host.gets)} images fetched for batches the key could not pay for"
    assert key_view(gateway, name)["reserved_usd"] == 0


def test_edits_and_chat_fetch_nothing_before_the_key_is_admitted(private_gateway, image_host):
    """A JSON edit and a chat turn name image URLs: a key whose credit cannot cover the request
    gets 429 ``insufficient_quota`` and a key over its per-minute limit gets 429, both before
    any URL is fetched (the credit check used to come after the downloads), and neither is
    charged or left holding credit."""
    gateway = private_gateway(env=FETCH)
    root = root_of(gateway)
    poor_name = f"poor-sync-{time.time_ns()}"
    poor = funded_key(gateway, poor_name, credit="0.000001")
    edit = {"model": "nano-banana", "prompt": "p", "images": [{"image_url": image_host.url(f"edit-{k}.png")} for k in range(3)], "response_format": "b64_json"}
    chat = {"model": "nano-banana", "messages": [{"role": "user", "content": [{"type": "text", "text": "p"}, {"type": "image_url", "image_url": {"url": image_host.url("chat.png")}}]}]}
    for path, body in (("/v1/images/edits", edit), ("/v1/chat/completions", chat)):
        refused = call("POST", f"{root}{path}", poor, body)
        assert refused.status == 429 and refused.json()["error"]["code"] == "insufficient_quota", refused.body[:300]
    assert image_host.gets == [], f"fetched before the credit check: {image_host.gets}"
    view = key_view(gateway, poor_name)
    assert view["reserved_usd"] == 0 and view["spent_usd"] == 0, view

    limited_name = f"rpm-sync-{time.time_ns()}"
    limited = funded_key(gateway, limited_name)
    ok(cli_in(gateway, "keys", "update", limited_name, "--rpm", "1"))
    first = call("POST", f"{root}/v1/images/edits", limited, edit)
    assert first.status == 200, first.body[:300]
    fetched = len(image_host.gets)
    assert fetched == 3
    for path, body in (("/v1/images/edits", edit), ("/v1/chat/completions", chat)):
        refused = call("POST", f"{root}{path}", limited, body)
        assert refused.status == 429 and refused.json()["error"]["code"] != "insufficient_quota", refused.body[:300]
    job = call("POST", f"{root}/v1/images/edits", limited, edit, ASYNC)
    assert job.status == 429, job.body[:300]
    assert len(image_host.gets) == fetched, f"fetched past the per-minute limit: {image_host.gets[fetched:]}"
    charged = [row for row in usage(gateway, limited_name) if row["cost_usd"] > 0]
    view = key_view(gateway, limited_name)
    assert len(charged) == 1 and view["reserved_usd"] == 0 and abs(view["spent_usd"] - charged[0]["cost_usd"]) < 1e-9, (charged, view)


# --- finding 5: jobs ----------------------------------------------------------------------


def test_a_job_is_admitted_only_within_the_keys_means(private_gateway, image_host):
    """A key without credit gets 429 ``insufficient_quota`` at submission (an edit's images are
    not fetched), and a key's queue is capped."""
    gateway = private_gateway(env={**FETCH, "NANOGATE_JOB_WORKERS": "1"})
    root = root_of(gateway)
    poor = funded_key(gateway, f"broke-{time.time_ns()}", credit="0")
    refused = call("POST", f"{root}/v1/images/edits", poor, {"model": "nano-banana", "prompt": "p", "images": [{"image_url": image_host.url("job.png")}]}, ASYNC)
    assert refused.status == 429 and refused.json()["error"]["code"] == "insufficient_quota", refused.body[:300]
    assert image_host.gets == []
    busy = funded_key(gateway, f"busy-{time.time_ns()}")
    submitted = []
    for index in range(16):
        answer = call("POST", f"{root}/v1/images/generations", busy, {"model": "nano-banana", "prompt": f"slow {index} [emulate:slow=2000]"}, ASYNC)
        assert answer.status == 202, answer.body[:300]
        submitted.append(answer.json()["id"])
    full = call("POST", f"{root}/v1/images/generations", busy, {"model": "nano-banana", "prompt": "one too many"}, ASYNC)
    assert full.status == 429 and full.json()["error"]["code"] == "job_queue_full", full.body[:300]
    for job_id in submitted:
        call("DELETE", f"{root}/v1/images/jobs/{job_id}", busy)


def test_one_keys_queue_and_slow_webhook_never_hold_back_another_keys_job(private_gateway):
    """One worker; key A queues four slow jobs whose webhook trickles its answer; key B's one
    job runs second (keys take turns) and is not held behind A's webhook deliveries."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                listener.settimeout(0.5)
                connection, _ = listener.accept()
            except OSError:
                continue

            def hold(connection=connection) -> None:
                with connection:
                    connection.settimeout(1)
                    try:
                        connection.recv(65536)
                        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                        while not stop.is_set():
                            connection.sendall(b" ")
                            stop.wait(2)
                    except OSError:
                        pass

            threading.Thread(target=hold, daemon=True).start()

    threading.Thread(target=trickle, daemon=True).start()
    try:
        gateway = private_gateway(env={**FETCH, "NANOGATE_JOB_WORKERS": "1"})
        root = root_of(gateway)
        hook = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        first = funded_key(gateway, f"first-{time.time_ns()}")
        second = funded_key(gateway, f"second-{time.time_ns()}")
        ids = []
        for index in range(4):
            answer = call("POST", f"{root}/v1/images/generations", first, {"model": "nano-banana", "prompt": f"a{index} [emulate:slow=1500]", "webhook_url": hook}, ASYNC)
            assert answer.status == 202, answer.body[:300]
            ids.append(answer.json()["id"])
        other = call("POST", f"{root}/v1/images/generations", second, {"model": "nano-banana", "prompt": "b"}, ASYNC).json()["id"]
        done = wait_for_job(root, second, other, {"succeeded", "failed"}, timeout=30)
        assert done["status"] == "succeeded", done
        later = [call("GET", f"{root}/v1/images/jobs/{job_id}", first).json() for job_id in ids[2:]]
        assert all(job.get("completed_at") is None or job["completed_at"] >= done["completed_at"] for job in later), \
            f"the second key waited behind the first key's queue: {later}, {done}"
    finally:
        stop.set()
        listener.close()


# --- finding 6: parts, files, bytes -------------------------------------------------------


def test_a_multipart_body_of_many_parts_is_refused(gateway: Gateway):
    """7 million empty parts took ~480 MB; a form has at most 64 parts."""
    boundary = "nanogate-parts"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n" * 5000 + f"--{boundary}--\r\n").encode()
    answer = http("POST", f"{root_of(gateway)}/v1/images/edits", {"Authorization": f"Bearer {gateway.key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}, body)
    assert answer.status == 400 and "64 parts" in answer.json()["error"]["message"], answer.body[:300]


def test_files_are_bounded_per_key_and_described_without_their_content(private_gateway):
    """Uploads count against the key's quota (``NANOGATE_FILE_QUOTA_MB``), a key with nothing to
    spend stores nothing, and a file's description gives its size."""
    gateway = private_gateway(env={"NANOGATE_FILE_QUOTA_MB": "1"})
    name = f"files-{time.time_ns()}"
    client = client_for(gateway, funded_key(gateway, name))
    blob = ("".join(json.dumps(line(index)) + "\n" for index in range(4300))).encode()
    assert 550_000 < len(blob) < 1_000_000, len(blob)
    first = client.files.create(file=("a.jsonl", io.BytesIO(blob)), purpose="batch")
    assert client.files.retrieve(first.id).bytes == len(blob)
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("b.jsonl", io.BytesIO(blob)), purpose="batch")
    assert refused.value.status_code == 413 and refused.value.body["code"] == "file_quota_exceeded"
    broke = client_for(gateway, funded_key(gateway, f"broke-files-{time.time_ns()}", credit="0"))
    with pytest.raises(openai.RateLimitError):
        broke.files.create(file=("c.jsonl", io.BytesIO(b"{}\n")), purpose="batch")


# --- finding 9: the admin API on an address of its own -------------------------------------


def test_the_admin_api_listens_apart_when_asked(private_gateway):
    """``NANOGATE_ADMIN_PORT`` moves the admin API off the public port."""
    import secrets

    from conftest import _free_port

    token = secrets.token_hex(24)
    port = _free_port()
    gateway = private_gateway(env={"NANOGATE_ADMIN_TOKEN": token, "NANOGATE_ADMIN_PORT": str(port)})
    auth = {"Authorization": f"Bearer {token}"}
    assert http("GET", f"{root_of(gateway)}/admin/v1/keys", auth).status == 404, "not on the public port"
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = http("GET", f"http://127.0.0.1:{port}/admin/v1/keys", auth)
            break
        except OSError:
            assert time.monotonic() < deadline, "the admin port never answered"
            time.sleep(0.2)
    assert answer.status == 200 and any(key["name"] == "demo" for key in answer.json()), answer.body[:300]
    assert http("GET", f"http://127.0.0.1:{port}/admin/v1/keys", {"Authorization": "Bearer wrong"}).status == 401
