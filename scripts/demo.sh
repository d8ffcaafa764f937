#!/usr/bin/env bash
# Set up lorakit (no system package, nothing compiled), fine-tune the embedded SmolLM2-135M-Instruct
# on the bundled demo task, score base against tuned on held-out prompts, then chat with the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LK=${LORAKIT_VENV:-.venv}/bin/lorakit
$LK train examples/demo/config.yaml --overwrite   # the demo starts afresh each time
$LK eval runs/demo
if [ -t 0 ]; then
    echo "Chat with the tuned model (try: Extract the person's name, age and city from the text. Answer with JSON only.  Lena, 29, lives in Oslo.)"
    $LK chat runs/demo
fi
