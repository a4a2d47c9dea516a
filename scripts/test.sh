#!/usr/bin/env bash
# The whole test suite: one debug build, the Swift tests (unit + HTTP-level against the Gemini
# emulator) on SQLite, the HTTP-level Swift tests again on a throwaway PostgreSQL cluster
# (scripts/postgres.sh), then the official `openai` Python SDK and the two-instance tests
# (PostgreSQL + moto's S3 + nginx) against the built gateway. Prints each phase's duration.
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

begin "swift build"
swift build --build-tests
end

begin "swift tests (SQLite)"
swift test --skip-build
end

begin "PostgreSQL cluster"
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/nanogate-pg.XXXXXX")
pg_url=$(scripts/postgres.sh start "$pg_dir")
end

# Only the suites that touch storage: the pure ones (NanoGateCoreTests, the fuzz tests) would
# repeat the first pass exactly.
begin "swift tests (PostgreSQL)"
NANOGATE_TEST_DATABASE_URL="$pg_url" swift test --skip-build --filter NanoGateServerTests --skip FuzzTests
end

begin "python venv"
venv=.build/compat-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
end

begin "pytest (SDKs, two instances)"
export NANOGATE_TEST_PG_URL="$pg_url"
NANOGATE_BIN="$PWD/.build/debug/nanogate" "$venv/bin/python" -m pytest tests/compat -q -p no:cacheprovider --durations=15
end
