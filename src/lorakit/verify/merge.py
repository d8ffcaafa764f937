"""Merge equals the adapter: ``lorakit merge``'s model against base + adapter, both in float32.

Compared along each held-out prompt and base + adapter's own greedy answer to it: the largest
logit gap (a fraction of the largest |logit|) and whether greedy answers are equal. Then the
same in the dtype ``merge`` saves (the base checkpoint's): rounding to bf16 or fp16 moves logits,
which is expected; where it changes greedy answers, the row warns with the numbers.
"""

from __future__ import annotations

import copy

import torch

from lorakit.export.merge import base_checkpoint_dtype
from lorakit.infer.generate import generate_ids
from lorakit.model.adapter import load_run_model
from lorakit.verify.logits import first_pick_apart, logit_gap, logits
from lorakit.verify.report import FAIL, PASS, WARN, Check
from lorakit.verify.subject import Subject

# A float32 merge changes only the order of a sum: its logits stay this close (README: within 1e-4).
FLOAT32_MAX_GAP = 1e-4


def _compare(model, prompts: list[list[int]], answers: list[list[int]], reference: list) -> tuple[float, int]:
    """(largest max-gap over the sequences, how many greedy answers differ from the reference's), from one
    teacher-forced pass per sequence: greedy answers are equal exactly when the top token follows the answer."""
    worst, differ = 0.0, 0
    for ids, answer, want in zip(prompts, answers, reference):
        got = logits(model, ids + answer)
        worst = max(worst, logit_gap(got, want).max)
        differ += first_pick_apart(got, len(ids), answer) is not None
    return worst, differ


def check_merge(subject: Subject) -> Check:
    run, cfg = subject.run, subject.cfg
    # base + adapter unmerged, in float32 (a 4-bit base dequantized, as merge does): the reference
    reference = load_run_model(run, cfg.model, subject.session.tokenizer, dtype="float32", dequantize=True).eval()
    prompts = subject.training_prompts()
    gen, stops = subject.greedy(), subject.session.template.end_token_ids
    want = [a.token_ids for a in generate_ids(reference, subject.session.tokenizer, prompts, gen, stops)]
    reference_logits = [logits(reference, ids + answer) for ids, answer in zip(prompts, want)]
    del reference  # three float32 copies of a model need not be held at once
    merged = subject.merged()
    gap32, differ32 = _compare(merged, prompts, want, reference_logits)
    saved = base_checkpoint_dtype(cfg)
    name = str(saved).removeprefix("torch.")
    details = {"float32_max_gap": gap32, "float32_answers_differ": differ32, "saved_dtype": name,
               "answers": len(want)}
    n = len(want)
    if gap32 > FLOAT32_MAX_GAP or differ32:
        return Check("merge", FAIL, f"the float32 merge is not base + adapter: largest logit gap {gap32:.2e} "
                     f"(over {FLOAT32_MAX_GAP:.0e} allowed), {differ32} of {n} greedy answers differ", details=details)
    line = f"float32 merge: largest logit gap {gap32:.1e}, all {n} greedy answers equal"
    if saved == torch.float32:
        return Check("merge", PASS, f"{line} (merge saves float32)", details=details)
    rounded = copy.deepcopy(merged).to(saved)
    gap, differ = _compare(rounded, prompts, want, reference_logits)
    details.update(saved_max_gap=gap, saved_answers_differ=differ)
    line += f"; saved as {name} (the base checkpoint's dtype): largest logit gap {gap:.3f}"
    if differ:
        return Check("merge", WARN, f"{line}, and {differ} of {n} greedy answers change; merge with --dtype float32 "
                     "to keep them", details=details)
    return Check("merge", PASS, f"{line}, greedy answers equal", details=details)
