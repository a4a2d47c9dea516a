"""Thousands of slow generations in flight: 2,000 clients at once against a gateway whose upstream
(the emulator with ``--latency-ms 20000``) takes 20 s per image.

Scenario 1, NanoGate's defaults (each channel runs up to 1024 calls and queues 4096 more): every
one of the 2,000 requests is answered 200 with a base64 PNG.
Scenario 2, a channel with ``max_concurrency: 500`` and ``NANOGATE_UPSTREAM_QUEUE=300``: 500 run,
300 wait, the rest are refused at once with 503 ``upstream_queue_full`` and a Retry-After; nothing
else happens to any request.

The harness (processes, asyncio clients, answer checks, /proc figures) is bench/capacity.py, which
also runs scenario 1 as a benchmark. Each scenario prints its figures, the gateway's peak RSS
(VmHWM) among them, and adds them to .build/capacity-report.json. No timing is asserted beyond
generous bounds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, _nanogate_bin

CLIENTS = 2000
LATENCY_MS = 20000
SCENARIO_SECONDS = 240  # per scenario, start-up to the last answer: generous
MIN_HARD_NOFILE = 8192
REPORT = REPO_ROOT / ".build" / "capacity-report.json"


def _load_harness():
    spec = importlib.util.spec_from_file_location("nanogate_capacity", REPO_ROOT / "bench" / "capacity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


capacity = _load_harness()


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    """The directory of the nanogate under test ($NANOGATE_BIN); the emulator is built beside it."""
    return _nanogate_bin().parent


@pytest.fixture(scope="module")
def emulator() -> Path | None:
    """$NANOGATE_EMULATOR_BIN, to put another emulator build (say a release one) upstream; by
    default the gemini-emulator beside nanogate."""
    path = os.environ.get("NANOGATE_EMULATOR_BIN")
    return Path(path).resolve() if path else None


@pytest.fixture(scope="module", autouse=True)
def open_files():
    """Soft RLIMIT_NOFILE raised to the hard limit (the gateway inherits it); skip below 8192."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < MIN_HARD_NOFILE:
        pytest.skip(f"the hard open-files limit is {hard}, below {MIN_HARD_NOFILE}: {CLIENTS} clients cannot be opened")
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, _ = capacity.raise_open_files_limit()
    assert soft >= MIN_HARD_NOFILE
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def record(summary: dict, capsys) -> None:
    """Prints the scenario's figures (past pytest's capture, so they show in every run) and merges
    them into .build/capacity-report.json."""
    figures = {key: value for key, value in summary.items() if key != "gateway_log_tail"}
    with capsys.disabled():
        print(f"\n{summary['scenario']}: {capacity.describe(summary)}; figures in {REPORT}")
    print(json.dumps(figures, indent=2, default=str))
    report = {}
    if REPORT.exists():
        try:
            report = json.loads(REPORT.read_text())
        except ValueError:
            report = {}
    report[summary["scenario"]] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2, default=str))


def run(name: str, bin_dir: Path, emulator: Path | None, tmp_path: Path, capsys, **limits) -> dict:
    started = time.monotonic()
    summary = capacity.run_scenario(
        name, bin_dir, CLIENTS, LATENCY_MS, timeout=SCENARIO_SECONDS, run_parent=str(tmp_path), emulator=emulator, **limits
    )
    summary["scenario_seconds"] = round(time.monotonic() - started, 1)
    record(summary, capsys)
    assert summary["gateway_alive_after"], f"the gateway died under load:\n{summary.get('gateway_log_tail', '')}"
    assert summary["scenario_seconds"] < SCENARIO_SECONDS + 60, summary["scenario_seconds"]
    return summary


def test_defaults_answer_all_2000(bin_dir, emulator, tmp_path, capsys):
    """Defaults: all 2,000 in flight at once, every one answered 200 with a PNG."""
    summary = run("scenario-1-defaults", bin_dir, emulator, tmp_path, capsys)

    assert summary["failed"] == 0, (
        f"{summary['failed']} of {CLIENTS} failed: {summary['failed_by_status']}; errors {summary['errors']}\n"
        f"{summary.get('gateway_log_tail', '')}"
    )
    assert summary["succeeded"] == CLIENTS
    assert summary["fully_checked"] >= 1, "no answer was parsed whole"
    assert summary["image_sizes"] == {"1024x1024": CLIENTS}, summary["image_sizes"]
    # They really were in flight together: with a 20 s upstream, all were sent before any answer.
    assert summary["peak_in_flight"] >= CLIENTS * 0.9, summary["peak_in_flight"]


def test_queue_full_is_503(bin_dir, emulator, tmp_path, capsys):
    """max_concurrency 500 + queue 300: at least those 800 succeed, the others get 503
    upstream_queue_full with Retry-After, and nothing else is answered."""
    summary = run("scenario-2-queue-300", bin_dir, emulator, tmp_path, capsys, max_concurrency=500, queue=300)

    refused = summary["failed_by_status"].get("503", 0)
    others = {status: count for status, count in summary["failed_by_status"].items() if status != "503"}
    assert not others, f"answers other than 200/503: {others}; errors {summary['errors']}"
    assert summary["error_codes"] == {"upstream_queue_full": refused}, (summary["error_codes"], summary["errors"])
    assert sum(summary["retry_after"].values()) == refused, f"503s without Retry-After: {summary['retry_after']}"
    for value in summary["retry_after"]:
        assert value.isdigit() and int(value) > 0, summary["retry_after"]
    assert summary["succeeded"] >= 800, f"only {summary['succeeded']} succeeded (500 running + 300 queued expected)"
    assert refused >= 1, "the queue never filled"
    assert summary["succeeded"] + refused == CLIENTS
    assert summary["image_sizes"] == {"1024x1024": summary["succeeded"]}, summary["image_sizes"]
