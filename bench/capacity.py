#!/usr/bin/env python3
"""NanoGate capacity benchmark: thousands of slow generations in flight at once (standard library only).

Starts, on 127.0.0.1:
  * the offline Gemini emulator with a long generation time (`gemini-emulator --latency-ms 20000`
    by default), standing for Google's tens of seconds per image;
  * NanoGate in front of it (`nanogate serve`, its own data dir, one key made with `nanogate keys create`);
then opens N client connections at once (asyncio streams, one HTTP/1.1 request each with
`Connection: close`, read to EOF):

    POST /v1/images/generations {"model": "nano-banana", "prompt": "load", "response_format": "b64_json"}

and checks every answer: 200 with a base64 PNG (its header decoded and its length checked against
Content-Length; the first few answers are parsed whole and the image decoded), or an error with
OpenAI's error JSON. It records the gateway's peak RSS (VmHWM, /proc/PID/status, and VmRSS
sampled every 0.25 s), the clients in flight at once, and the wall time.

By default (scenario 1) the gateway runs with its defaults: each channel lets max_concurrency
(1024) calls run at once and queues up to NANOGATE_UPSTREAM_QUEUE (4096) more, so all N should
succeed, in about two emulator latencies for N up to 2048. `--max-concurrency C --queue Q` gives
the channel those limits through a configuration file instead (scenario 2 of
tests/compat/test_capacity.py), where the calls beyond C + Q get 503 `upstream_queue_full`.

Writes a markdown report (`--output`) and the raw figures as JSON (`--results`), and prints a
summary. Every process it starts is stopped before it exits, by its own pid.

    python3 bench/capacity.py --clients 2000 --latency-ms 20000 --output bench/results/CAPACITY.md

Needs an open-files limit above 2 × clients + a few hundred (it raises its soft limit to the hard one,
and the gateway started from it inherits that).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
GOOGLE_KEY = "capacity-google-key"  # the only key the emulator accepts; NanoGate holds it
PNG_B64_PREFIX = "iVBORw0KGgo"  # base64 of the PNG signature
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PREFIX_BYTES = 64 * 1024  # body bytes kept of each 200 answer (the rest is counted, not kept)
ERROR_BODY_LIMIT = 1024 * 1024  # body bytes kept of any other answer
MIB = 1024 * 1024


class CapacityError(Exception):
    """A setup failure that stops the run."""


def log(message: str) -> None:
    print(f"[capacity {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def raise_open_files_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_kib(pid: int, name: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), in KiB."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    match = re.search(rf"^{name}:\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state) on; the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / HZ


class Service:
    """A child process with its output in a log file, stopped by its own pid."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self._log.close()


def wait_until(predicate, timeout: float, what: str, service: Service) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise CapacityError(f"{service.name} exited with status {service.process.returncode} while {what}:\n{service.log_tail()}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise CapacityError(f"timed out after {timeout:.0f}s {what}:\n{service.log_tail()}")


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def binary(bin_dir: Path, name: str) -> Path:
    """A built executable; waits a little, as a concurrent build may be relinking it."""
    path = bin_dir / name
    deadline = time.monotonic() + 60
    while not (path.exists() and os.access(path, os.X_OK)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not path.exists():
        raise CapacityError(f"{path} is missing (build it: swift build, or -c release)")
    return path


def emulator_help(path: Path) -> str:
    try:
        return subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


@dataclass
class Stack:
    """The emulator and the gateway, running."""

    emulator: Service
    gateway: Service
    host: str
    port: int
    secret: str
    data_dir: Path
    emulator_port: int


def channel_config(emulator_port: int, max_concurrency: int) -> str:
    """A configuration file with one gemini channel at the emulator (YAML)."""
    return (
        "channels:\n"
        "  - name: g\n"
        "    kind: gemini\n"
        f"    base_url: http://127.0.0.1:{emulator_port}\n"
        f"    api_keys: [{GOOGLE_KEY}]\n"
        f"    max_concurrency: {max_concurrency}\n"
    )


@contextlib.contextmanager
def running_stack(
    bin_dir: Path,
    run_dir: Path,
    latency_ms: int,
    queue: int | None = None,
    max_concurrency: int | None = None,
    log_level: str = "warning",
    extra_env: dict[str, str] | None = None,
    emulator: Path | None = None,
) -> Iterator[Stack]:
    """Starts the emulator and the gateway (defaults, or one configured channel when
    ``max_concurrency`` is given, and NANOGATE_UPSTREAM_QUEUE when ``queue`` is); stops both after."""
    nanogate = binary(bin_dir, "nanogate")
    emulator_bin = emulator or binary(bin_dir, "gemini-emulator")
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    services: list[Service] = []
    try:
        emulator_port = free_port()
        argv = [str(emulator_bin), "--port", str(emulator_port), "--latency-ms", str(latency_ms)]
        if "--accept-key" in emulator_help(emulator_bin):  # older emulators accept any key
            argv += ["--accept-key", GOOGLE_KEY]
        upstream = Service("gemini-emulator", argv, run_dir / "emulator.log")
        services.append(upstream)
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{emulator_port}/v1beta/models", {"x-goog-api-key": GOOGLE_KEY}) == 200,
            60, "waiting for the emulator", upstream,
        )

        created = subprocess.run(
            [str(nanogate), "keys", "create", "--name", "load", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        if created.returncode != 0:
            raise CapacityError(f"nanogate keys create failed ({created.returncode}):\n{created.stdout}\n{created.stderr}")
        secret = created.stdout.strip().splitlines()[-1]

        env = {
            **os.environ,
            "NANOGATE_CHECK_MODELS": "0",
            "LOG_LEVEL": log_level,
        }
        for name in ("GEMINI_API_KEY", "NANOGATE_GEMINI_BASE_URL", "NANOGATE_UPSTREAM_QUEUE", "NANOGATE_CONFIG"):
            env.pop(name, None)
        args = ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1"]
        if max_concurrency is None:
            env["GEMINI_API_KEY"] = GOOGLE_KEY
            env["NANOGATE_GEMINI_BASE_URL"] = f"http://127.0.0.1:{emulator_port}"
        else:
            config = run_dir / "nanogate.yaml"
            config.write_text(channel_config(emulator_port, max_concurrency))
            args += ["--config", str(config)]
        if queue is not None:
            env["NANOGATE_UPSTREAM_QUEUE"] = str(queue)
        env.update(extra_env or {})
        port = free_port()
        gateway = Service("nanogate", [str(nanogate), *args, "--port", str(port)], run_dir / "nanogate.log", env=env)
        services.append(gateway)
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/health") == 200, 60, "waiting for the gateway", gateway)
        yield Stack(upstream, gateway, "127.0.0.1", port, secret, data_dir, emulator_port)
    finally:
        for service in reversed(services):
            service.stop()


# --------------------------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------------------------


class Dechunker:
    """Incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.remaining = 0  # bytes left in the current chunk
        self.need_crlf = False
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while not self.done:
            if self.remaining:
                if not self.buffer:
                    break
                take = bytes(self.buffer[: self.remaining])
                del self.buffer[: len(take)]
                self.remaining -= len(take)
                out.append(take)
                if self.remaining == 0:
                    self.need_crlf = True
                continue
            if self.need_crlf:
                if len(self.buffer) < 2:
                    break
                del self.buffer[:2]
                self.need_crlf = False
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(self.buffer[:end]).split(b";")[0].strip() or b"0", 16)
            del self.buffer[: end + 2]
            if size == 0:
                self.done = True
            else:
                self.remaining = size
        return out


@dataclass
class Outcome:
    """What one client saw."""

    index: int
    status: int | None = None  # None: no HTTP answer (connection refused, reset, timed out)
    ok: bool = False  # 200 with a valid base64 PNG
    error: str | None = None  # why it is not ok (client side), or the gateway's error message
    code: str | None = None  # the gateway's error code (OpenAI error JSON)
    retry_after: str | None = None
    body_bytes: int = 0
    width: int | None = None
    height: int | None = None
    fully_checked: bool = False
    seconds: float = 0.0


@dataclass
class Load:
    """Counters shared by all clients."""

    in_flight: int = 0
    peak_in_flight: int = 0
    sent: int = 0
    first_answer_at: float | None = None
    all_sent_at: float | None = None


def check_png_b64(prefix: str) -> tuple[int, int]:
    """Width and height from the first characters of a base64 PNG (signature + IHDR)."""
    if not prefix.startswith(PNG_B64_PREFIX):
        raise ValueError(f"b64_json does not start like a PNG: {prefix[:16]!r}")
    head = base64.b64decode(prefix[:32])  # 24 bytes: signature, IHDR length and type, width, height
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError("b64_json is not a PNG with an IHDR chunk")
    return struct.unpack(">II", head[16:24])


def judge(outcome: Outcome, headers: dict[str, str], prefix: bytes, tail: bytes, full: bytes | None) -> None:
    """Fills ``outcome`` from an answer: ``prefix``/``tail`` of the body, ``full`` when it was kept."""
    outcome.retry_after = headers.get("retry-after")
    length = headers.get("content-length")
    if length is not None and int(length) != outcome.body_bytes:
        outcome.error = f"body of {outcome.body_bytes} bytes, Content-Length {length}"
        return
    if outcome.status != 200:
        try:
            error = json.loads(full if full is not None else prefix)["error"]
            outcome.code = error.get("code")
            outcome.error = error.get("message")
        except (ValueError, KeyError, TypeError) as problem:
            outcome.error = f"not OpenAI error JSON ({problem}): {(full or prefix)[:200]!r}"
        return
    match = re.search(rb'"b64_json"\s*:\s*"([A-Za-z0-9+/]{32})', prefix)
    if not match:
        outcome.error = f"no b64_json near the start of the answer: {prefix[:200]!r}"
        return
    try:
        outcome.width, outcome.height = check_png_b64(match.group(1).decode())
        if not tail.rstrip().endswith(b"}"):
            raise ValueError(f"the answer does not end like JSON: {tail[-40:]!r}")
        if full is not None:
            answer = json.loads(full)
            image = base64.b64decode(answer["data"][0]["b64_json"], validate=True)
            if not image.startswith(PNG_MAGIC) or len(image) < 1000:
                raise ValueError("data[0].b64_json does not decode to a PNG")
            outcome.fully_checked = True
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as problem:
        outcome.error = str(problem)
        return
    outcome.ok = True


async def one_client(index: int, host: str, port: int, request: bytes, load: Load, keep_full: bool, timeout: float, started: float) -> Outcome:
    outcome = Outcome(index)
    begin = time.monotonic()
    writer = None
    in_flight = False
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            load.in_flight += 1
            load.sent += 1
            in_flight = True
            load.peak_in_flight = max(load.peak_in_flight, load.in_flight)
            head = bytearray()
            while (end := head.find(b"\r\n\r\n")) < 0:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError(f"connection closed before the response head ({len(head)} bytes)")
                head += data
                if len(head) > 65536:
                    raise ConnectionError("response head over 64 KiB")
            if load.first_answer_at is None:
                load.first_answer_at = time.monotonic() - started
            lines = bytes(head[:end]).decode("latin-1").split("\r\n")
            outcome.status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            dechunker = Dechunker() if chunked else None
            keep_all = keep_full or outcome.status != 200
            prefix = bytearray()
            tail = b""
            full = bytearray() if keep_all else None

            def take(piece: bytes) -> None:
                nonlocal tail
                outcome.body_bytes += len(piece)
                if len(prefix) < PREFIX_BYTES:
                    prefix.extend(piece[: PREFIX_BYTES - len(prefix)])
                tail = (tail + piece[-64:])[-64:]
                if full is not None and (keep_full or len(full) < ERROR_BODY_LIMIT):
                    full.extend(piece)

            pending = bytes(head[end + 4:])
            while True:
                if pending:
                    for piece in dechunker.feed(pending) if dechunker else [pending]:
                        take(piece)
                if dechunker and dechunker.done:
                    break
                pending = await reader.read(262144)
                if not pending:
                    break
            if chunked:
                headers.pop("content-length", None)
                if not dechunker.done:
                    raise ConnectionError("chunked body ended before its last chunk")
            judge(outcome, headers, bytes(prefix), tail, None if full is None else bytes(full))
    except TimeoutError:
        outcome.error = f"no complete answer within {timeout:.0f}s"
    except (OSError, ConnectionError, ValueError, IndexError) as problem:
        outcome.error = f"{type(problem).__name__}: {problem}"
    finally:
        if in_flight:
            load.in_flight -= 1
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    outcome.seconds = time.monotonic() - begin
    return outcome


async def run_clients(
    host: str, port: int, secret: str, clients: int, timeout: float, full_checks: int = 3, model: str = "nano-banana", size: str | None = None
) -> tuple[list[Outcome], Load, float]:
    """Opens ``clients`` connections at once, one request each; returns the outcomes, the shared
    counters and the wall time. The first ``full_checks`` answers are parsed whole."""
    body = json.dumps({"model": model, "prompt": "load", "response_format": "b64_json", **({"size": size} if size else {})}).encode()
    request = (
        f"POST /v1/images/generations HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    load = Load()
    started = time.monotonic()
    tasks = [
        asyncio.create_task(one_client(index, host, port, request, load, index < full_checks, timeout, started))
        for index in range(clients)
    ]

    async def note_all_sent() -> None:
        while load.sent < clients and not all(task.done() for task in tasks):
            await asyncio.sleep(0.05)
        load.all_sent_at = time.monotonic() - started

    watcher = asyncio.create_task(note_all_sent())
    outcomes = await asyncio.gather(*tasks)
    watcher.cancel()
    return list(outcomes), load, time.monotonic() - started


class RSSSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; keeps the largest."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid = pid
        self.interval = interval
        self.peak_kib = status_kib(pid, "VmRSS") or 0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS") or 0)
            self.peak_threads = max(self.peak_threads, status_kib(self.pid, "Threads") or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_scenario(
    name: str,
    bin_dir: Path,
    clients: int,
    latency_ms: int,
    timeout: float,
    queue: int | None = None,
    max_concurrency: int | None = None,
    run_parent: str | None = None,
    keep: bool = False,
    model: str = "nano-banana",
    emulator: Path | None = None,
    size: str | None = None,
    settle_seconds: float = 0,
    warm_up: bool = False,
) -> dict[str, Any]:
    """One whole scenario: start the stack, run the clients, stop it; returns the summary."""
    run_dir = Path(tempfile.mkdtemp(prefix="nanogate-capacity-", dir=run_parent or None))
    try:
        with running_stack(bin_dir, run_dir, latency_ms, queue=queue, max_concurrency=max_concurrency, emulator=emulator) as stack:
            rss_idle = status_kib(stack.gateway.pid, "VmRSS")
            # One request first: the emulator renders each image size once and keeps it, so the
            # load meets a prepared answer (hundreds of first 4K renders at once would measure
            # the emulator, not the gateway).
            if warm_up:
                log(f"{name}: one request first, so the emulator has the image ready ({latency_ms} ms)")
                warm, _, _ = asyncio.run(run_clients(stack.host, stack.port, stack.secret, 1, timeout, model=model, size=size))
                if not warm[0].ok:
                    raise CapacityError(f"the first request failed: {warm[0].status} {warm[0].error}")
            cpu_before = [cpu_seconds(stack.gateway.pid), cpu_seconds(stack.emulator.pid), time.process_time()]
            log(f"{name}: {clients} clients against nanogate (pid {stack.gateway.pid}, port {stack.port}), emulator latency {latency_ms} ms")
            with RSSSampler(stack.gateway.pid) as gateway_rss, RSSSampler(stack.emulator.pid) as emulator_rss:
                outcomes, load, wall = asyncio.run(run_clients(stack.host, stack.port, stack.secret, clients, timeout, model=model, size=size))
            cpu_after = [cpu_seconds(stack.gateway.pid), cpu_seconds(stack.emulator.pid), time.process_time()]
            hwm = status_kib(stack.gateway.pid, "VmHWM")
            rss_after = status_kib(stack.gateway.pid, "VmRSS")
            rss_settled = None
            if settle_seconds > 0:
                # What the gateway gives back once the load is over (allocator and pools).
                log(f"{name}: waiting {settle_seconds:.0f} s after the load for the gateway's RSS")
                time.sleep(settle_seconds)
                rss_settled = status_kib(stack.gateway.pid, "VmRSS")
            emulator_hwm = status_kib(stack.emulator.pid, "VmHWM")
            gateway_alive = stack.gateway.alive()
            gateway_log = stack.gateway.log_tail(3000)
        summary = summarize(name, outcomes, load, wall)
        summary.update({
            "clients": clients,
            "latency_ms": latency_ms,
            "model": model,
            "channel": {"max_concurrency": max_concurrency or "default", "queue": queue if queue is not None else "default"},
            "gateway_peak_rss_kib": hwm,
            "gateway_peak_rss_mib": round(hwm / 1024, 1) if hwm else None,
            "gateway_sampled_peak_rss_kib": gateway_rss.peak_kib,
            "gateway_idle_rss_kib": rss_idle,
            "gateway_rss_after_kib": rss_after,
            "gateway_rss_settled_kib": rss_settled,
            "settle_seconds": settle_seconds,
            "size": size,
            "gateway_peak_threads": gateway_rss.peak_threads,
            "gateway_alive_after": gateway_alive,
            "emulator_peak_rss_kib": emulator_hwm,
            "cpu_seconds": {
                who: None if before is None or after is None else round(after - before, 1)
                for who, before, after in zip(("gateway", "emulator", "clients"), cpu_before, cpu_after)
            },
        })
        if not gateway_alive or summary["failed"]:
            summary["gateway_log_tail"] = gateway_log
        log(f"{name}: {describe(summary)}")
        return summary
    finally:
        if keep:
            log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def summarize(name: str, outcomes: list[Outcome], load: Load, wall: float) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    codes: dict[str, int] = {}
    errors: dict[str, int] = {}
    sizes: dict[str, int] = {}
    retry_after: dict[str, int] = {}
    for outcome in outcomes:
        status = "no answer" if outcome.status is None else str(outcome.status)
        if not outcome.ok:
            by_status[status] = by_status.get(status, 0) + 1
            if outcome.code:
                codes[outcome.code] = codes.get(outcome.code, 0) + 1
            if outcome.error:
                key = f"{status}: {outcome.error[:160]}"
                errors[key] = errors.get(key, 0) + 1
            if outcome.retry_after is not None:
                retry_after[outcome.retry_after] = retry_after.get(outcome.retry_after, 0) + 1
        else:
            size = f"{outcome.width}x{outcome.height}"
            sizes[size] = sizes.get(size, 0) + 1
    succeeded = [outcome for outcome in outcomes if outcome.ok]
    ok_seconds = sorted(outcome.seconds for outcome in succeeded)
    return {
        "scenario": name,
        "succeeded": len(succeeded),
        "failed": len(outcomes) - len(succeeded),
        "failed_by_status": by_status,
        "error_codes": codes,
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])[:20]),
        "retry_after": retry_after,
        "image_sizes": sizes,
        "fully_checked": sum(outcome.fully_checked for outcome in outcomes),
        "response_bytes": succeeded[0].body_bytes if succeeded else None,
        "wall_seconds": round(wall, 2),
        "peak_in_flight": load.peak_in_flight,
        "all_sent_seconds": None if load.all_sent_at is None else round(load.all_sent_at, 2),
        "first_answer_seconds": None if load.first_answer_at is None else round(load.first_answer_at, 2),
        "success_seconds": {
            "min": round(ok_seconds[0], 2), "median": round(ok_seconds[len(ok_seconds) // 2], 2), "max": round(ok_seconds[-1], 2),
        } if ok_seconds else None,
    }


def describe(summary: dict[str, Any]) -> str:
    failed = ", ".join(f"{status}: {count}" for status, count in summary["failed_by_status"].items()) or "none"
    peak = summary.get("gateway_peak_rss_mib")
    return (
        f"{summary['succeeded']} succeeded, failed {failed}; {summary['peak_in_flight']} in flight at once; "
        f"wall {summary['wall_seconds']} s; gateway peak RSS {peak} MiB (VmHWM)"
    )


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def machine_info(bin_dir: Path) -> dict[str, Any]:
    def text(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    def run(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return done.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    total = re.search(r"MemTotal:\s+(\d+)", text("/proc/meminfo"))
    model = re.search(r"model name\s*:\s*(.+)", text("/proc/cpuinfo"))
    built = {}
    for name in ("nanogate", "gemini-emulator"):
        path = bin_dir / name
        if path.exists():
            built[name] = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    binary_times = [(bin_dir / name).stat().st_mtime for name in ("nanogate",) if (bin_dir / name).exists()]
    newer = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "Sources").rglob("*")
        if binary_times and path.is_file() and path.stat().st_mtime > min(binary_times)
    )
    return {
        "sources_newer_than_build": newer,
        "nproc": os.cpu_count(),
        "memory_gib": round(int(total.group(1)) / 1024 / 1024, 1) if total else None,
        "cpu": model.group(1).strip() if model else platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "somaxconn": text("/proc/sys/net/core/somaxconn").strip() or None,
        "commit": run(["git", "-C", str(ROOT), "log", "-1", "--format=%h (%ci)"]),
        "dirty_files": len([line for line in run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]).splitlines() if line.strip()]),
        "bin_dir": str(bin_dir.relative_to(ROOT)) if bin_dir.is_relative_to(ROOT) else str(bin_dir),
        "binaries_built": built,
    }


def markdown(summary: dict[str, Any], machine: dict[str, Any], command: str, date: str) -> str:
    failed = ", ".join(f"{status} × {count}" for status, count in summary["failed_by_status"].items()) or "none"
    codes = ", ".join(f"`{code}` × {count}" for code, count in summary["error_codes"].items()) or "—"
    sizes = ", ".join(f"{size} × {count}" for size, count in summary["image_sizes"].items()) or "—"
    timing = summary["success_seconds"] or {}
    errors = "\n".join(f"- {count} × {text}" for text, count in summary["errors"].items())
    dirty = f", {machine['dirty_files']} tracked files changed since that commit" if machine["dirty_files"] else ""
    newer = machine["sources_newer_than_build"]
    if newer:
        dirty += (f". **{len(newer)} source files were changed after this build** (e.g. `{newer[0]}`): these figures describe "
                  "the build, not the newer sources")
    built = ", ".join(f"`{name}` {when}" for name, when in machine["binaries_built"].items())
    channel = summary["channel"]
    return f"""# NanoGate capacity: {summary['clients']} slow generations in flight

{summary['clients']} clients each open a connection to NanoGate at the same moment and ask for one
`{summary['model']}` image as base64 (`POST /v1/images/generations`, `Connection: close`), while the
offline Gemini emulator behind it takes {summary['latency_ms'] / 1000:g} s per generation, as Google
takes seconds to tens of seconds. The question is whether every request is held and answered,
and what the gateway's memory does while thousands wait. Channel limits: max_concurrency
{channel['max_concurrency']}, queue {channel['queue']} (NanoGate's defaults are 1024 and 4096).

**Command:** `{command}`  
**Date:** {date}  
**Build:** binaries in `{machine['bin_dir']}` ({built}); HEAD `{machine['commit']}`{dirty}  
**Machine:** {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB memory, Linux {machine['kernel']}, Python {machine['python']}, open files limit {machine['open_files_limit'][0]}, somaxconn {machine['somaxconn']}

## Results

| figure | value |
|---|---|
| requests | {summary['clients']} |
| succeeded (200 with a base64 PNG) | {summary['succeeded']} |
| failed, by status | {failed} |
| error codes | {codes} |
| image sizes | {sizes} |
| answer size | {summary['response_bytes'] or 0:,} bytes |
| in flight at once (request sent, answer not yet read) | {summary['peak_in_flight']} |
| all requests sent after | {summary['all_sent_seconds']} s |
| first answer after | {summary['first_answer_seconds']} s |
| success latency min / median / max | {timing.get('min')} / {timing.get('median')} / {timing.get('max')} s |
| wall time | {summary['wall_seconds']} s |
| gateway peak RSS (VmHWM) | {summary['gateway_peak_rss_mib']} MiB |
| gateway RSS idle before / after | {round((summary['gateway_idle_rss_kib'] or 0) / 1024, 1)} / {round((summary['gateway_rss_after_kib'] or 0) / 1024, 1)} MiB |
| gateway threads (peak sampled) | {summary['gateway_peak_threads']} |
| emulator peak RSS (VmHWM) | {round((summary['emulator_peak_rss_kib'] or 0) / 1024, 1)} MiB |
| CPU seconds used: gateway / emulator / clients | {summary['cpu_seconds']['gateway']} / {summary['cpu_seconds']['emulator']} / {summary['cpu_seconds']['clients']} |

{('Errors seen:' + chr(10) + errors) if errors else 'No errors.'}

## How it measures

- `gemini-emulator --latency-ms {summary['latency_ms']}` (it accepts only the key NanoGate holds) and
  `nanogate serve` with `GEMINI_API_KEY`/`NANOGATE_GEMINI_BASE_URL` pointing at it (or a `channels:` entry when
  limits are given), `NANOGATE_CHECK_MODELS=0`, `LOG_LEVEL=warning`, a fresh data dir and one key from `nanogate keys create`.
- The clients are Python asyncio streams in one process, all started at once: each writes one HTTP/1.1
  request and reads to EOF. A 200 counts as succeeded when its body length matches Content-Length, `b64_json` starts
  with a PNG signature and IHDR (decoded for the size) and the body ends as JSON; the first
  {summary['fully_checked']} answers are parsed whole and their image decoded.
- The gateway's peak RSS is VmHWM from `/proc/PID/status` after the run (VmRSS is also sampled
  every 0.25 s: {round(summary['gateway_sampled_peak_rss_kib'] / 1024, 1)} MiB at most). Clients, gateway and emulator share the machine's CPUs.

Raw figures: `{json.dumps({key: value for key, value in summary.items() if key != 'gateway_log_tail'}, default=str)}`
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000, help="connections opened at once (default 2000)")
    parser.add_argument("--latency-ms", type=int, default=20000, help="emulator milliseconds per generation (default 20000)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds each client waits for its whole answer (default 240)")
    parser.add_argument("--max-concurrency", type=int, help="give the channel this max_concurrency (configuration file); default: NanoGate's")
    parser.add_argument("--queue", type=int, help="NANOGATE_UPSTREAM_QUEUE; default: NanoGate's")
    parser.add_argument("--model", default="nano-banana", help="the model asked for (default nano-banana)")
    parser.add_argument("--size", help="the size asked for (e.g. 4k with --model nano-banana-pro); default: the model's")
    parser.add_argument("--warm-up", action="store_true", help="send one request before the load, so the emulator renders the image once "
                        "(after the idle RSS is read)")
    parser.add_argument("--settle-seconds", type=float, default=0, help="after the load, wait this long and sample the gateway's RSS again (default 0: not sampled)")
    parser.add_argument("--bin-dir", help="where nanogate and gemini-emulator are (default .build/release if both are there, else .build/debug)")
    parser.add_argument("--emulator-bin", help="the gemini-emulator to use (default: the one in --bin-dir); the emulator is the "
                        "load's upstream, not what is measured, so a release emulator may stand in front of a debug gateway")
    parser.add_argument("--output", default="", help="markdown report to write (e.g. bench/results/CAPACITY.md)")
    parser.add_argument("--results", default="", help="raw figures as JSON to write")
    parser.add_argument("--run-parent", default="", help="where to create the run directory (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, data dir)")
    args = parser.parse_args()

    if args.bin_dir:
        bin_dir = Path(os.path.abspath(args.bin_dir))
    else:
        release = ROOT / ".build" / "release"
        bin_dir = release if (release / "nanogate").exists() and (release / "gemini-emulator").exists() else ROOT / ".build" / "debug"
    soft, hard = raise_open_files_limit()
    needed = 2 * args.clients + 512
    if soft < needed:
        log(f"FAILED: the open files limit is {soft} (hard {hard}); {args.clients} clients need about {needed}")
        return 1
    newer = machine_info(bin_dir)["sources_newer_than_build"]
    if newer:
        log(f"WARNING: {len(newer)} source files are newer than {bin_dir / 'nanogate'} (e.g. {newer[0]}); rebuild to measure them")
    command = " ".join(["python3", "bench/capacity.py", *sys.argv[1:]])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    try:
        summary = run_scenario(
            "capacity", bin_dir, args.clients, args.latency_ms, args.timeout,
            queue=args.queue, max_concurrency=args.max_concurrency, run_parent=args.run_parent, keep=args.keep, model=args.model,
            emulator=Path(os.path.abspath(args.emulator_bin)) if args.emulator_bin else None, size=args.size, settle_seconds=args.settle_seconds, warm_up=args.warm_up,
        )
    except (CapacityError, KeyboardInterrupt) as error:
        log(f"FAILED: {error}" if isinstance(error, CapacityError) else "interrupted")
        return 1
    summary["command"] = command
    machine = machine_info(bin_dir)
    print(json.dumps({key: value for key, value in summary.items() if key != "gateway_log_tail"}, indent=2, default=str))
    if summary.get("gateway_log_tail"):
        print("--- gateway log (tail) ---\n" + summary["gateway_log_tail"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown(summary, machine, command, date))
        log(f"wrote {args.output}")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps({"date": date, "machine": machine, **summary}, indent=2, default=str))
        log(f"wrote {args.results}")
    return 0 if summary["failed"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
