"""Pairs of answers for the demo task, for preference tuning (method: dpo or orpo).

Each demo sample becomes one pair: the same prompt, the exact JSON as the chosen answer, and as
the rejected one a plausible mistake of the kind the untuned model makes: name and city swapped,
the wrong age, prose or a code fence around the JSON, a missing field, the age as a string, or
capitalised keys. The pairs are built from train.jsonl and eval.jsonl, so the held-out prompts
stay held out. A fixed seed picks the mistakes.

Run: python examples/demo/make_pairs.py   (writes pairs_train.jsonl and pairs_eval.jsonl beside itself)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 4321
Fields = dict[str, object]


def _swapped(f: Fields, rng: random.Random) -> str:
    return json.dumps({"name": f["city"], "age": f["age"], "city": f["name"]})


def _wrong_age(f: Fields, rng: random.Random) -> str:
    age = int(f["age"])
    wrong = int(str(age)[::-1]) if age % 11 and rng.random() < 0.4 else age + rng.choice([-10, -3, -1, 1, 2, 5])
    return json.dumps({**f, "age": wrong if wrong != age else age + 1})


def _prose(f: Fields, rng: random.Random) -> str:
    text = json.dumps(f)
    return rng.choice([
        f"Sure! Here is the JSON:\n{text}",
        f"{text}\n\nLet me know if you need anything else.",
        f"```json\n{text}\n```",
        f"JSON: {text}",
        f"The person is {f['name']}, aged {f['age']}, from {f['city']}: {text}",
    ])


def _missing(f: Fields, rng: random.Random) -> str:
    left = rng.choice(["age", "city"])
    return json.dumps({k: v for k, v in f.items() if k != left})


def _age_as_text(f: Fields, rng: random.Random) -> str:
    return json.dumps({**f, "age": str(f["age"])})


def _capitalised(f: Fields, rng: random.Random) -> str:
    return json.dumps({k.capitalize(): v for k, v in f.items()})


MISTAKES: dict[str, Callable[[Fields, random.Random], str]] = {
    "swapped": _swapped, "wrong_age": _wrong_age, "prose": _prose, "missing_field": _missing,
    "age_as_text": _age_as_text, "capitalised_keys": _capitalised,
}


def pair(sample: dict[str, str], rng: random.Random) -> dict[str, str]:
    fields = json.loads(sample["output"])
    mistake = rng.choice(list(MISTAKES))
    return {
        # The same user turn the SFT shape renders: instruction, a blank line, the input.
        "prompt": f"{sample['instruction']}\n\n{sample['input']}",
        "chosen": sample["output"],
        "rejected": MISTAKES[mistake](fields, rng),
        "mistake": mistake,  # not read by lorakit: for looking at which mistakes the model still prefers
    }


def main() -> None:
    rng = random.Random(SEED)
    here = Path(__file__).parent
    for source, target in (("train.jsonl", "pairs_train.jsonl"), ("eval.jsonl", "pairs_eval.jsonl")):
        rows = [json.loads(line) for line in (here / source).read_text(encoding="utf-8").splitlines()]
        with (here / target).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(pair(row, rng), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
