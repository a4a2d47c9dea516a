#!/usr/bin/env bash
# NanoGate performance benchmark: one command.
#
#   bench/run.sh            # the full run (about 7 minutes), writes BENCHMARKS.md
#   bench/run.sh --build    # first `swift build -c release` (the harness warns when sources are newer than the binaries)
#   bench/run.sh --quick    # short cases, to try the harness
#   bench/run.sh --help     # options (durations, connections, nginx settings, --keep, --only)
#
# Installs wrk and nginx from Debian when missing, builds the release binaries when missing, then
# runs bench/bench.py: the Gemini emulator, NanoGate and nginx on 127.0.0.1 only, every load test
# bounded in time, every process it started stopped at the end.
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
if [ "${1:-}" = "--build" ]; then
    build=1
    shift
fi
if [ "$build" = 1 ] || [ ! -x .build/release/nanogate ] || [ ! -x .build/release/gemini-emulator ]; then
    echo "bench: building the release binaries"
    swift build -c release
fi

export PATH="$PATH:/usr/sbin:/sbin"
export NGBENCH_ENTRY="bench/run.sh"
exec python3 bench/bench.py "$@"
