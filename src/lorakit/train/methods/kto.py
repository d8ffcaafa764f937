"""KTO: learn from single answers, each labelled desirable or undesirable, against a frozen reference.

Kahneman-Tversky Optimization (Ethayarajh et al., 2024) needs no pairs: a row is a prompt, one
answer and a label. As in DPO, the quantity is the sum of an answer's token log-probs, log p(y | x),
and the reference is the same weights with the adapter switched off (``reference_model`` in
``train/preference.py``). With r = log p(y|x) - log p_ref(y|x):

    desirable:   loss = desirable_weight   * (1 - sigmoid(beta * (r - z)))
    undesirable: loss = undesirable_weight * (1 - sigmoid(beta * (z - r)))

z is the reference point, an estimate of KL(policy || reference) taken from answers paired
with prompts they were not written for: each row's prompt with the previous row's answer, so
the mismatched answers are the batch's own answers. z = max(0, mean(log p(y'|x) - log p_ref(y'|x)))
over those rows, with no gradient through it. The loss is a mean over rows; the reward logged
for a row is beta * r.

Everything here follows TRL's KTOTrainer (1.16) so the values can be compared: summed, not
averaged, log-probs; the same rotation of answers; the same clamp; the same logged means
(tests/train/test_kto.py checks each against TRL on one batch).

Rows are read as ``{"prompt": ..., "completion": ..., "label": true|false}``, prompt and completion
as text or lists of turns (TRL's unpaired preference format), or as DPO pairs, each split into
its chosen answer (desirable) and its rejected one (undesirable): ``data/answers.py``.

One difference from TRL, on purpose: TRL estimates z from each micro-batch, so with gradient
accumulation its loss depends on how a step is split. Here z is estimated once per optimizer
step from all of the step's answers (``prepare_step``), and the mismatched rows rotate over the
whole step, so accumulated micro-batches, split passes and one large batch give the same loss.
Evaluation, which has no steps, estimates z from each eval batch, as TRL does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lorakit.config import ConfigError, PreferenceConfig, RunConfig
from lorakit.data.answers import ANSWERS, EncodedAnswer
from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.labels import IGNORE_INDEX
from lorakit.train.methods.base import (
    Batch, Method, Step, refuse_rows_of_one_kind, step_share, without_dropout,
)
from lorakit.train.microbatch import split_rows
from lorakit.train.preference import reference_model

_SEQUENCE = ("input_ids", "labels", "attention_mask")


def collate(batch: Sequence[EncodedAnswer], pad_token_id: int) -> Batch:
    """The answers as one padded batch, with a ``desirable`` row mask (the KL rows come from ``kl_rows``)."""
    padded = PadCollator(pad_token_id)([item.encoded for item in batch])
    return {**padded, "desirable": torch.tensor([item.desirable for item in batch], dtype=torch.bool)}


def _split(item: Encoded) -> tuple[list[int], list[int], list[int]]:
    """Prompt ids, then the answer's ids and labels: the answer starts at the first trained token."""
    start = next(k for k, label in enumerate(item.labels) if label != IGNORE_INDEX)
    return item.input_ids[:start], item.input_ids[start:], item.labels[start:]


def mismatched(answers: Sequence[Encoded], max_length: int | None = None) -> list[Encoded]:
    """Row k: the prompt of answer k followed by answer k - 1 (the last answer for k = 0).

    TRL's rotation: (x1, y1), (x2, y2), (x3, y3) become (x1, y3), (x2, y1), (x3, y2), so the
    answers scored for the KL estimate are the batch's own answers, each under a prompt it does
    not reply to. Each answer keeps its labels, the prompt none. A row over ``max_length`` is cut
    at its end, as TRL's collator cuts it. One answer alone is paired with its own prompt: the
    estimate is then that answer's log-ratio (TRL refuses batches of one for this reason).

    For answers encoded as [p1 p1 a1 a1 e] and [p2 a2 e] (a: answer tokens, e: end of turn,
    both trained), the rows are [p1 p1 a2 e] and [p2 a1 a1 e].
    """
    parts = [_split(item) for item in answers]
    rows = []
    for k, (prompt, _, _) in enumerate(parts):
        _, ids, labels = parts[k - 1]
        row = Encoded(prompt + ids, [IGNORE_INDEX] * len(prompt) + labels)
        if max_length is not None:
            row.input_ids, row.labels = row.input_ids[:max_length], row.labels[:max_length]
        rows.append(row)
    return rows


def kl_rows(batches: Sequence[Batch], pad_token_id: int, max_length: int | None = None) -> Batch:
    """The mismatched rows (see ``mismatched``) of every answer in ``batches``, in order, as one padded batch.

    Given the micro-batches of one optimizer step, the estimate is the step's, whatever its split.
    """
    answers = []
    for batch in batches:
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            answers.append(Encoded(ids[:n].tolist(), labels[:n].tolist()))
    return PadCollator(pad_token_id)(mismatched(answers, max_length))


def kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
                average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """z = max(0, mean over the mismatched rows of log p(y'|x) - log p_ref(y'|x)), without gradient.

    For rows with policy log-probs [-20.0, -15.0] and reference ones [-21.0, -15.5]: the mean
    difference is (1.0 + 0.5) / 2 = 0.75, so z = 0.75; had it been negative, z = 0.
    ``average``: the mean of this value over processes, taken before the clamp, as TRL takes it.
    """
    mean = (policy_kl_logps - ref_kl_logps).mean().detach()
    return (mean if average is None else average(mean)).clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float,
    beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the loss, and the reward beta * (log p(y|x) - log p_ref(y|x)) (detached).

    With r = policy_logps - ref_logps and z = ``kl``:
    desirable rows lose desirable_weight * (1 - sigmoid(beta * (r - z))),
    undesirable rows lose undesirable_weight * (1 - sigmoid(beta * (z - r))).

    For beta = 0.1, z = 0.5 and an answer with policy log-prob -10.0 and reference -12.0, r = 2.0:
    desirable, 1 - sigmoid(0.15) = 0.46257 (the model already favours it, so it loses less than
    1/2); undesirable, 1 - sigmoid(-0.15) = 0.53743; its reward is 0.2 either way.
    """
    logratios = policy_logps - ref_logps
    wanted = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    unwanted = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return torch.where(desirable, wanted, unwanted), (beta * logratios).detach()


class KTO(Method):
    name = "kto"
    rows = ANSWERS
    item = "answer"
    reference = True

    def __init__(self, settings: PreferenceConfig, max_length: int | None):
        self.settings = settings
        self.max_length = max_length  # a mismatched row longer than this is cut at its end, as TRL cuts it
        self.pad_token_id = 0

    @classmethod
    def from_config(cls, cfg: RunConfig) -> KTO:
        return cls(cfg.preference, cfg.data.max_length)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        refuse_rows_of_one_kind(cfg, cls.name, ("auto", "preference", "prompt_completion"),
                                "answers labelled desirable or undesirable (prompt, completion, label), or pairs")
        if cfg.train.batch_size * cfg.train.grad_accum < 2:
            raise ConfigError("method: kto estimates its reference point from other answers of the same step: "
                              "train.batch_size x train.grad_accum must be 2 or more")

    def collator(self, pad_token_id, packing):
        self.pad_token_id = pad_token_id  # the mismatched rows are padded as the batches are
        return lambda answers: collate(answers, pad_token_id)

    def train_rows(self, encoded: list[list[EncodedAnswer]]) -> list[EncodedAnswer]:
        return [answer for row in encoded for answer in row]

    def split(self, inputs, budget, packed):
        return split_rows(inputs, budget)

    def item_count(self, batch):
        return batch["input_ids"].shape[0]

    def reference_point(self, step: Step, model: torch.nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
        """z from the mismatched rows of ``batches``, scored a micro-batch's worth of rows at a time."""
        rows = kl_rows(batches, self.pad_token_id, self.max_length)
        size = batches[0]["input_ids"].shape[0]
        policy, reference = [], []
        with torch.no_grad():
            for start in range(0, rows["input_ids"].shape[0], size):
                chunk = {key: value[start:start + size] for key, value in rows.items()}
                policy.append(step.logps(model, chunk)[0])
                with reference_model(model) as frozen:
                    reference.append(step.logps(frozen, chunk)[0])
        return kl_estimate(torch.cat(policy), torch.cat(reference), average=step.average)

    def prepare_step(self, step, model, batches):
        # Scored without dropout, unlike TRL's: z is then a function of the weights and the step's
        # answers alone, so a resumed run estimates it exactly as the uninterrupted one did.
        with without_dropout(step.unwrap(model)) as scorer:
            z = self.reference_point(step, scorer, batches)
        return [{**batch, "kl": z} for batch in batches]

    def loss(self, step, model, inputs, num_items):
        answers = {key: inputs[key] for key in _SEQUENCE}
        # Evaluation has no steps: each eval batch estimates its own z, as TRL's does.
        z = inputs["kl"] if "kl" in inputs else self.reference_point(step, step.unwrap(model), [answers])
        policy, _ = step.logps(model, answers)
        with torch.no_grad(), reference_model(step.unwrap(model)) as frozen:
            ref, _ = step.logps(frozen, answers)
        desirable = inputs["desirable"]
        losses, rewards = kto_loss(policy, ref, desirable, z, self.settings.beta,
                                   self.settings.desirable_weight, self.settings.undesirable_weight)
        # Per answer, each value only over the answers it is about; the trainer logs each one's mean. Every
        # key is given for every batch, empty or not, so all processes reduce the same keys.
        values = {"kl": z.reshape(1),
                  "rewards/chosen": rewards[desirable], "rewards/rejected": rewards[~desirable],
                  "logps/chosen": policy[desirable].detach(), "logps/rejected": policy[~desirable].detach()}
        return step_share(losses, num_items), values

    def summarize(self, means):
        if "rewards/chosen" in means and "rewards/rejected" in means:
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        return means
