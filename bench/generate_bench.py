"""Batched greedy generation (lorakit) against one-by-one ``pipeline("text-generation")``.

Same model, same prompts, same max_new_tokens, greedy. Prints tokens per second for both,
the ratio, and how many answers are identical.

    python bench/generate_bench.py --n 64 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "alpaca_en.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/lorakit").expanduser())
    args = parser.parse_args()

    from transformers import pipeline

    from lorakit.config import GenerationConfig
    from lorakit.infer.generate import generate_batch
    from lorakit.infer.session import open_session

    rows = [r for r in json.loads(SHARED.read_text(encoding="utf-8")) if not r["input"].strip()][: args.n]
    convs = [[{"role": "user", "content": r["instruction"]}] for r in rows]
    session = open_session("smollm2-135m-instruct", args.cache)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    started = time.perf_counter()
    ours = generate_batch(session.model, session.tokenizer, session.template, convs, gen)
    ours_s = time.perf_counter() - started
    ours_tokens = sum(a.new_tokens for a in ours)

    pipe = pipeline("text-generation", model=session.model, tokenizer=session.tokenizer)
    started = time.perf_counter()
    theirs, theirs_tokens = [], 0
    for conv in convs:
        out = pipe(conv, max_new_tokens=args.max_new_tokens, do_sample=False, return_full_text=False)
        text = out[0]["generated_text"]
        theirs.append(text.strip())
        theirs_tokens += len(session.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    theirs_s = time.perf_counter() - started

    same = sum(a.text == b for a, b in zip(ours, theirs))
    result = {
        "prompts": len(convs), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "lorakit_s": ours_s, "lorakit_tokens_per_s": ours_tokens / ours_s,
        "pipeline_s": theirs_s, "pipeline_tokens_per_s": theirs_tokens / theirs_s,
        "speedup": (ours_tokens / ours_s) / (theirs_tokens / theirs_s), "identical_answers": same,
    }
    print(json.dumps(result, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"generate-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
