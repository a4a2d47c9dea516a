"""Background image jobs (``Prefer: respond-async``): 202 at once, the answer at the job's URL,
visible to its key only, cancellable while queued, surviving a gateway killed while it runs
(charged once), and a signed webhook when it ends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import Gateway
from test_channels import cli, create_key, emulator, ok, serve, write_config
from test_observability import Answer, bearer, http, root_of

PNG = b"\x89PNG\r\n\x1a\n"
ASYNC = {"Prefer": "respond-async"}


def call(method: str, url: str, key: str, body: dict | None = None, headers: dict[str, str] | None = None) -> Answer:
    return http(method, url, {**bearer(key), **(headers or {})}, body)


def wait_for_job(root: str, key: str, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = call("GET", f"{root}/v1/images/jobs/{job_id}", key).json()
        if job.get("status") in statuses:
            return job
        assert time.monotonic() < deadline, f"job stayed {job.get('status')}: {job}"
        time.sleep(0.2)


def new_key(gateway: Gateway, name: str, group: str = "gemini") -> str:
    created = json.loads(ok(cli_in(gateway, "keys", "create", "--name", name, "--group", group, "--json")))
    return created["secret"]


def cli_in(gateway: Gateway, *args: str):
    from conftest import _nanogate_bin  # the binary under test

    return cli(_nanogate_bin(), *args, "--data-dir", str(gateway.data_dir))


def test_a_job_answers_202_and_its_result_is_read_by_its_key_only(gateway: Gateway):
    root = root_of(gateway)
    key = new_key(gateway, f"jobs-{time.time_ns()}")
    other = new_key(gateway, f"jobs-other-{time.time_ns()}")
    submitted = call("POST", f"{root}/v1/images/generations", key, {"model": "nano-banana", "prompt": "a queued banana"}, ASYNC)
    assert submitted.status == 202, submitted.body[:300]
    job = submitted.json()
    assert job["object"] == "image.job" and job["id"].startswith("imgjob_") and job["status"] in ("queued", "running")
    assert submitted.headers["location"] == f"/v1/images/jobs/{job['id']}"
    assert "webhook_secret" not in job

    done = wait_for_job(root, key, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    image = done["result"]["data"][0]
    assert base64.b64decode(image["b64_json"]).startswith(PNG), "the gemini group answers base64, as inline"
    assert done["result"]["usage"]["output_tokens"] > 0 and done["attempts"] == 1
    # The answer is in the image store; the database names it (no base64 image in its files).
    from test_batches import assert_not_in_database
    assert_not_in_database(gateway, [image["b64_json"]])

    listed = call("GET", f"{root}/v1/images/jobs", key).json()
    assert [entry["id"] for entry in listed["data"]][:1] == [job["id"]] and "result" not in listed["data"][0]
    hidden = call("GET", f"{root}/v1/images/jobs/{job['id']}", other)
    assert hidden.status == 404 and hidden.json()["error"]["code"] == "job_not_found"
    assert call("GET", f"{root}/v1/images/jobs", other).json()["data"] == []
    assert call("DELETE", f"{root}/v1/images/jobs/{job['id']}", other).status == 404


def test_async_in_the_body_and_bad_input_refused_at_once(gateway: Gateway):
    root = root_of(gateway)
    flagged = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "p", "async": True})
    assert flagged.status == 202 and flagged.json()["object"] == "image.job"
    unknown = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "no-such-model", "prompt": "p"}, ASYNC)
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "model_not_found", "validated before it is queued"
    streamed = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "p", "stream": True}, ASYNC)
    assert streamed.status == 400 and streamed.json()["error"]["param"] == "stream"
    default_group = wait_for_job(root, gateway.key, flagged.json()["id"], {"succeeded", "failed"})
    assert default_group["result"]["data"][0]["url"].startswith("http"), "the default group answers with a URL, as inline"


def test_only_a_queued_job_is_cancelled(private_gateway):
    gateway = private_gateway(env={"NANOGATE_JOB_WORKERS": "1"})
    root = root_of(gateway)
    first = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "slow [emulate:slow=3000]"}, ASYNC).json()
    wait_for_job(root, gateway.key, first["id"], {"running"})
    second = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "waits"}, ASYNC).json()
    cancelled = call("DELETE", f"{root}/v1/images/jobs/{second['id']}", gateway.key)
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
    running = call("DELETE", f"{root}/v1/images/jobs/{first['id']}", gateway.key)
    assert running.status == 409 and running.json()["error"]["code"] == "job_not_cancellable"
    assert wait_for_job(root, gateway.key, first["id"], {"succeeded", "failed"})["status"] == "succeeded"
    # A later job of the same key runs after the cancelled one would have (one worker, a key's
    # jobs oldest first): once it has finished, the cancelled one has had its chance to run.
    third = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "after"}, ASYNC).json()
    assert wait_for_job(root, gateway.key, third["id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert call("GET", f"{root}/v1/images/jobs/{second['id']}", gateway.key).json()["status"] == "cancelled", "never run"


class Hook(BaseHTTPRequestHandler):
    deliveries: list[tuple[dict[str, str], bytes]] = []
    refuse_first = True

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = 500 if Hook.refuse_first and len(Hook.deliveries) == 1 else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_is_signed_and_retried(private_gateway):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.deliveries = []
    try:
        gateway = private_gateway(env={"NANOGATE_ALLOW_PRIVATE_FETCH": "1", "NANOGATE_ALLOW_HTTP_FETCH": "1"})
        root = root_of(gateway)
        hook = f"http://127.0.0.1:{server.server_address[1]}/hooks/nanogate"
        submitted = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "p", "webhook_url": hook}, ASYNC)
        assert submitted.status == 202, submitted.body[:300]
        secret = submitted.json()["webhook_secret"]
        assert secret.startswith("whsec_")
        deadline = time.monotonic() + 30
        while len(Hook.deliveries) < 2:
            assert time.monotonic() < deadline, f"{len(Hook.deliveries)} deliveries"
            time.sleep(0.2)
        headers, body = Hook.deliveries[-1]
        assert len(Hook.deliveries) == 2, "refused once (500), delivered on the retry"
        timestamp, signature = dict(part.split("=", 1) for part in headers["nanogate-signature"].split(",")).values()
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected), "the signature verifies with the job's secret"
        assert abs(int(timestamp) - time.time()) < 60
        delivered = json.loads(body)
        assert headers["nanogate-webhook-id"] == delivered["id"] == submitted.json()["id"]
        assert delivered["status"] == "succeeded" and delivered["result"]["data"], delivered.keys()
        assert "webhook_secret" not in delivered
        forged = hmac.new(b"whsec_other", f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(signature, forged)
    finally:
        server.shutdown()

    private = call("POST", f"{root}/v1/images/generations", gateway.key, {"model": "nano-banana", "prompt": "p", "webhook_url": "ftp://x/y"}, ASYNC)
    assert private.status == 400 and private.json()["error"]["code"] == "invalid_webhook_url"


def test_a_job_survives_its_gateway_being_killed_and_is_charged_once(nanogate_bin: Path, tmp_path: Path):
    """SIGKILL while the job waits on Google; the restarted gateway takes it over once its lease
    ran out, runs it to the end, and the key is charged for one image."""
    with emulator(nanogate_bin, "--accept-key", "jobs-google-key") as upstream:
        config = write_config(tmp_path / "nanogate.json", {"channels": [{"name": "gemini", "kind": "gemini", "base_url": upstream, "api_keys": ["jobs-google-key"]}]})
        data = tmp_path / "data"
        data.mkdir()
        secret = create_key(nanogate_bin, data, "survivor", group="gemini")
        ok(cli(nanogate_bin, "keys", "update", "survivor", "--credit", "5", "--data-dir", str(data)))
        env = {"NANOGATE_RESERVATION_LEASE": "3", "NANOGATE_CHECK_MODELS": "0"}
        with serve(nanogate_bin, config, data, env=env) as first:
            submitted = call("POST", f"{first.root}/v1/images/generations", secret, {"model": "nano-banana", "prompt": "a banana [emulate:slow=4000]"}, ASYNC)
            assert submitted.status == 202
            job_id = submitted.json()["id"]
            wait_for_job(first.root, secret, job_id, {"running"})
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=15)
        with serve(nanogate_bin, config, data, env=env) as second:
            done = wait_for_job(second.root, secret, job_id, {"succeeded", "failed"}, timeout=90)
            assert done["status"] == "succeeded" and done["attempts"] == 2, done
            assert base64.b64decode(done["result"]["data"][0]["b64_json"]).startswith(PNG)
            usage = json.loads(ok(cli(nanogate_bin, "usage", "--key", "survivor", "--json", "--data-dir", str(data))))
            charged = [row for row in usage if row.get("cost_usd", 0) != 0]
            assert len(charged) == 1, usage
            key = json.loads(ok(cli(nanogate_bin, "keys", "show", "survivor", "--json", "--data-dir", str(data))))
            assert key["reserved_usd"] == 0 and abs(key["spent_usd"] - charged[0]["cost_usd"]) < 1e-9, (key, charged)
