#!/usr/bin/env bash
# One command for a machine with a GPU, done in under 8 minutes:
#   1. the gpu-marked tests (pytest -m gpu);
#   2. a 20-step LoRA run in bf16 and a 20-step QLoRA run (4-bit nf4, bf16 compute) of a random
#      1.1B Llama (TinyLlama's shape, bench/train_bench.py's random-1b) through `lorakit train`;
#   3. tokens/s and peak memory of each run, from its summary.json.
# On a machine with no GPU it passes too: the gpu tests are skipped (pytest says why), and the two
# runs use bench's random-tiny model so the commands themselves are checked; their numbers are
# labelled as CPU smoke numbers, not GPU measurements.
#
#   bash scripts/gpu_check.sh                       # sets up .venv first, as scripts/test.sh does
#   LORAKIT_PYTHON=/opt/env/bin/python bash scripts/gpu_check.sh   # an environment already set up
#   GPU_CHECK_KEEP=1 ...                            # keep the run folders (printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${LORAKIT_PYTHON:-}" ]; then
    PY=$LORAKIT_PYTHON
    echo "gpu_check: using $PY as it is (LORAKIT_PYTHON set; setup skipped)"
else
    bash scripts/setup.sh --test
    PY=${LORAKIT_VENV:-.venv}/bin/python
fi
CACHE=${LORAKIT_CACHE:-$HOME/.cache/lorakit}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
if [ -z "${GPU_CHECK_KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; fi
failures=()
skipped=()
started=$SECONDS

step() {  # step SECONDS NAME COMMAND...: run with a time limit, record a failure instead of stopping
    local limit=$1 name=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s)"
    local rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        failures+=("$name: ran past its ${limit}s limit")
    elif [ "$rc" != 0 ]; then
        failures+=("$name: exit code $rc")
    fi
    return 0
}

GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')
if [ -n "$GPU" ]; then
    echo "gpu_check: GPU $GPU"
    MODEL=random-1b
    LABEL="random 1.1B Llama on $GPU"
    LORA_SET=(--set model.dtype=bfloat16 --set train.precision=bf16)
    QLORA_SET=(--set model.dtype=bfloat16 --set train.precision=bf16
               --set "model.quantization={bits: 4, type: nf4, double_quant: true, compute_dtype: bfloat16}")
else
    echo "gpu_check: no CUDA GPU on this machine"
    MODEL=random-tiny
    LABEL="CPU SMOKE RUN: random-tiny Llama (hidden 64), not the 1.1B model; not a GPU measurement"
    skipped+=("the 1.1B bf16 LoRA and QLoRA runs: no GPU (random-tiny ran the same commands on the CPU instead)")
    # auto: bf16 autocast where this CPU has native bf16, else fp32 (an explicit bf16 would be refused there)
    LORA_SET=(--set train.precision=auto)
    QLORA_SET=(--set train.precision=auto --set "model.quantization={bits: 4, type: nf4, double_quant: true}")
fi

# Time limits (seconds) that keep the whole check under 8 minutes on a GPU, setup aside.
# 1. the gpu-marked tests; on a CPU pytest collects them and prints each skip reason (-rs).
step 150 "pytest -m gpu" "$PY" -m pytest -m gpu -q -rs tests
[ -n "$GPU" ] || skipped+=("the gpu-marked tests: collected and skipped, no GPU (reasons above)")

# 2. the random model (SmolLM2's tokenizer, random weights of the preset's shape), then the two runs.
step 120 "build $MODEL" "$PY" -c '
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from train_bench import build_random_model
print("built", build_random_model(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
' "$MODEL" "$WORK/$MODEL" "$CACHE"

# 20 steps of 8 demo samples through the CLI, no evaluation: the numbers are the training's own.
TRAIN=("$PY" -m lorakit train examples/demo/config.yaml --set "model.name=$WORK/$MODEL" --set "model.cache_dir=$CACHE"
       --set data.eval=[] --set train.max_steps=20 --set train.logging_steps=5 --set train.progress_bar=false)
if [ -d "$WORK/$MODEL" ]; then
    step 100 "LoRA, 20 steps ($MODEL)" "${TRAIN[@]}" --set "output_dir=$WORK/lora" "${LORA_SET[@]}"
    step 100 "QLoRA, 20 steps ($MODEL)" "${TRAIN[@]}" --set "output_dir=$WORK/qlora" "${QLORA_SET[@]}"
fi

# 3. what each run measured.
echo
echo "=== results: $LABEL"
"$PY" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
for name in ("lora", "qlora"):
    path = work / name / "summary.json"
    if not path.is_file():
        print(f"{name:6} no summary.json (the run failed or did not run)")
        continue
    s = json.loads(path.read_text())
    cuda = s.get("cuda_peak_reserved_bytes")
    peak = f"CUDA peak reserved {cuda / 2**30:.2f} GiB, " if cuda else ""
    print(f"{name:6} {s['steps']} steps in {s['train_seconds']:.1f} s, precision {s['precision']}: "
          f"{s['tokens_per_second']} tokens/s ({s['loss_tokens_per_second']} carrying loss), "
          f"{peak}peak RSS {s['peak_rss_bytes'] / 2**30:.2f} GiB, weights {s['memory_footprint_bytes'] / 2**20:.0f} MiB, "
          f"train loss {s['train_loss']:.4f}")
EOF

echo
echo "gpu_check: $((SECONDS - started)) s"
for s in "${skipped[@]}"; do echo "skipped: $s"; done
[ -n "${GPU_CHECK_KEEP:-}" ] && echo "run folders kept in $WORK"
if [ "${#failures[@]}" -gt 0 ]; then
    for f in "${failures[@]}"; do echo "FAILED: $f"; done
    exit 1
fi
echo "gpu_check: all passed"
