"""GRPO's loss: equal to the formula on separately computed log-probs, and to TRL's GRPOTrainer on the same
batch, for each loss type, with and without the KL term, with a fresh and a reused batch of completions;
its advantages; the prompt rows it reads."""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.data.prompt_rows import to_prompt_row
from lorakit.data.records import DataError, Record
from lorakit.infer.generate import prompt_ids
from lorakit.labels import IGNORE_INDEX
from lorakit.model.loss import token_logps
from lorakit.templates import resolve_template
from lorakit.train.methods.grpo_loss import group_advantages, grpo_loss
from tests.conftest import make_tokenizer
from tests.train.test_preference import lora_model

PROMPTS = ["What is two plus two?", "Extract the name: Maria is 34."]
# Two completions per prompt, of different lengths; the second ends with no end-of-turn token (cut).
COMPLETIONS = ["It is four.", "Four, I think, or maybe five", "Maria", '{"name": "Maria", "age": 34}']
ADVANTAGES = [0.8, -0.8, 1.1, -0.4]
TEMPERATURE, EPSILON, EPSILON_HIGH, MAX_COMPLETION = 0.7, 0.2, 0.28, 16
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


def fixed_batch() -> tuple[list[list[int]], list[list[int]], dict]:
    """Prompt and completion ids (completions 0 and 2 end with the end-of-turn token), and lorakit's batch."""
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    end = sorted(template.end_token_ids)[0]
    prompts, completions = [], []
    for k, text in enumerate(COMPLETIONS):
        prompts.append(prompt_ids(tokenizer, template, [{"role": "user", "content": PROMPTS[k // 2]}]))
        completions.append(tokenizer(text, add_special_tokens=False)["input_ids"] + ([end] if k % 2 == 0 else []))
    rows = [Encoded(p + c, [IGNORE_INDEX] * len(p) + c) for p, c in zip(prompts, completions)]
    return prompts, completions, PadCollator(tokenizer.pad_token_id)(rows)


def logps_by_hand(model, prompt: list[int], completion: list[int]) -> list[float]:
    """Each completion token's log-prob at the temperature, from the model's full logits, the row alone."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0].double() / TEMPERATURE, dim=-1)
    return [float(logps[len(prompt) + t - 1, token]) for t, token in enumerate(completion)]


def loss_by_hand(policy, old, ref, loss_type: str, beta: float) -> float:
    """The loss, token by token in Python floats (see grpo_loss.py's docstring)."""
    per_row = []
    for logps, olds, refs, advantage in zip(policy, old, ref, ADVANTAGES):
        losses = []
        for lp, op, rp in zip(logps, olds, refs):
            ratio = math.exp(lp - op)
            clipped = min(max(ratio, 1 - EPSILON), 1 + EPSILON_HIGH)
            loss = -min(ratio * advantage, clipped * advantage)
            if beta:
                loss += beta * ratio * (math.exp(rp - lp) - (rp - lp) - 1)
            losses.append(loss)
        per_row.append(losses)
    tokens = sum(len(r) for r in per_row)
    if loss_type == "grpo":
        return sum(sum(r) / len(r) for r in per_row) / len(per_row)
    if loss_type == "dr_grpo":
        return sum(sum(r) for r in per_row) / (len(per_row) * MAX_COMPLETION)
    return sum(sum(r) for r in per_row) / tokens


def older_policy(model):
    """The same model a little before: its LoRA B moved, so ratios leave 1 (some beyond the clip)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.15)
    return model


def models_and_batch(model_dir, iterations: int) -> tuple:
    """The fixed batch; the policy; the reference as a separately loaded model; the older policy (iterations > 1)."""
    prompts, completions, batch = fixed_batch()
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    old_model = older_policy(lora_model(model_dir)) if iterations > 1 else None
    return prompts, completions, batch, lora_model(model_dir), base, old_model


def lorakit_loss(model, batch, old_model, ref_model, loss_type: str, beta: float) -> torch.Tensor:
    logps, keep = token_logps(model, batch, temperature=TEMPERATURE)
    rows = keep.nonzero()[:, 0]
    with torch.no_grad():
        old = token_logps(old_model, batch, temperature=TEMPERATURE)[0] if old_model is not None else logps.detach()
        ref = token_logps(ref_model, batch, temperature=TEMPERATURE)[0] if beta else None
    advantages = torch.tensor(ADVANTAGES)[rows]
    return grpo_loss(logps, old, ref, advantages, rows, keep.shape[0], loss_type=loss_type, epsilon=EPSILON,
                     epsilon_high=EPSILON_HIGH, beta=beta, max_completion_length=MAX_COMPLETION)


@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_the_loss_equals_the_formula_on_separately_computed_logps(tiny_model_dir, loss_type, beta, iterations):
    prompts, completions, batch, model, base, old_model = models_and_batch(tiny_model_dir, iterations)
    policy = [logps_by_hand(model, p, c) for p, c in zip(prompts, completions)]
    old = [logps_by_hand(old_model, p, c) for p, c in zip(prompts, completions)] if old_model else policy
    ref = [logps_by_hand(base, p, c) for p, c in zip(prompts, completions)]
    if iterations > 1:  # the reused batch is tested where the clip acts
        assert any(abs(math.exp(a - b) - 1) > EPSILON for r, o in zip(policy, old) for a, b in zip(r, o))
    expected = loss_by_hand(policy, old, ref, loss_type, beta)
    found = lorakit_loss(model, batch, old_model, base, loss_type, beta)
    assert found.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    found.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def trl_trainer(model, loss_type: str, beta: float):
    """A bare TRL 1.16 GRPOTrainer holding only what its ``_compute_loss`` reads (it has no loss to call apart)."""
    trl = pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    trainer = object.__new__(trl.GRPOTrainer)
    trainer.model, trainer.loss_type, trainer.beta = model, loss_type, beta
    trainer.epsilon_low, trainer.epsilon_high, trainer.temperature = EPSILON, EPSILON_HIGH, TEMPERATURE
    trainer.max_completion_length, trainer.current_gradient_accumulation_steps = MAX_COMPLETION, 1
    trainer.importance_sampling_level, trainer.top_entropy_quantile = "token", 1.0
    trainer.off_policy_mask_threshold, trainer.use_vllm, trainer.vllm_importance_sampling_correction = None, False, False
    trainer._entropy_bonus_enabled, trainer.aux_loss_enabled = False, False
    trainer.args = SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=1)
    trainer.accelerator = SimpleNamespace(
        autocast=nullcontext, num_processes=1, is_main_process=True, gather=lambda x: x.reshape(-1),
        reduce=lambda x, reduction: x)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    add_fused_lm_head(model.get_base_model(), temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    return trainer


def trl_inputs(prompts, completions, old, ref) -> dict:
    """TRL's batch: prompts left-padded, completions right-padded, per-token log-probs in completion columns."""
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    inputs = {key: torch.zeros(len(prompts), width, dtype=torch.long) for key, width in
              (("prompt_ids", width_p), ("prompt_mask", width_p), ("completion_ids", width_c),
               ("completion_mask", width_c))}
    for k, (p, c) in enumerate(zip(prompts, completions)):
        inputs["prompt_ids"][k, width_p - len(p):] = torch.tensor(p)
        inputs["prompt_mask"][k, width_p - len(p):] = 1
        inputs["completion_ids"][k, : len(c)] = torch.tensor(c)
        inputs["completion_mask"][k, : len(c)] = 1
    inputs["advantages"] = torch.tensor(ADVANTAGES)
    inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    for key, values in (("old_per_token_logps", old), ("ref_per_token_logps", ref)):
        if values is not None:
            inputs[key] = torch.zeros(len(prompts), width_c)
            for k, row in enumerate(values):
                inputs[key][k, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return inputs


@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_the_loss_equals_trls_on_the_same_batch(tiny_model_dir, loss_type, beta, iterations):
    prompts, completions, batch, model, base, old_model = models_and_batch(tiny_model_dir, iterations)
    found = lorakit_loss(model, batch, old_model, base, loss_type, beta)
    old = [logps_by_hand(old_model, p, c) for p, c in zip(prompts, completions)] if old_model else None
    ref = [logps_by_hand(base, p, c) for p, c in zip(prompts, completions)] if beta else None
    trainer = trl_trainer(model, loss_type, beta)
    expected = trainer._compute_loss(model, trl_inputs(prompts, completions, old, ref))
    # Each side projects to the vocabulary with its own kernel (TRL's fused head, padded on the left).
    assert found.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    if beta:
        assert trainer._metrics["train"]["kl"][-1] > 0


def test_group_advantages_worked_example():
    scores = torch.tensor([[1.0], [0.0], [0.0], [1.0], [0.5], [0.5], [float("nan")], [0.5]])
    found = group_advantages(scores, torch.tensor([1.0]), 4, "group")
    assert found.advantages[:4].tolist() == pytest.approx([0.5 / (0.57735 + 1e-4) * s for s in (1, -1, -1, 1)],
                                                          rel=1e-4)
    assert found.advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # a flat group, and an unscored completion
    assert found.flat_groups.tolist() == [False, True]
    unscaled = group_advantages(scores, torch.tensor([1.0]), 4, "none")
    assert unscaled.advantages[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    weighted = group_advantages(torch.tensor([[1.0, 0.0], [0.0, float("nan")]]), torch.tensor([2.0, 3.0]), 2, "none")
    assert weighted.rewards.tolist() == [2.0, 0.0]  # a None score is left out of the weighted sum


@pytest.mark.parametrize(("fields", "prompt", "columns"), [
    ({"prompt": "Say hi", "answer": "hi"}, "Say hi", {"answer": "hi"}),
    ({"prompt": "Say hi", "completion": "hi", "id": 7}, "Say hi", {"id": 7, "reference": "hi"}),
    ({"instruction": "Count", "input": "to 3", "output": "1 2 3"}, "Count\n\nto 3", {"reference": "1 2 3"}),
    ({"instruction": "Count", "input": ""}, "Count", {}),
    ({"messages": [{"role": "user", "content": "Name?"}], "reference": "Ana"}, "Name?", {"reference": "Ana"}),
    ({"messages": [{"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Ana"}]}, "Name?",
     {"reference": "Ana"}),
])
def test_a_prompt_row_reads_any_shape_with_its_answer_as_reference(fields, prompt, columns):
    row = to_prompt_row(Record(fields, "p.jsonl", "line 3"), None, {})
    assert row.conversation[-1] == {"role": "user", "content": prompt}
    assert row.columns == columns
    assert row.origin == "p.jsonl, line 3"


@pytest.mark.parametrize("fields", [{"answer": "hi"}, {"text": "plain text"}])
def test_a_row_without_a_prompt_is_named_by_file_and_line(fields):
    with pytest.raises(DataError, match="p.jsonl, line 3"):
        to_prompt_row(Record(fields, "p.jsonl", "line 3"), None, {})
