#!/usr/bin/env bash
# NanoGate performance benchmark: one command.
#
#   bench/run.sh            # the full run (about 15 minutes), writes BENCHMARKS.md
#   bench/run.sh --build    # first `swift build -c release` (the harness warns when sources are newer than the binaries)
#   bench/run.sh --quick    # short cases, to try the harness
#   bench/run.sh --postgres # the main gateway on a throwaway PostgreSQL cluster (scripts/postgres.sh) instead of SQLite
#   bench/run.sh --no-extras # without the PostgreSQL, TLS-upstream and in-flight memory cases
#   bench/run.sh --help     # options (durations, connections, nginx settings, --keep, --only)
#
# Installs wrk and nginx from Debian when missing, builds the release binaries when missing, then
# runs bench/bench.py: the Gemini emulator, NanoGate and nginx on 127.0.0.1 only, every load test
# bounded in time, every process it started stopped at the end. By default the one report also
# has a gateway on a throwaway PostgreSQL cluster (`--postgres-url`), gateways behind a TLS and a
# plain-HTTP relay (`--tls`) and the memory per request in flight (`--capacity`, bench/capacity.py).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "bench: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

build=0
postgres=0
extras=1
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=1; shift ;;
        --postgres) postgres=1; shift ;;
        --no-extras) extras=0; shift ;;
        *) break ;;
    esac
done
if [ "$build" = 1 ] || [ ! -x .build/release/nanogate ] || [ ! -x .build/release/gemini-emulator ]; then
    echo "bench: building the release binaries"
    swift build -c release
fi

export PATH="$PATH:/usr/sbin:/sbin"
export NGBENCH_ENTRY="bench/run.sh"
if [ "$postgres" = 1 ]; then
    pgdir=$(mktemp -d /tmp/nanogate-bench-pg.XXXXXX)
    trap 'scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true; rm -rf "$pgdir"' EXIT
    url=$(scripts/postgres.sh start "$pgdir")
    NGBENCH_ENTRY="bench/run.sh --postgres" NGBENCH_DATABASE_URL="$url" python3 bench/bench.py "$@"
    exit $?
fi
if [ "$extras" = 1 ]; then
    # A throwaway cluster for the nanogate-pg gateway (its URL is kept out of the reported command).
    pgdir=$(mktemp -d /tmp/nanogate-bench-pg.XXXXXX)
    trap 'scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true; rm -rf "$pgdir"' EXIT
    url=$(scripts/postgres.sh start "$pgdir")
    NGBENCH_PG_URL="$url" NGBENCH_EXTRAS=1 python3 bench/bench.py "$@"
    exit $?
fi
NGBENCH_ENTRY="bench/run.sh --no-extras" exec python3 bench/bench.py "$@"
