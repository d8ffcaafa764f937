"""SimPO's loss equals its formula on log-probs computed separately, one sequence at a time, and
equals TRL's (CPOTrainer with loss_type simpo) run on the same model and pairs."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainingArguments

from lorakit.data.collate import PadCollator, PairCollator
from lorakit.model.loss import sequence_logps
from lorakit.config import SimPOConfig
from lorakit.train.methods.simpo import SimPO, simpo_loss
from lorakit.train.trainer import LorakitTrainer
from tests.conftest import tiny_lora_model
from tests.train.test_preference import encoded_pairs, logp_by_hand


def three_pairs() -> tuple:
    """Pairs whose answers differ in length, so a sum would rank them otherwise than a per-token mean."""
    tokenizer, pairs = encoded_pairs()
    return tokenizer, pairs[:3]


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z))


def test_the_docstrings_worked_example():
    losses, chosen, rejected = simpo_loss(torch.tensor([-6.0]), torch.tensor([3]), torch.tensor([-10.0]),
                                          torch.tensor([4]), beta=2.0, gamma=0.5)
    assert (chosen.item(), rejected.item()) == (-4.0, -5.0)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.5))) == pytest.approx(0.4741, abs=1e-4)


@pytest.mark.parametrize(("gamma", "smoothing"), [(0.5, 0.0), (1.5, 0.1)])
def test_simpo_loss_equals_the_formula_on_separately_computed_logps(tiny_model_dir, tmp_path, gamma, smoothing):
    _, pairs = three_pairs()
    model = tiny_lora_model(tiny_model_dir)
    beta = 2.0
    expected, chosen, rejected = [], [], []
    for pair in pairs:
        (pc, nc), (pr, nr) = logp_by_hand(model, pair.chosen), logp_by_hand(model, pair.rejected)
        chosen.append(beta * pc / nc)
        rejected.append(beta * pr / nr)
        z = chosen[-1] - rejected[-1] - gamma
        expected.append(-(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z))
    method = SimPO(SimPOConfig(beta=beta, gamma=gamma, label_smoothing=smoothing))
    step = LorakitTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                              report_to="none"), method=method)
    losses, values = method.pair_losses(step, model, PairCollator(0)(pairs))

    def close(actual, wanted):
        torch.testing.assert_close(actual.double(), torch.tensor(wanted, dtype=torch.double), rtol=1e-4, atol=1e-5)

    close(losses, expected)
    close(values["rewards/chosen"], chosen)
    close(values["rewards/rejected"], rejected)
    close(values["rewards/margins"], [c - r for c, r in zip(chosen, rejected)])
    assert values["rewards/accuracies"].tolist() == [float(c > r) for c, r in
                                                     zip(values["rewards/chosen"], values["rewards/rejected"])]
    # logged, and plotted, as DPO's are
    assert sorted(values) == sorted(("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"))
    losses.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def trl_simpo(beta: float, gamma: float, smoothing: float, pad_token_id: int):
    """TRL's CPOTrainer set for pure SimPO, without its __init__ (which tokenizes a dataset): only the
    attributes its ``concatenated_forward`` and ``cpo_loss`` read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import that its API may change
        cpo = pytest.importorskip("trl.experimental.cpo", reason="trl is a test dependency: pip install -e '.[test]'")
    trainer = object.__new__(cpo.CPOTrainer)
    trainer.__dict__.update(
        loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=smoothing,
        cpo_alpha=0.0, alpha=0.0,  # no SFT term (CPO-SimPO), no AlphaPO reward shaping
        is_encoder_decoder=False, aux_loss_enabled=False, pad_token_id=pad_token_id,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    return trainer


@pytest.mark.parametrize(("beta", "gamma", "smoothing"), [(2.0, 0.5, 0.0), (2.5, 1.4, 0.1)])
def test_simpo_loss_equals_trls_on_the_same_pairs(tiny_model_dir, beta, gamma, smoothing):
    tokenizer, pairs = three_pairs()
    model = tiny_lora_model(tiny_model_dir)
    trl = trl_simpo(beta, gamma, smoothing, tokenizer.pad_token_id)
    pad = PadCollator(tokenizer.pad_token_id)
    sides = {"chosen": pad([p.chosen for p in pairs]), "rejected": pad([p.rejected for p in pairs])}
    with torch.no_grad():
        # TRL pads, concatenates and runs the model itself, and averages the answers' log-probs for simpo
        trl_chosen, trl_rejected = trl.concatenated_forward(
            model, {f"{side}_{key}": value for side, batch in sides.items() for key, value in batch.items()})[:2]
        trl_losses, trl_chosen_rewards, trl_rejected_rewards = trl.cpo_loss(trl_chosen, trl_rejected)
        sums, counts = sequence_logps(model, PairCollator(tokenizer.pad_token_id)(pairs))
    torch.testing.assert_close(sums / counts, torch.cat([trl_chosen, trl_rejected]), rtol=1e-5, atol=1e-5)
    losses, chosen, rejected = simpo_loss(sums[:3], counts[:3], sums[3:], counts[3:], beta, gamma, smoothing)
    torch.testing.assert_close(losses, trl_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chosen, trl_chosen_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rejected, trl_rejected_rewards, rtol=1e-5, atol=1e-6)
