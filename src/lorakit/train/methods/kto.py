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
its chosen answer (desirable) and its rejected one (undesirable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.data.pairs import is_pair, to_pair
from lorakit.data.records import Record
from lorakit.data.shapes import RecordView, to_content
from lorakit.labels import IGNORE_INDEX
from lorakit.templates import Conversation

Batch = dict[str, torch.Tensor]


@dataclass
class Answer:
    """One answer to a prompt, and whether it is the kind of answer to learn (desirable) or to unlearn."""

    prompt: Conversation  # ends with the turn the answer replies to
    completion: str
    desirable: bool
    origin: str

    def conversation(self) -> Conversation:
        return [*self.prompt, {"role": "assistant", "content": self.completion}]

    def key(self) -> tuple:
        """Equal for rows that train the same thing; used to find repeats and eval leaks."""
        return (*((m["role"], m["content"]) for m in self.prompt), self.completion, self.desirable)


def to_answers(record: Record, system_prompt: str | None, columns: Mapping[str, str] | None = None
               ) -> list[Answer]:
    """The labelled answers of one record: one for a labelled row, two for a pair.

    A pair (``chosen`` and ``rejected`` columns) reads as ``data.pairs.to_pair`` reads it, and may
    raise its ``PairSkipped``. Anything else is a prompt/completion row (``data.shapes``) with a
    boolean ``label``; a malformed one raises DataError naming the file and line.
    """
    columns = columns or {}
    if is_pair(record.fields, columns):
        pair = to_pair(record, system_prompt, columns)
        return [Answer(pair.prompt, pair.chosen, True, pair.origin),
                Answer(pair.prompt, pair.rejected, False, pair.origin)]
    view = RecordView(record, columns)
    label = view.raw("label")
    if not isinstance(label, bool):
        got = "nothing" if label is None else f"{label!r:.40}"
        raise view.fail(
            f"field {view.label('label')} must be true (a desirable answer) or false (an undesirable one), got "
            f"{got}; or give pairs of answers as prompt/chosen/rejected"
        )
    conversation = to_content(record, "prompt_completion", system_prompt, columns)
    *prompt, answer = conversation
    if answer["role"] != "assistant":
        raise view.fail(f"{view.label('completion')} must end with the assistant's answer, not a {answer['role']} turn")
    if prompt[-1]["role"] == "assistant":
        raise view.fail("the prompt ends with an assistant turn; the completion must reply to a user turn")
    return [Answer(prompt, answer["content"], label, record.origin())]


@dataclass
class EncodedAnswer:
    encoded: Encoded  # the prompt and the answer, only the answer (and its end of turn) trained
    desirable: bool


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


def kto_metrics(rewards: torch.Tensor, policy_logps: torch.Tensor, desirable: torch.Tensor,
                kl: torch.Tensor) -> dict[str, torch.Tensor]:
    """One batch's logged values, as TRL logs them: the means of rewards and log-probs over the desirable
    rows (``rewards/chosen``, ``logps/chosen``) and over the undesirable ones (``…/rejected``), their
    margin when the batch has both kinds, and ``kl``.
    """
    values = {"kl": kl.detach()}
    for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            values[f"rewards/{name}"] = rewards[rows].mean()
            values[f"logps/{name}"] = policy_logps[rows].detach().mean()
    if desirable.any() and not desirable.all():
        values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
    return values
