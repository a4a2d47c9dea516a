"""A throwaway database on the PostgreSQL server of the test run (NANOGATE_TEST_PG_URL, which
scripts/test.sh starts with scripts/postgres.sh), through that cluster's own psql."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

import pytest

PG_URL = os.environ.get("NANOGATE_TEST_PG_URL", "")


def psql_binary() -> str:
    """psql of the PostgreSQL on this machine: beside initdb on PATH, the newest
    /usr/lib/postgresql/*/bin (as scripts/postgres.sh finds them), or psql on PATH."""
    initdb = shutil.which("initdb")
    candidates = [Path(os.path.realpath(initdb)).parent / "psql"] if initdb else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0, reverse=True)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("psql")
    if not found:
        pytest.fail("no psql found (PATH, /usr/lib/postgresql/*/bin)")
    return found


def psql(url: str, sql: str) -> str:
    result = subprocess.run(
        [psql_binary(), url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"psql {sql!r}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


def database_url(server_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(server_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """The URL of a new database on PG_URL's server, dropped when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    psql(PG_URL, f'CREATE DATABASE "{name}"')
    try:
        yield database_url(PG_URL, name)
    finally:
        psql(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
