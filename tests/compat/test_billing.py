"""Operators and money, through the real binary: the CLI workflow of the README (a group, a key
with $5 of credit, requests, the balance, the usage CSV), the admin API, and a gateway killed
with SIGKILL mid-request whose reservation is released after a restart."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import CLI_TIMEOUT, _free_port, sdk_client, wait_out_key_cache

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def run_cli(nanogate_bin: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(nanogate_bin), *args, "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )
    wait_out_key_cache(args)
    return result


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def show(nanogate_bin: Path, data_dir: Path, name: str) -> dict:
    return json.loads(ok(run_cli(nanogate_bin, data_dir, "keys", "show", name, "--json")))


def test_operator_workflow(nanogate_bin, private_gateway, tmp_path):
    """The README's workflow, end to end, with the CLI against a running gateway."""
    gateway = private_gateway()
    data = gateway.data_dir
    ok(run_cli(nanogate_bin, data, "groups", "create", "resell", "--multiplier", "2", "--response-format", "b64_json"))
    groups = json.loads(ok(run_cli(nanogate_bin, data, "groups", "list", "--json")))
    assert {"name": "resell", "response_format": "b64_json", "multiplier": 2.0, "models": None, "service_tiers": ["standard", "flex"]} in groups
    assert {g["name"] for g in groups} >= {"default", "gemini", "resell"}

    created = ok(run_cli(nanogate_bin, data, "keys", "create", "--name", "shop", "--group", "resell", "--credit", "5"))
    secret = created.strip().splitlines()[-1]
    assert secret.startswith("sk-ng-")

    client = sdk_client(gateway, secret)
    result = client.images.generate(model="nano-banana", prompt="a banana")
    assert result.data[0].b64_json, "the group answers base64 by default"

    key = show(nanogate_bin, data, "shop")
    assert set(key) >= {"name", "group", "credit_usd", "spent_usd", "reserved_usd", "balance_usd", "expires_at", "models", "rpm", "concurrency", "disabled"}
    assert key["group"] == "resell" and key["credit_usd"] == 5 and key["reserved_usd"] == 0
    # 1290 image tokens at $30/1M plus a few text tokens, ×2 for the group.
    assert 2 * 0.0387 <= key["spent_usd"] < 2 * 0.0388, key
    assert key["balance_usd"] == pytest.approx(5 - key["spent_usd"])

    ok(run_cli(nanogate_bin, data, "keys", "update", "shop", "--add-credit", "1.5"))
    assert show(nanogate_bin, data, "shop")["credit_usd"] == 6.5

    rows = list(csv.DictReader(io.StringIO(ok(run_cli(nanogate_bin, data, "usage", "--key", "shop", "--csv")))))
    assert len(rows) == 1
    assert rows[0]["model"] == "nano-banana" and rows[0]["status"] == "200" and rows[0]["images"] == "1"
    assert rows[0]["upstream_model"] == "gemini-2.5-flash-image" and rows[0]["output_image_tokens"] == "1290"
    assert float(rows[0]["cost_usd"]) == pytest.approx(key["spent_usd"])
    listed = json.loads(ok(run_cli(nanogate_bin, data, "usage", "--key", "shop", "--json")))
    assert set(listed[0]) >= {"request_id", "key", "model", "endpoint", "status", "images", "cost_usd", "error_code", "created_at"}

    prices = json.loads(ok(run_cli(nanogate_bin, data, "prices", "list", "--json")))
    flash = next(p for p in prices if p["model"] == "gemini-2.5-flash-image")
    assert flash["output_image"] == 30 and flash["input_text"] == 0.3

    rotated = ok(run_cli(nanogate_bin, data, "keys", "rotate", "shop")).strip().splitlines()[-1]
    assert rotated != secret and rotated.startswith("sk-ng-")
    price = json.loads(ok(run_cli(nanogate_bin, data, "prices", "set", "gemini-3-pro-image", "--output-image", "100", "--json")))
    assert price["output_image"] == 100 and price["output_text"] == 12 and price["source"] == "override"
    with pytest.raises(openai.AuthenticationError):
        client.images.generate(model="nano-banana", prompt="old secret")
    assert sdk_client(gateway, rotated).images.generate(model="nano-banana", prompt="new").data


def test_no_credit_left_is_insufficient_quota(nanogate_bin, private_gateway):
    gateway = private_gateway()
    secret = ok(run_cli(nanogate_bin, gateway.data_dir, "keys", "create", "--name", "tiny", "--credit", "0.01")).strip().splitlines()[-1]
    with pytest.raises(openai.RateLimitError) as raised:
        sdk_client(gateway, secret).images.generate(model="nano-banana", prompt="p")
    assert raised.value.code == "insufficient_quota"
    assert show(nanogate_bin, gateway.data_dir, "tiny")["spent_usd"] == 0


def admin(gateway, method: str, path: str, body: dict | None = None, token: str | None = ADMIN_TOKEN):
    root = gateway.base_url.removesuffix("/v1")
    request = urllib.request.Request(root + "/admin/v1/" + path, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_admin_api(private_gateway):
    gateway = private_gateway(env={"NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert admin(gateway, "GET", "keys", token=None)[0] == 401
    assert admin(gateway, "GET", "keys", token=gateway.key)[0] == 401, "a user key is no admin token"
    status, body = admin(gateway, "POST", "keys", {"name": "api", "credit_usd": 5, "rpm": 100})
    assert status == 201
    created = json.loads(body)
    assert created["secret"].startswith("sk-ng-") and created["credit_usd"] == 5 and created["rpm"] == 100
    sdk_client(gateway, created["secret"]).images.generate(model="nano-banana", prompt="p")
    status, body = admin(gateway, "GET", "keys/api")
    shown = json.loads(body)
    assert status == 200 and shown["spent_usd"] > 0 and "secret" not in shown or shown.get("secret") is None
    status, body = admin(gateway, "GET", "usage?key=api&format=csv")
    assert status == 200 and body.decode().count("\n") == 2
    status, body = admin(gateway, "POST", "groups", {"name": "vip", "multiplier": 0.5})
    assert status == 201 and json.loads(body)["multiplier"] == 0.5
    assert admin(gateway, "PATCH", "keys/api", {"group": "vip", "credit_usd": None})[0] == 200
    assert json.loads(admin(gateway, "GET", "keys/api")[1])["credit_usd"] is None, "null credit: unlimited"


def test_killed_gateway_releases_its_reservation(nanogate_bin, tmp_path):
    """SIGKILL while a request waits on Google: the hold stays in the database; the restarted
    gateway releases it once its lease (3 s here, 45 s by default) runs out, within 60 s."""
    data = tmp_path / "data"
    port = _free_port()
    env = {**os.environ, "NANOGATE_RESERVATION_LEASE": "3"}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(nanogate_bin), "serve", "--demo", "--port", str(port), "--data-dir", str(data)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if re.match(r"^Demo API key", lines.get(timeout=1)):
                    return proc
            except queue.Empty:
                assert proc.poll() is None, "the gateway exited"
        raise AssertionError("the gateway did not start")

    first = start()
    try:
        secret = ok(run_cli(nanogate_bin, data, "keys", "create", "--name", "held", "--credit", "1")).strip().splitlines()[-1]

        def slow_request():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/images/generations", method="POST",
                data=json.dumps({"model": "nano-banana", "prompt": "p [emulate:slow=60000]"}).encode(),
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            )
            try:
                urllib.request.urlopen(request, timeout=90).read()
            except Exception:
                pass  # the gateway is killed under it

        threading.Thread(target=slow_request, daemon=True).start()
        deadline = time.monotonic() + 30
        while show(nanogate_bin, data, "held")["reserved_usd"] == 0:
            assert time.monotonic() < deadline, "the request never reserved credit"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=15)
        held = show(nanogate_bin, data, "held")
        assert held["reserved_usd"] > 0, "the dead gateway's hold is still in the database"
    finally:
        if first.poll() is None:
            first.kill()

    second = start()
    try:
        deadline = time.monotonic() + 60
        while (key := show(nanogate_bin, data, "held"))["reserved_usd"] != 0:
            assert time.monotonic() < deadline, f"the reservation was not released: {key}"
            time.sleep(0.5)
        assert key["spent_usd"] == 0 and key["balance_usd"] == 1, key
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=15)
        except subprocess.TimeoutExpired:
            second.kill()
