"""Weights loaded in bf16 (any CPU, GPU) or fp16 (GPU) train, evaluate, merge and generate.

``model.dtype: auto`` is bf16 on every recent GPU, so this is what a GPU run with defaults does.
On CPU the same code runs with the same dtypes: a tiny model, a few steps, compared with the
float32 run of the same seed. On a CPU without AVX512-BF16 torch emulates bf16: slow, but it runs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.config import GenerationConfig
from lorakit.data.samples import Sample
from lorakit.eval.compare import answer_loss
from lorakit.export.merge import merge_run
from lorakit.infer.generate import generate_batch
from lorakit.infer.session import open_session
from lorakit.train import recipe
from tests.train.helpers import adapter, metrics, tiny_config

GPU = pytest.mark.gpu
CASES = [
    # (weights, autocast precision): bf16 weights with float32 compute of the LoRA parameters
    # alone, then under bf16 autocast (what precision auto picks where bf16 is native).
    pytest.param("bfloat16", "fp32", id="bf16-weights"),
    pytest.param("bfloat16", "bf16", id="bf16-weights-bf16-autocast"),
    pytest.param("bfloat16", "bf16", id="gpu-bf16", marks=GPU),
    pytest.param("float16", "fp16", id="gpu-fp16", marks=GPU),
]
# The first step's loss is the base model's (LoRA's B starts at zero): in bf16 or fp16 weights it
# differs from float32 only by the weights' rounding (8 bits of mantissa in bf16), about 1% here.
FIRST_LOSS_RTOL = 2e-2
STEPS = 8


@pytest.fixture(scope="module")
def fp32_losses(tmp_path_factory) -> tuple:
    from tests.conftest import make_tiny_model_dir

    tmp = tmp_path_factory.mktemp("half")
    model_dir = make_tiny_model_dir(tmp / "model")
    cfg = tiny_config(model_dir, tmp / "fp32", *_settings("float32", "fp32"))
    recipe.run(cfg)
    return model_dir, [r["loss"] for r in metrics(cfg.output_dir) if "loss" in r]


def _settings(dtype: str, precision: str) -> tuple[str, ...]:
    return (f"model.dtype={dtype}", f"train.precision={precision}", f"train.max_steps={STEPS}", "train.batch_size=4",
            "train.learning_rate=0.02", "train.logging_steps=1", "train.warmup=0", "train.scheduler=constant",
            "train.save_steps=4", "lora.rank=8")


@pytest.mark.parametrize(("dtype", "precision"), CASES)
def test_half_precision_weights_train_merge_and_generate(fp32_losses, tmp_path, dtype, precision):
    model_dir, reference = fp32_losses
    cfg = tiny_config(model_dir, tmp_path, *_settings(dtype, precision))
    summary = recipe.run(cfg)
    run = cfg.output_dir
    assert summary["precision"] == precision and summary["steps"] == STEPS
    losses = [r["loss"] for r in metrics(run) if "loss" in r]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[0] == pytest.approx(reference[0], rel=FIRST_LOSS_RTOL)
    # It learns like the float32 run: the same drop over the run, within a quarter of it.
    assert losses[-1] < 0.8 * losses[0]
    assert abs((losses[0] - losses[-1]) - (reference[0] - reference[-1])) < 0.25 * (reference[0] - reference[-1])

    # peft keeps the LoRA parameters in float32 over half-precision frozen weights, and saves them so.
    saved = adapter(run)
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in saved.items())

    # Evaluation and generation load the run as it trained: weights in the run's dtype.
    session = open_session(str(run), cfg.model.cache_dir)
    assert next(session.model.get_base_model().model.parameters()).dtype == getattr(torch, dtype)
    samples = [Sample([{"role": "user", "content": "Say the city of Maria."}, {"role": "assistant", "content": "Lisbon"}],
                      "held-out")]
    tuned_loss = answer_loss(session, samples, max_length=128, batch_size=2)
    with session.base_only():
        base_loss = answer_loss(session, samples, max_length=128, batch_size=2)
    assert torch.isfinite(torch.tensor([tuned_loss, base_loss])).all() and tuned_loss < base_loss
    gen = GenerationConfig(max_new_tokens=6)
    prompt = [[{"role": "user", "content": "Say the city of Maria."}]]
    answer = generate_batch(session.model, session.tokenizer, session.template, prompt, gen)[0]
    assert 0 < answer.new_tokens <= 6 and answer.finish_reason in ("stop", "length")

    # The merge folds in float32 and saves like the base (float32 here); it computes what the run did.
    merged = AutoModelForCausalLM.from_pretrained(merge_run(run, tmp_path / "merged")).eval()
    assert merged.dtype == torch.float32
    ids = torch.tensor([session.tokenizer("What is two plus two?")["input_ids"]])
    with torch.no_grad():
        ours = session.model(input_ids=ids.to(session.model.device)).logits.float().cpu()
        folded = merged(input_ids=ids).logits
    # The run computes with half-precision base weights, the merged model with float32 ones.
    assert (folded - ours).abs().max() < 0.05 * ours.abs().max()
