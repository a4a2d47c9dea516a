#!/usr/bin/env bash
# The whole test suite: one debug build, the Swift tests (unit + HTTP-level against the Gemini
# emulator), then the official `openai` Python SDK against the built gateway.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --build-tests
swift test --skip-build

venv=.build/compat-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
NANOGATE_BIN="$PWD/.build/debug/nanogate" "$venv/bin/python" -m pytest tests/compat -q -p no:cacheprovider
