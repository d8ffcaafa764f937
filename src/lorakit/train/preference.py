"""Preference tuning (DPO, ORPO) on the SFT trainer: the same loop, checkpoints and resume, another loss.

The core quantity is the sum of an answer's token log-probs under the model, log p(y | x). It is
computed as the SFT loss is (``model.loss.sequence_logps``): the model returns its final hidden states and only
the answer positions are projected to the vocabulary, so no batch x length x vocab tensor is
ever made. Chosen and rejected go through one forward pass: a batch of B pairs is 2B rows,
the B chosen sides first.

DPO compares the tuned model with a frozen reference, here the same weights with the adapter
switched off (or, when the run starts from an SFT adapter, with that adapter frozen), so no second
model is held in memory. With r = beta * (log p(y|x) - log p_ref(y|x)):

    sigmoid: loss = -log sigmoid(r_chosen - r_rejected)                    (the DPO paper's)
    ipo:     loss = (h - 1 / (2 beta))^2, h the same difference on per-token mean log-probs

IPO uses means, as TRL does, so its target margin does not grow with the answers' length.
ORPO needs no reference: with m the per-token mean log-prob of an answer and
odds = m - log(1 - exp(m)),

    loss = -m_chosen + lambda * -log sigmoid(odds_chosen - odds_rejected)

Every loss is a mean over pairs; a micro-batch divides its sum by the pairs of the whole
optimizer step, so accumulated steps equal one large batch, as SFT's token weighting does.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel

from lorakit.config import PreferenceConfig
from lorakit.data.collate import PairCollator
from lorakit.model.loss import sequence_logps
from lorakit.train.microbatch import Batch, plan
from lorakit.train.trainer import LorakitTrainer
from lorakit.transformers_internals import prepare_inputs

REFERENCE = "reference"  # the name of the frozen copy of a starting adapter
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def split_pairs(inputs: Batch, budget: int) -> list[Batch]:
    """Padding-free passes (see ``microbatch``) that keep each pair's two rows in the same pass.

    A pair is planned as one row of its longer side with half the budget, since it runs as two rows.
    """
    mask = inputs["attention_mask"]
    pairs = mask.shape[0] // 2
    lengths = mask.sum(dim=1).tolist()
    longer = [max(lengths[k], lengths[k + pairs]) for k in range(pairs)]
    groups = plan(longer, max(budget // 2, 1))
    if len(groups) == 1:
        return [inputs]
    passes = []
    for group in groups:
        rows = group + [k + pairs for k in group]
        width = max(longer[k] for k in group)
        passes.append({key: value[rows, :width] for key, value in inputs.items()})
    return passes


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float, kind: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the loss, and the implicit rewards of chosen and rejected (beta x log-ratio to the reference)."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    difference = (chosen - ref_chosen) - (rejected - ref_rejected)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * difference)
    elif kind == "ipo":
        losses = (difference - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}: use sigmoid or ipo")
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, weight: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the SFT loss on chosen plus ``weight`` x the odds-ratio term; and the log odds ratio."""

    def log_odds(mean: torch.Tensor) -> torch.Tensor:
        return mean - torch.log1p(-torch.exp(mean).clamp(max=1 - 1e-7))

    ratio = log_odds(chosen_mean) - log_odds(rejected_mean)
    return -chosen_mean - weight * F.logsigmoid(ratio), ratio.detach()


@contextmanager
def reference_model(model: PeftModel):
    """The reference: the named frozen starting adapter when there is one, else the adapter switched off."""
    was_training = model.training
    model.eval()  # deterministic: no dropout in the reference
    try:
        if REFERENCE in model.peft_config:
            active = model.active_adapter
            model.set_adapter(REFERENCE, inference_mode=True)
            try:
                yield model
            finally:
                model.set_adapter(active)  # trainable again, and the reference frozen
        else:
            with model.disable_adapter():
                yield model
    finally:
        model.train(was_training)


class PreferenceTrainer(LorakitTrainer):
    """LorakitTrainer with a pairwise loss; batches come from :class:`PairCollator`."""

    def __init__(self, *args, method: str, preference: PreferenceConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.method, self.preference = method, preference
        self.loss_is_scaled_for_ga = True  # every loss divides by the whole step's pairs
        self._sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        # peft saves every adapter; the frozen reference is the starting run's, already on disk there.
        shutil.rmtree(Path(output_dir or self.args.output_dir) / REFERENCE, ignore_errors=True)

    def split_passes(self, inputs: Batch) -> list[Batch]:
        return split_pairs(inputs, self.micro_batch_tokens)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Pairs in the optimizer step (over all ranks), the divisor of every micro-batch's loss."""
        if not batch_samples:
            return None
        pairs = torch.tensor(sum(b["input_ids"].shape[0] // 2 for b in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            pairs = self.accelerator.gather(pairs).sum()
        return pairs

    def _logps(self, model, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(model, inputs, self.loss_chunk_size, self.selective_loss, self.accelerator.autocast())

    def pair_losses(self, model, inputs: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per pair: the loss, and the values logged about it."""
        sums, counts = self._logps(model, inputs)
        pairs = sums.shape[0] // 2
        means = sums / counts.clamp(min=1)
        if self.method == "orpo":
            losses, ratio = orpo_loss(means[:pairs], means[pairs:], self.preference.orpo_lambda)
            chosen, rejected = means[:pairs].detach(), means[pairs:].detach()
            extra = {"log_odds_ratio": ratio, "nll": -chosen}
        else:
            with torch.no_grad(), reference_model(self.accelerator.unwrap_model(model)) as reference:
                ref_sums, _ = self._logps(reference, inputs)
            ipo = self.preference.loss == "ipo"
            policy, ref = (means, ref_sums / counts.clamp(min=1)) if ipo else (sums, ref_sums)
            losses, chosen, rejected = dpo_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:],
                                                self.preference.beta, self.preference.loss)
            extra = {}
        values = {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
                  "rewards/accuracies": (chosen > rejected).float(), **extra}
        return losses, values

    def _remember(self, split: str, values: dict[str, torch.Tensor]) -> None:
        sums = self._sums[split]
        for key, value in values.items():
            sums[key] = sums.get(key, 0) + value.detach().float().sum()
        pairs = next(iter(values.values())).shape[0]
        sums["pairs"] = sums.get("pairs", 0) + torch.tensor(float(pairs), device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.count_tokens(inputs)
        losses, values = self.pair_losses(model, inputs)
        self._remember("train" if model.training else "eval", values)
        count = num_items_in_batch if num_items_in_batch is not None else losses.shape[0]
        loss = losses.sum() / torch.as_tensor(count, device=losses.device).clamp(min=1)
        if model.training and self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as LorakitTrainer does for its SFT loss
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means over the pairs seen since the last log: rewards, margins, accuracy."""
        prefix = next((k[: -len("loss")] for k in logs if k.endswith("eval_loss")), None)
        split = "eval" if prefix is not None else "train" if "loss" in logs else None
        if split is not None and self._sums[split]:
            sums = self._sums[split]
            keys = sorted(sums)
            totals = self.accelerator.reduce(torch.stack([torch.as_tensor(sums[k]).float() for k in keys]), "sum")
            found = dict(zip(keys, totals.tolist()))
            pairs = max(found.pop("pairs"), 1.0)
            logs.update({f"{prefix or ''}{key}": value / pairs for key, value in found.items()})
            self._sums[split] = {}
        super().log(logs, start_time)


def start_from_adapter(base, adapter_dir: Path, with_reference: bool) -> PeftModel:
    """A run's adapter (the recipe opened it) to train further; for DPO also loaded again, frozen, as the reference."""
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    if with_reference:
        model.load_adapter(str(adapter_dir), adapter_name=REFERENCE, is_trainable=False)
        model.set_adapter("default")  # trains; the reference stays frozen
    return model
