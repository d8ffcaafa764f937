"""It stops: greedy answers to the held-out prompts end with the template's end-of-turn token.

An answer that runs to the limit (twice the longest reference answer and some, see
``Subject.limit``) is one a deployed model would keep generating. The base model's share is
reported beside the tuned one's, so the user sees what training changed.
"""

from __future__ import annotations

from lorakit.infer.generate import Answer
from lorakit.verify.report import FAIL, PASS, WARN, Check
from lorakit.verify.subject import Subject

EXAMPLES = 3


def _ran_on(answers: list[Answer]) -> list[int]:
    return [k for k, a in enumerate(answers) if a.finish_reason == "length"]


def check_stops(subject: Subject) -> Check:
    prompts = subject.training_prompts()
    tuned = subject.tuned_answers()
    with subject.session.base_only():
        base = subject.answer(prompts)
    limit = subject.limit()
    ran, base_ran = _ran_on(tuned), _ran_on(base)
    share, base_share = len(ran) / len(tuned), len(base_ran) / len(base)
    end_tokens = sorted(subject.session.tokenizer.convert_ids_to_tokens(sorted(subject.session.template.end_token_ids)))
    examples = [{"sample": subject.held.samples[k].origin, "answer_tail": tuned[k].text[-120:]}
                for k in ran[:EXAMPLES]]
    details = {"limit": limit, "end_tokens": end_tokens, "tuned_ran_to_limit": share,
               "base_ran_to_limit": base_share, "examples": examples}
    counts = (f"{len(ran)} of {len(tuned)} tuned answers ran to the {limit}-token limit without "
              f"{' or '.join(end_tokens)} (base model: {len(base_ran)} of {len(base)})")
    if not ran:
        return Check("it stops", PASS, f"every tuned answer ended with {' or '.join(end_tokens)} "
                     f"within {limit} tokens (base model: {len(base_ran)} of {len(base)} ran on)", details=details)
    verdict = FAIL if share >= 0.5 else WARN
    where = "; ".join(f"{e['sample']}: ...{e['answer_tail'][-60:]!r}" for e in examples)
    return Check("it stops", verdict, f"{counts}; e.g. {where}", details=details)
