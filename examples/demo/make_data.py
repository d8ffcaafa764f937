"""Generate the demo task: pull a person's name, age and city out of a sentence as JSON.

Why this task: the answer is exact and checkable, the base SmolLM2-135M answers it in
free prose (so it scores near zero on exact match), and a LoRA learns the format and the
copying in a few minutes on two CPU cores. Sentences are built from many phrasings so the
model has to find the fields, not copy a fixed position.

Run: python examples/demo/make_data.py   (writes train.jsonl and eval.jsonl beside itself)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN = 240
N_EVAL = 40

NAMES = (
    "Maria Jonas Aiko Tomasz Leila Omar Priya Lucas Ingrid Mateo Chloe Ravi Sofia Kwame Elena Hugo "
    "Yuki Nadia Felix Amara Diego Hana Oscar Zara Emil Lucia Tariq Freya Pablo Mei Anton Ines Kofi "
    "Greta Samir Noor Viktor Lina Rafael Ayla Bruno Sanna Idris Clara Teo Esme Malik Jana Arjun Rosa"
).split()
CITIES = (
    "Lisbon|Osaka|Krakow|Nairobi|Toronto|Lima|Oslo|Hanoi|Porto|Dublin|Accra|Quito|Tbilisi|Lyon|Seville|"
    "Busan|Cork|Perth|Bergen|Tunis|Leeds|Malmo|Graz|Ghent|Turin|Denver|Austin|Calgary|Zurich|Kyoto|"
    "Cairo|Delhi|Manila|Bogota|Santiago|Helsinki|Riga|Vilnius|Tallinn|Sofia|Athens|Naples|Munich|Hamburg"
).split("|")
PHRASINGS = (
    "{name} is {age} years old and lives in {city}.",
    "{name}, {age}, moved to {city} last spring.",
    "Meet {name}: {age} years young and based in {city}.",
    "After many years abroad, {name} ({age}) settled in {city}.",
    "In {city}, {name} celebrated turning {age} with friends.",
    "{name} works as a teacher in {city} and is {age}.",
    "The new neighbour in {city} is {name}, aged {age}.",
    "At {age}, {name} opened a small bakery in {city}.",
    "{city} has been home to {name} since they were {age}.",
    "Our guide today, {name}, is {age} and grew up in {city}.",
    "{name} just turned {age}; the party was in {city}.",
    "A {age}-year-old named {name} won the chess cup in {city}.",
)
INSTRUCTION = "Extract the person's name, age and city from the text. Answer with JSON only."


def answer(name: str, age: int, city: str) -> str:
    return json.dumps({"name": name, "age": age, "city": city})


def make(rng: random.Random, n: int, seen: set[tuple[str, int, str]]) -> list[dict[str, str]]:
    rows = []
    while len(rows) < n:
        name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 89)
        if (name, age, city) in seen:
            continue
        seen.add((name, age, city))
        text = rng.choice(PHRASINGS).format(name=name, age=age, city=city)
        rows.append({"instruction": INSTRUCTION, "input": text, "output": answer(name, age, city)})
    return rows


def main() -> None:
    rng = random.Random(SEED)
    seen: set[tuple[str, int, str]] = set()
    here = Path(__file__).parent
    for name, count in (("train.jsonl", N_TRAIN), ("eval.jsonl", N_EVAL)):
        rows = make(rng, count, seen)  # `seen` keeps every eval sample out of training
        with (here / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
