"""Sampling through the Gumbel-max processor draws from the distribution ``do_sample=True`` draws from."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.config import GenerationConfig
from lorakit.infer.generate import generate_ids, sampling_kwargs
from lorakit.infer.sampling import GumbelMax, sampling_processors
from lorakit.model.loader import load_tokenizer
from tests.conftest import make_tiny_model_dir

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def softmax_of(values: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in values)
    return [math.exp(v) / total for v in values]


# The distributions worked out by hand from LOGITS, as transformers' warpers define them.
def expected(gen: GenerationConfig) -> list[float]:
    scaled = [v / gen.temperature for v in LOGITS.tolist()]
    keep = list(range(len(scaled)))
    if gen.top_k:
        keep = sorted(keep, key=lambda i: -scaled[i])[: gen.top_k]
    if gen.top_p < 1.0:  # the likeliest tokens until their mass reaches top_p (the one crossing it kept)
        probs = softmax_of([scaled[i] for i in keep])
        order = sorted(range(len(keep)), key=lambda j: -probs[j])
        kept, mass = [], 0.0
        for j in order:
            kept.append(keep[j])
            mass += probs[j]
            if mass >= gen.top_p:
                break
        keep = kept
    if gen.min_p:
        probs = dict(zip(keep, softmax_of([scaled[i] for i in keep])))
        top = max(probs.values())
        keep = [i for i in keep if probs[i] >= gen.min_p * top]
    probs = dict(zip(keep, softmax_of([scaled[i] for i in keep])))
    return [probs.get(i, 0.0) for i in range(len(scaled))]


@pytest.mark.parametrize("gen", [
    GenerationConfig(temperature=1.0),
    GenerationConfig(temperature=0.5),
    GenerationConfig(temperature=1.3, top_k=3),
    GenerationConfig(temperature=1.0, top_p=0.8),
    GenerationConfig(temperature=0.8, min_p=0.2),
], ids=["t1", "t0.5", "topk", "topp", "minp"])
def test_the_argmax_of_noised_logits_is_a_draw_from_the_warped_softmax(gen):
    torch.manual_seed(0)
    n = 200_000
    scores = sampling_processors(gen)(torch.zeros(n, 1, dtype=torch.long), LOGITS.repeat(n, 1))
    counts = torch.bincount(scores.argmax(-1), minlength=len(LOGITS)).double() / n
    # A frequency's standard error is at most sqrt(0.25 / n) = 0.0011: 0.006 is over 5 of them,
    # and the seed fixes the draws, so the test does not flake. Filtered tokens are never drawn.
    for got, want in zip(counts.tolist(), expected(gen)):
        assert abs(got - want) < 0.006, (counts.tolist(), expected(gen))
        if want == 0.0:
            assert got == 0.0


def test_the_noise_is_finite_and_leaves_filtered_logits_out():
    scores = torch.tensor([[0.0, -math.inf, 1.0]]).repeat(50_000, 1)
    noised = GumbelMax()(None, scores)
    assert torch.isfinite(noised[:, [0, 2]]).all()
    assert (noised[:, 1] == -math.inf).all()


def test_sampling_settings_become_lorakit_processors_and_generate_decodes_greedily():
    kwargs = sampling_kwargs(GenerationConfig(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05))
    processors = kwargs.pop("logits_processor")
    assert kwargs == {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None,
                      "repetition_penalty": None}
    assert [type(p).__name__ for p in processors] == [
        "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper", "GumbelMax"]
    assert [type(p).__name__ for p in sampling_kwargs(GenerationConfig(temperature=1.0))["logits_processor"]] == [
        "GumbelMax"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("sampling") / "m")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer(str(folder))


def test_generate_samples_the_first_token_from_the_models_own_distribution(tiny):
    """Through generate_ids, end to end: the first sampled token's frequencies match the model's
    softmax over its five likeliest tokens (top_k=5, temperature 0.5 to spread the mass unevenly)."""
    model, tokenizer = tiny
    prompt = tokenizer("the cat sat on", add_special_tokens=False)["input_ids"]
    gen = GenerationConfig(max_new_tokens=1, temperature=0.5, top_k=5, seed=3, batch_size=4000)
    answers = generate_ids(model, tokenizer, [prompt] * 4000, gen, frozenset(), group=4000)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].float() / 0.5
    top = logits.topk(5)
    want = torch.softmax(top.values, -1)
    drawn = torch.tensor([a.token_ids[0] for a in answers])
    assert set(drawn.tolist()) <= set(top.indices.tolist())
    got = torch.stack([(drawn == t).double().mean() for t in top.indices])
    # Standard error at most sqrt(0.25 / 4000) = 0.008: 0.04 is 5 of them (seeded, so no flakes).
    assert (got - want.double()).abs().max() < 0.04, (got, want)
    same = generate_ids(model, tokenizer, [prompt] * 4000, gen, frozenset(), group=4000)
    assert [a.token_ids for a in same] == [a.token_ids for a in answers]  # the seed fixes the draws
