"""Rows that share a prompt, computed with the prompt once: one row per prompt, its answers after it.

GRPO trains on ``num_generations`` rows per prompt, each the prompt followed by one sampled
completion. Computed as separate rows, the prompt's tokens go through the model once per
completion: with the demo's prompts of ~65 tokens and completions of ~35, two thirds of a step's
forward and backward work is the same prompt again. Here each run of rows with the same prompt
becomes one row::

    rows (prompt p, completions a, b):    p a      ->   one row:   p a b
                                           p b                      positions 0..|p|-1, then |p|.. for a,
                                                                    and |p|.. again for b

with a mask that lets each completion token see the prompt and the earlier tokens of its own
completion, never another completion's (``mask``). Every token then attends to exactly what it
attended to in its own row, at the same positions, so the log-probs are those of the separate rows,
to the rounding of sums taken in another order (tests/model/test_shared_prompt.py checks log-probs
and gradients against the rows computed apart, on each architecture it runs for). A completion's
first token is predicted by the prompt's last position, which all of the row's completions share.

It runs where that equality was tested: decoder-only models whose positions come from
``position_ids`` (rotary embeddings; not ALiBi or learned absolute positions over rows),
with sdpa or eager attention, which take a ready 4-D mask, and rows within the model's sliding
window, which such a mask does not apply. Anywhere else (and for a batch with no prompt to share)
the rows are computed apart, by ``loss.token_logps``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from lorakit.labels import loss_positions, prompt_lengths
from lorakit.model.loss import causal_lm, logps_of_hidden, no_logits, token_logps
from lorakit.transformers_internals import attention_implementation

# Families whose positions are position_ids through rotary embeddings, each tested in
# tests/model/test_shared_prompt.py; others run rows apart until a test covers them (Bloom's ALiBi
# reads the 2-D mask, so it never can).
ROTARY = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2"})
MASKS = frozenset({"sdpa", "eager"})  # attention that takes a ready (batch, 1, query, key) mask


@dataclass
class SharedRows:
    """A batch's rows laid out with each prompt once."""

    input_ids: torch.Tensor  # (groups, width)
    position_ids: torch.Tensor  # (groups, width)
    segment: torch.Tensor  # (groups, width): 0 prompt, k the group's k-th completion, -1 padding
    row: torch.Tensor  # (answer tokens,): the shared row predicting each answer token
    column: torch.Tensor  # (answer tokens,): the position in it that predicts the token

    def mask(self, attention: str, dtype: torch.dtype) -> torch.Tensor:
        """(groups, 1, width, width): a token sees the prompt and its own completion up to itself."""
        seg = self.segment
        width = seg.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
        same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
        allowed = causal & same & (seg[:, None, :] >= 0)
        allowed |= torch.eye(width, dtype=torch.bool, device=seg.device)  # padding sees itself: no empty row
        allowed = allowed[:, None]
        if attention == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def shared_layout(batch: dict[str, torch.Tensor], pad_token_id: int = 0) -> SharedRows | None:
    """Consecutive rows with the same prompt (the tokens before a row's first label) as one row each;
    None when no two rows share one. The answer tokens come in the order ``token_logps`` gives them:
    row by row, position by position."""
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    lengths = attention.sum(dim=1).tolist()
    if not bool((attention.cumsum(dim=1) == torch.arange(1, ids.shape[1] + 1, device=ids.device)).logical_or(
            attention == 0).all()):
        return None  # not right-padded rows
    has_label = loss_positions(labels)
    firsts = prompt_lengths(labels, lengths)
    groups: list[list[int]] = []
    for r, first in enumerate(firsts):
        if not has_label[r].any():
            continue  # nothing to predict: the row is left out
        lead = groups[-1][0] if groups else None
        if lead is not None and firsts[lead] == first and torch.equal(ids[lead, :first], ids[r, :first]):
            groups[-1].append(r)
        else:
            groups.append([r])
    if not groups or all(len(g) == 1 for g in groups):
        return None
    width = max(firsts[g[0]] + sum(lengths[r] - firsts[r] for r in g) for g in groups)
    shared_ids = torch.full((len(groups), width), pad_token_id, dtype=ids.dtype)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    segment = torch.full((len(groups), width), -1, dtype=torch.long)
    where: dict[int, tuple[int, int]] = {}  # row -> (group, offset of its completion)
    for k, group in enumerate(groups):
        prompt = firsts[group[0]]
        shared_ids[k, :prompt] = ids[group[0], :prompt]
        positions[k, :prompt] = torch.arange(prompt)
        segment[k, :prompt] = 0
        offset = prompt
        for j, r in enumerate(group, start=1):
            n = lengths[r] - prompt
            shared_ids[k, offset:offset + n] = ids[r, prompt:lengths[r]]
            positions[k, offset:offset + n] = torch.arange(prompt, lengths[r])
            segment[k, offset:offset + n] = j
            where[r] = (k, offset)
            offset += n
    rows, columns = [], []
    for r, j in has_label.nonzero().tolist():  # position j of row r predicts its token j + 1
        k, offset = where[r]
        prompt = firsts[r]
        rows.append(k)
        columns.append(j if j < prompt else offset + j - prompt)
    device = ids.device
    return SharedRows(shared_ids.to(device), positions.to(device), segment.to(device),
                      torch.tensor(rows, device=device), torch.tensor(columns, device=device))


def shares(model: torch.nn.Module) -> bool:
    """Whether this model, with the attention it runs now, may compute rows with shared prompts."""
    config = causal_lm(model).config
    return getattr(config, "model_type", None) in ROTARY and attention_implementation(config) in MASKS


def shareable(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """Whether this batch's rows may be computed with shared prompts (see the module's docstring)."""
    if not shares(model):
        return False
    window = getattr(causal_lm(model).config, "sliding_window", None)
    return not window or int(batch["attention_mask"].sum(dim=1).max()) <= window


def prompt_shared_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int = 2048, selective: bool = True,
    autocast: AbstractContextManager | None = None, temperature: float = 1.0, pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logps``, with each run of rows sharing a prompt computed as one row where that is allowed."""
    layout = shared_layout(batch, pad_token_id) if shareable(model, batch) else None
    if layout is None:
        return token_logps(model, batch, chunk_size, selective, autocast, temperature)
    keep = loss_positions(batch["labels"])
    wanted = batch["labels"][:, 1:][keep]
    weight = next(p for p in model.parameters())
    dtype = torch.get_autocast_dtype(weight.device.type) if torch.is_autocast_enabled(weight.device.type) \
        else weight.dtype
    args = {"input_ids": layout.input_ids, "position_ids": layout.position_ids, "use_cache": False,
            "attention_mask": layout.mask(attention_implementation(causal_lm(model).config), dtype)}
    if selective:  # as token_logps: the caller has checked the model allows it
        hidden = model(**args, output_hidden_states=True, logits_to_keep=no_logits(model)).hidden_states[-1]
        return logps_of_hidden(model, hidden[layout.row, layout.column], wanted, chunk_size, autocast,
                               temperature), keep
    logits = model(**args).logits[layout.row, layout.column].float() / temperature
    return -torch.nn.functional.cross_entropy(logits, wanted, reduction="none"), keep
