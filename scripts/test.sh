#!/usr/bin/env bash
# Set up (if needed) lorakit and the tests' judges (llama.cpp, Go, Chromium), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec "${LORAKIT_VENV:-.venv}/bin/python" -m pytest "$@"
