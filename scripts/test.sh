#!/usr/bin/env bash
# The whole test suite: one debug build, the Swift tests (unit + HTTP-level against the Gemini
# emulator) on SQLite, the HTTP-level Swift tests again on a throwaway PostgreSQL cluster
# (scripts/postgres.sh), then the official `openai` Python SDK, the two-instance tests
# (PostgreSQL + moto's S3 + nginx) and the browser console's (Selenium + Chromium) against the
# built gateway. Prints each phase's duration.
set -euo pipefail
cd "$(dirname "$0")/.."

phase=""
phase_started=$SECONDS
timings=()
pg_dir=""

begin() {
    phase=$1
    phase_started=$SECONDS
    echo "==> $phase"
}

end() {
    timings+=("$(printf '%-34s %5d s' "$phase" $((SECONDS - phase_started)))")
    phase=""
}

finish() {
    local status=$?
    if [ -n "$phase" ]; then
        timings+=("$(printf '%-34s %5d s (failed, exit %d)' "$phase" $((SECONDS - phase_started)) "$status")")
    fi
    if [ -n "$pg_dir" ]; then
        scripts/postgres.sh stop "$pg_dir" || true
        rm -rf "$pg_dir"
    fi
    echo "==> timings"
    printf '    %s\n' "${timings[@]}"
    printf '    %-34s %5d s\n' "total" "$SECONDS"
    exit "$status"
}
trap finish EXIT

# Runs `swift test --skip-build ARGS...` for at most $1 seconds, line-buffered into the log, so a
# test that hangs fails the run in minutes instead of CI's hour and a half, and the tests that
# started but never finished are named.
swift_tests() {
    local limit=$1 log
    shift
    log=$(mktemp "${TMPDIR:-/tmp}/nanogate-swift-test.XXXXXX")
    local status=0
    timeout -k 30 "$limit" stdbuf -oL -eL swift test --skip-build "$@" 2>&1 | tee "$log" || status=$?
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 124 ] && echo "==> swift test did not finish within $limit s"
        python3 scripts/unfinished-tests.py "$log" || true
    fi
    rm -f "$log"
    return "$status"
}

begin "swift build"
swift build --build-tests
end

begin "swift tests (SQLite)"
swift_tests "${NANOGATE_SWIFT_TEST_LIMIT:-900}"
end

begin "PostgreSQL cluster"
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/nanogate-pg.XXXXXX")
pg_url=$(scripts/postgres.sh start "$pg_dir")
end

# Only the suites that touch storage: the pure ones (NanoGateCoreTests, the fuzz tests) would
# repeat the first pass exactly.
begin "swift tests (PostgreSQL)"
NANOGATE_TEST_DATABASE_URL="$pg_url" swift_tests "${NANOGATE_SWIFT_TEST_LIMIT:-900}" --filter "StorageTests|NanoGateServerTests" --skip FuzzTests
end

begin "python venv"
venv=.build/compat-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
# Only for the axe-core (4.12.1) it bundles, injected into pages by test_console.py; its
# Playwright dependency is not needed, hence --no-deps.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps axe-playwright-python==0.1.8
end

begin "pytest (SDKs, two instances)"
export NANOGATE_TEST_PG_URL="$pg_url"
NANOGATE_BIN="$PWD/.build/debug/nanogate" "$venv/bin/python" -m pytest tests/compat -q -p no:cacheprovider --durations=15
end
