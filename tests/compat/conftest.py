"""Shared fixtures for the OpenAI SDK compatibility suite.

A single ``nanogate serve --demo`` process is started for the whole session
(``fresh_gateway`` starts a private one for tests that leave state behind); it
runs the offline Gemini emulator in-process, so no network is needed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0
CLIENT_TIMEOUT = 180.0
CLI_TIMEOUT = 60.0
KEY_LINE = re.compile(r"^Demo API key \(group \"default\"\):\s*(\S+)\s*$")
RUNNING_LINE = re.compile(r"^NanoGate demo is running at (http://\S+?)[,\s]")


class Gateway(NamedTuple):
    """A running demo gateway: SDK base URL (ending in /v1), demo key, data dir."""

    base_url: str
    key: str
    data_dir: Path


def _nanogate_bin() -> Path:
    """Path of the gateway binary: $NANOGATE_BIN or the debug build in the repo."""
    path = Path(os.environ.get("NANOGATE_BIN") or REPO_ROOT / ".build" / "debug" / "nanogate")
    # The binary may be relinked under us by a concurrent build; wait briefly.
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not path.exists():
        pytest.fail(f"nanogate binary not found at {path} (set NANOGATE_BIN)")
    return path


def _free_port() -> int:
    """Ask the OS for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pump(stream, lines: "queue.Queue[str | None]") -> None:
    """Copy a process's output into a queue line by line; None marks EOF."""
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process, then SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def wait_until_healthy(proc: subprocess.Popen, root: str, output: Callable[[], str]) -> None:
    """Wait until ``root``/health answers ``ok``; fail with the process's output if it exits
    first or does not answer within STARTUP_TIMEOUT."""
    import urllib.request

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"nanogate serve exited with {proc.returncode}:\n{output()[-5000:]}", pytrace=False)
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(root + "/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        if time.monotonic() > deadline:
            pytest.fail(f"/health did not answer ok within {STARTUP_TIMEOUT:.0f}s:\n{output()[-5000:]}", pytrace=False)
        time.sleep(0.2)


@pytest.fixture(scope="session")
def nanogate_bin() -> Path:
    """The nanogate executable under test."""
    return _nanogate_bin()


@contextlib.contextmanager
def _serve_demo(
    nanogate_bin: Path,
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[Gateway]:
    """Run ``nanogate serve --demo`` with ``data_dir`` until the block ends.

    ``env`` is added to this process's environment, ``args`` go after the built-in flags (e.g.
    ``["--config", path]``), and ``port`` defaults to a free one.
    """
    port = port or _free_port()
    stderr_log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    proc = subprocess.Popen(
        [str(nanogate_bin), "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir), *args],
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_log,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()

    seen: list[str] = []

    def startup_failure(reason: str) -> None:
        _stop(proc)
        stderr_log.seek(0)
        pytest.fail(
            f"{reason}\n--- stdout ---\n{''.join(seen)}\n--- stderr ---\n{stderr_log.read()[-5000:]}",
            pytrace=False,
        )

    key = None
    root_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while key is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            startup_failure(f"no demo key printed within {STARTUP_TIMEOUT:.0f}s")
        try:
            line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if line is None:
            proc.wait(timeout=15)
            startup_failure(f"nanogate exited early with status {proc.returncode}")
        seen.append(line)
        if match := RUNNING_LINE.match(line.strip() + " "):
            root_url = match.group(1)
        if match := KEY_LINE.match(line.strip()):
            key = match.group(1)

    try:
        yield Gateway(base_url=f"{root_url.rstrip('/')}/v1", key=key, data_dir=Path(data_dir))
    finally:
        _stop(proc)
        stderr_log.close()


def _sdk_client(gateway: Gateway, api_key: str) -> openai.OpenAI:
    """An SDK client bound to ``gateway``, with no retries."""
    return openai.OpenAI(
        api_key=api_key,
        base_url=gateway.base_url,
        timeout=CLIENT_TIMEOUT,
        max_retries=0,
    )


@contextlib.contextmanager
def _demo_in_temp_dir(
    nanogate_bin: Path,
    tmp_path_factory,
    prefix: str,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[Gateway]:
    """``nanogate serve --demo`` over a fresh data dir, removed afterwards."""
    data_dir = tmp_path_factory.mktemp(prefix)
    try:
        with _serve_demo(nanogate_bin, data_dir, env=env, args=args, port=port) as running:
            yield running
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway(nanogate_bin: Path, tmp_path_factory) -> Iterator[Gateway]:
    """The gateway shared by the session: ``nanogate serve --demo`` with a fresh data dir."""
    with _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-data") as running:
        yield running


@pytest.fixture
def fresh_gateway(nanogate_bin: Path, tmp_path_factory) -> Iterator[Gateway]:
    """A gateway of its own, for tests that leave state behind (e.g. an upstream key cooling
    down after a 429) that must not reach the shared ``gateway``."""
    with _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-fresh") as running:
        yield running


@pytest.fixture
def private_gateway(nanogate_bin: Path, tmp_path_factory) -> Iterator[Callable[..., Gateway]]:
    """Factory for gateways of the test's own, started with extra environment or flags:
    ``private_gateway(env={"NANOGATE_DEMO_RETIRED": "..."}, args=["--config", path], port=...)``.
    Every one started is stopped (and its data dir removed) when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(
            env: Mapping[str, str] | None = None, args: Sequence[str] = (), port: int | None = None
        ) -> Gateway:
            return stack.enter_context(
                _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-private", env=env, args=args, port=port)
            )

        yield start


def sdk_client(gateway: Gateway, api_key: str | None = None) -> openai.OpenAI:
    """An SDK client bound to ``gateway`` (its demo key unless another is given), no retries."""
    return _sdk_client(gateway, api_key or gateway.key)


@pytest.fixture
def fresh_client(fresh_gateway: Gateway) -> openai.OpenAI:
    """SDK client with the demo key of ``fresh_gateway``."""
    return _sdk_client(fresh_gateway, fresh_gateway.key)


@pytest.fixture(scope="session")
def make_client(gateway: Gateway) -> Callable[[str], openai.OpenAI]:
    """Factory for SDK clients bound to the gateway, with no retries."""

    def make(api_key: str) -> openai.OpenAI:
        return _sdk_client(gateway, api_key)

    return make


@pytest.fixture(scope="session")
def client(make_client, gateway: Gateway) -> openai.OpenAI:
    """SDK client authenticated with the demo key (group "default")."""
    return make_client(gateway.key)


# A running gateway serves keys from a cache: a change made outside it (the CLI, another
# instance) reaches it within one second, guaranteed whether or not its epoch watcher kept up
# (README, "Keys are cached"). A test that changed a key through the CLI waits that second out.
KEY_CACHE_SECONDS = 1.0


def wait_out_key_cache(args) -> None:
    """After ``nanogate keys|groups <change>``: the bound within which every gateway sees it."""
    args = [a for a in args if not a.startswith("-")]
    if len(args) >= 2 and ((args[0] == "keys" and args[1] not in ("list", "show", "create")) or (args[0] == "groups" and args[1] not in ("list", "show"))):
        time.sleep(KEY_CACHE_SECONDS + 0.05)


@pytest.fixture(scope="session")
def cli(nanogate_bin: Path, gateway: Gateway) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``nanogate <args> --data-dir <demo data dir>`` and capture its output."""

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(nanogate_bin), *args, "--data-dir", str(gateway.data_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        wait_out_key_cache(args)
        return result

    return run


@pytest.fixture
def unique_name() -> str:
    """A key name not used by any other test."""
    return f"compat-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# An S3-compatible server on loopback: moto's server mode (``moto[server]`` in requirements.txt)


class S3Server(NamedTuple):
    """A running moto server with one bucket, and the credentials the gateway is given."""

    endpoint: str  # http://127.0.0.1:PORT, path-style
    bucket: str
    region: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen

    def client(self):
        """A boto3 S3 client for the server (SigV4, path-style), for checks from the test side."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def gateway_env(self, prefix: str) -> dict[str, str]:
        """What ``nanogate serve`` needs to keep its images under ``prefix`` in the bucket."""
        return {
            "NANOGATE_IMAGE_STORE": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }


@contextlib.contextmanager
def moto_server(bucket: str = "nanogate-test") -> Iterator[S3Server]:
    """``python -m moto.server`` on a free loopback port, answering, with ``bucket`` created;
    stopped when the block ends. moto keeps everything in memory and (in 5.2.1) does not check
    presigned URLs' signatures or expiry; it does refuse an unsigned GET of a private object."""
    import sys
    import urllib.error
    import urllib.request

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "MOTO_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )

    def output() -> str:
        log.flush()
        log.seek(0)
        return log.read()[-3000:]

    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}:\n{output()}", pytrace=False)
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # an HTTP answer of any status: it is serving
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto server did not answer within 30s:\n{output()}", pytrace=False)
            time.sleep(0.1)
        server = S3Server(endpoint, bucket, "us-east-1", "nanogate-test-access-key", "nanogate-test-secret-key", proc)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session, with the bucket ``nanogate-test``; each user keeps
    its objects under a prefix of its own (``S3Server.gateway_env(prefix)``)."""
    with moto_server() as server:
        yield server
