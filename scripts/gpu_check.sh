#!/usr/bin/env bash
# One command for a machine with a GPU, done in under 8 minutes:
#   1. the gpu-marked tests (pytest -m gpu);
#   2. a 20-step LoRA run in bf16 and a 20-step QLoRA run (4-bit nf4, bf16 compute) of a random
#      1.1B Llama (TinyLlama's shape, bench/train_bench.py's random-1b) through `lorakit train`;
#   3. what would break first on a GPU, each a short run of the random model: fp16 weights with fp16
#      autocast, padding-free packed rows (the plan's attention: flash or sdpa), a pre-quantized
#      4-bit checkpoint (saved by bitsandbytes, then trained), fsdp in one process; then greedy
#      generation, a merge, and a GGUF export read back by llama.cpp (`lorakit verify --gguf`);
#   4. tokens/s, peak memory and MFU of each run, from its summary.json.
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
    FP16_SET=(--set model.dtype=float16 --set train.precision=fp16)
else
    echo "gpu_check: no CUDA GPU on this machine"
    MODEL=random-tiny
    LABEL="CPU SMOKE RUN: random-tiny Llama (hidden 64), not the 1.1B model; not a GPU measurement"
    skipped+=("the 1.1B bf16 LoRA and QLoRA runs: no GPU (random-tiny ran the same commands on the CPU instead)")
    # auto: bf16 autocast where this CPU has native bf16, else fp32 (an explicit bf16 would be refused there)
    LORA_SET=(--set train.precision=auto)
    QLORA_SET=(--set train.precision=auto --set "model.quantization={bits: 4, type: nf4, double_quant: true}")
    FP16_SET=()
    skipped+=("fp16 weights, the pre-quantized checkpoint and fsdp on one GPU: no GPU")
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
    SHORT=("${TRAIN[@]}" --set train.max_steps=5)
    step 60 "packed rows, 5 steps ($MODEL)" "${SHORT[@]}" --set "output_dir=$WORK/packed" "${LORA_SET[@]}" \
        --set train.packing=true
    if [ -n "$GPU" ]; then
        step 60 "fp16 weights, 5 steps ($MODEL)" "${SHORT[@]}" --set "output_dir=$WORK/fp16" "${FP16_SET[@]}"
        # A checkpoint saved already quantized, as the hub's -bnb-4bit repos are, then trained as it is.
        step 60 "save a pre-quantized checkpoint" "$PY" -c '
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=quant, device_map={"": 0})
model.save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
' "$WORK/$MODEL" "$WORK/$MODEL-bnb4"
        step 60 "pre-quantized checkpoint, 5 steps" "${SHORT[@]}" --set "model.name=$WORK/$MODEL-bnb4" \
            --set "output_dir=$WORK/prequant" --set model.dtype=bfloat16 --set train.precision=bf16
        step 90 "fsdp in one process, 5 steps ($MODEL)" "${SHORT[@]}" --set "output_dir=$WORK/fsdp" "${LORA_SET[@]}" \
            --set train.distributed.strategy=fsdp --nproc 1
    fi
    # What a user does next with the LoRA run: answer, merge, export, and have llama.cpp read the export back.
    step 60 "generate (greedy)" "$PY" -m lorakit generate "$WORK/lora" --prompt "Extract: Ana is 30 and lives in Porto."
    step 60 "merge" "$PY" -m lorakit merge "$WORK/lora" --out "$WORK/merged"
    step 120 "export gguf f16" "$PY" -m lorakit export gguf "$WORK/lora" \
        --out "$WORK/lora.gguf" --type f16
    # Random weights never say their end-of-turn token, so "it stops" fails by design here; every other
    # row (prompt ids, merge, the GGUF read by llama.cpp, the Modelfile) must pass or be skipped with a reason.
    step 150 "verify the run and its GGUF" "$PY" -c '
import subprocess, sys
subprocess.run([sys.executable, "-m", "lorakit", "verify", sys.argv[1], "--gguf", sys.argv[2], "--limit", "4",
                "--no-server"])
from lorakit.verify.report import read_report
from pathlib import Path
report = read_report(Path(sys.argv[1]))
if report is None:
    sys.exit("verify wrote no verify.json")
bad = [c.name for c in report.checks if c.verdict == "fail" and c.name != "it stops"]
sys.exit(f"verify failed: {bad}" if bad else 0)
' "$WORK/lora" "$WORK/lora.gguf"
fi

# 3. what each run measured.
echo
echo "=== results: $LABEL"
"$PY" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

import torch

# Dense bf16/fp16 peak of the GPUs this project has been lent (the vendors' figures, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
peak = next((tflops for name, tflops in PEAK_TFLOPS.items() if name in gpu), None)
work = Path(sys.argv[1])
for name in ("lora", "qlora", "packed", "fp16", "prequant", "fsdp"):
    path = work / name / "summary.json"
    if not path.is_file():
        print(f"{name:8} no summary.json (skipped on this machine, or the run failed: see above)")
        continue
    s = json.loads(path.read_text())
    cuda = s.get("cuda_peak_reserved_bytes")
    memory = f"CUDA peak reserved {cuda / 2**30:.2f} GiB, " if cuda else ""
    # Model FLOPs utilisation: 6 x parameters per token (forward and backward through every weight, the
    # frozen ones included: their input gradients are still computed), over the GPU's dense peak.
    flops = 6 * s["total_parameters"] * (s["tokens_per_second"] or 0)
    mfu = f", MFU {100 * flops / (peak * 1e12):.1f}%" if peak and s.get("precision") in ("bf16", "fp16") else ""
    print(f"{name:8} {s['steps']} steps in {s['train_seconds']:.1f} s, precision {s['precision']}: "
          f"{s['tokens_per_second']} tokens/s ({s['loss_tokens_per_second']} carrying loss){mfu}, "
          f"{memory}peak RSS {s['peak_rss_bytes'] / 2**30:.2f} GiB, weights {s['memory_footprint_bytes'] / 2**20:.0f} MiB, "
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
