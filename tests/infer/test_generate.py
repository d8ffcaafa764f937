"""Batched generation: equal to one prompt at a time, sampling options honoured, order kept.

Why the comparison stops at near-ties: a left-padded batch computes the same logits as the
prompt alone only up to float rounding (different matrix shapes, masked positions). Where the
two best tokens are within rounding of each other, either may win, and after that the
answers legitimately differ. So each prompt's reference is its greedy answer alone up to
the first step whose top-2 logit gap is under ``MIN_GAP``; the batched answer must start
with exactly those tokens. A real fault (right padding, a missing attention mask, answers
shuffled between rows) changes tokens at clear steps and fails. Each test also checks that
the clear prefixes cover most of the tokens, so a test cannot pass by comparing nothing.
The embedded SmolLM2 is the real case: a trained model whose greedy answers are clear.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.config import GenerationConfig
from lorakit.templates import resolve_template
from lorakit.infer.generate import finish_reason, generate_batch, generate_ids, prompt_ids, sampling_kwargs
from lorakit.infer.session import open_session
from lorakit.model.loader import load_tokenizer
from tests.conftest import ARCHITECTURES, make_tiny_model_dir, needs_embedded

MIN_GAP = 1e-3

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "What is 12 times 12?",
    "Write one sentence about the sea.",
    "Translate 'good morning' into Spanish.",
    "Hi",
    "List the first five prime numbers, separated by commas, and say nothing else.",
    "Who wrote Romeo and Juliet? Answer in a few words.",
]


@torch.inference_mode()
def clear_prefix(model, tokenizer, ids: list[int], max_new_tokens: int, stop_ids: frozenset[int]) -> list[int]:
    """Greedy tokens for ``ids`` alone, up to the first step whose two best logits nearly tie."""
    out = model.generate(
        input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
        max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=tokenizer.pad_token_id,
        output_logits=True, return_dict_in_generate=True, **sampling_kwargs(GenerationConfig()),
    )
    tokens = out.sequences[0, len(ids) :].tolist()
    for step, logits in enumerate(out.logits):
        best, second = logits[0].float().topk(2).values.tolist()
        if best - second < MIN_GAP:
            return tokens[:step]
    return tokens


def assert_batch_matches_alone(model, tokenizer, template, max_new_tokens: int, min_coverage: float) -> None:
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(QUESTIONS))
    batched = generate_batch(model, tokenizer, template, conversations, gen)
    compared = total = 0
    for conv, answer in zip(conversations, batched):
        ids = prompt_ids(tokenizer, template, conv)
        reference = clear_prefix(model, tokenizer, ids, max_new_tokens, template.end_token_ids)
        assert answer.token_ids[: len(reference)] == reference, conv[0]["content"]
        assert answer.prompt_tokens == len(ids)
        compared += len(reference)
        total += answer.new_tokens
    assert compared >= min_coverage * total, f"only {compared} of {total} tokens were clear enough to compare"


def test_greedy_switches_every_sampling_option_off():
    greedy = sampling_kwargs(GenerationConfig(top_k=40, min_p=0.1, repetition_penalty=1.3))
    assert greedy == {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None,
                      "repetition_penalty": 1.3}
    # None (not leaving the key out) keeps a model's own top_k=50 out of it; sampling applies the
    # user's settings through lorakit's processors (tests/infer/test_sampling.py).
    assert sampling_kwargs(GenerationConfig(temperature=1.0))["top_k"] is None


def test_finish_reason():
    assert finish_reason([5, 9, 2], frozenset({2}), 8) == "stop"
    assert finish_reason([5, 9, 7], frozenset({2}), 3) == "length"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("gen") / "m")
    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, tokenizer, resolve_template(tokenizer, "auto")


def test_batch_equals_one_by_one_on_a_tiny_model(tiny):
    model, tokenizer, template = tiny
    assert_batch_matches_alone(model, tokenizer, template, max_new_tokens=10, min_coverage=0.5)


def test_seeded_sampling_repeats_and_other_seeds_differ(tiny):
    model, tokenizer, template = tiny
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]]

    def sample(seed: int) -> list[list[int]]:
        gen = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=50, seed=seed, batch_size=3)
        return [a.token_ids for a in generate_batch(model, tokenizer, template, convs, gen)]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_progress_counts_every_prompt_and_order_is_kept(tiny):
    model, tokenizer, template = tiny
    prompts = [prompt_ids(tokenizer, template, [{"role": "user", "content": q}]) for q in QUESTIONS]
    seen: list[int] = []
    gen = GenerationConfig(max_new_tokens=3, batch_size=3)
    answers = generate_ids(model, tokenizer, prompts, gen, template.end_token_ids, progress=seen.append)
    assert sum(seen) == len(prompts) and len(seen) == 3
    # Batches are formed longest first; the answers still come back in the order asked.
    assert [a.prompt_tokens for a in answers] == [len(p) for p in prompts]


@pytest.mark.slow
@needs_embedded
def test_batch_equals_one_by_one_on_the_embedded_model(embedded_cache: Path):
    session = open_session("smollm2-135m-instruct", embedded_cache)
    assert_batch_matches_alone(session.model, session.tokenizer, session.template, max_new_tokens=12,
                               min_coverage=0.9)


def test_runs_of_one_token_prompts_answer_as_each_alone(tiny):
    """A prompt of one token leaves nothing to read ahead (the cache would be of zero tokens): generate
    reads it itself, and the answers are those of group=1."""
    model, tokenizer, _ = tiny
    gen = GenerationConfig(max_new_tokens=4, temperature=1.0, seed=1, batch_size=4)
    grouped = generate_ids(model, tokenizer, [[7]] * 4, gen, frozenset(), group=2)
    alone = generate_ids(model, tokenizer, [[7]] * 4, gen, frozenset())
    assert [a.token_ids for a in grouped] == [a.token_ids for a in alone] and len(grouped[0].token_ids) == 4


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_runs_of_one_prompt_read_it_once_and_answer_as_each_alone(tmp_path, arch):
    """group=k (GRPO's k completions of a prompt) prefills each prompt once and copies its cache to
    the k rows: the answers, greedy and sampled with a seed, are those of reading every row.

    Exact equality in float32: the two ways differ only in the batch shape of the prompt's pass, a
    difference of float rounding (~1e-7 relative); a greedy or sampled token changes only where two
    logits or a uniform draw and a cumulative probability are that close, which these prompts do not
    come near on any CPU class. Every architecture the export supports is checked, Gemma-2's
    sliding-window layers and Bloom's ALiBi (positions from the mask) among them.
    """
    folder = make_tiny_model_dir(tmp_path / arch, arch=arch)
    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    template = resolve_template(tokenizer, "auto")
    unique = [prompt_ids(tokenizer, template, [{"role": "user", "content": q}]) for q in QUESTIONS[5:8]]
    assert len({len(p) for p in unique}) == 3  # left padding is exercised
    prompts = [p for p in unique for _ in range(3)]
    for gen in (GenerationConfig(max_new_tokens=8, batch_size=6),
                GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=0, seed=3, batch_size=9)):
        alone = generate_ids(model, tokenizer, prompts, gen, template.end_token_ids)
        shapes: list[tuple[int, ...]] = []
        hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                               with_kwargs=True)
        shared = generate_ids(model, tokenizer, prompts, gen, template.end_token_ids, group=3)
        hook.remove()
        assert [a.token_ids for a in shared] == [a.token_ids for a in alone]
        width = max(map(len, unique))
        rows = min(9, gen.batch_size // 3 * 3)
        assert shapes[:2] == [(rows // 3, width - 1), (rows, 1)]  # each prompt read once, then only its last token
        assert [a.prompt_tokens for a in shared] == [len(p) for p in prompts]
    with pytest.raises(ValueError, match="runs of 2"):
        generate_ids(model, tokenizer, prompts, gen, template.end_token_ids, group=2)
