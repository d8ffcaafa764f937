"""Cross-entropy on the answer tokens only, without the full logits tensor.

With loss on answers only, most positions of an instruction sample carry no loss, yet the
standard path projects every position to the vocabulary (for SmolLM2, 49,152 columns) and
keeps those logits for backward. Here the model returns its final hidden states, we keep the
positions whose next token is a label, and project only those, in chunks that are recomputed
in backward, so at most one chunk of logits exists at a time. The model is still called
through its own forward (with ``logits_to_keep`` asking for no position, see ``no_logits``), so
wrappers such as peft and DDP see a normal forward pass.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lorakit.labels import IGNORE_INDEX, loss_positions


def selective_loss_supported(model: torch.nn.Module) -> bool:
    """Only where the logits are exactly ``lm_head(final hidden state)``.

    Some families post-process logits (Gemma-2's soft-capping, Cohere's logit scale); for
    them we keep the model's own loss rather than silently compute a different one.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or base.get_output_embeddings() is None:
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return not getattr(config, "is_encoder_decoder", False)


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP's or FSDP's wrapper (``.module``) and peft's."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def no_logits(model: torch.nn.Module) -> int | torch.Tensor:
    """``logits_to_keep`` for a forward whose logits are not used: no position where the model allows it.

    ``logits_to_keep=1`` still projects each row's last position, and that slice of the hidden
    states is not contiguous, so torch's matmul does not fold it into one matrix product: it
    expands the head's weight to one copy per row (batch x hidden x vocab; 10 rows of SmolLM2 is
    570 MB copied per pass) and runs a batched product. On a CPU that was a third of a DPO step.
    An empty index tensor selects no position at all (``modeling_utils.slice_logits_to_keep``
    in transformers' own architectures); remote code may only take an int, so it keeps 1.
    """
    base = causal_lm(model)
    if not type(base).__module__.startswith("transformers."):
        return 1
    weight = next(base.parameters(), None)
    return torch.empty(0, dtype=torch.long, device=weight.device if weight is not None else None)


def _weight_dtype(head: torch.nn.Module) -> torch.dtype:
    """The dtype the head's frozen weight is stored in (under any LoRA or modules_to_save wrapper)."""
    layer = head.get_base_layer() if hasattr(head, "get_base_layer") else head
    weight = getattr(layer, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) else next(head.parameters()).dtype


def project(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` as float32 logits, whatever dtypes the two arrive in.

    The head runs outside the model's forward, and accelerate's mixed precision converts the
    forward's outputs to float32. With bf16 or fp16 weights that leaves a float32 input meeting a
    half-precision weight. Under autocast the matmul casts both itself; without it the hidden
    states are cast to the weight's dtype, which is what the model's own head would have seen.
    """
    if not torch.is_autocast_enabled(hidden.device.type):
        wanted = _weight_dtype(head)
        if wanted.is_floating_point and hidden.dtype != wanted:
            hidden = hidden.to(wanted)
    return head(hidden).float()


def _chunk_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(project(head, hidden), targets, reduction="sum")


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The vocabulary projection of a (peft-wrapped, DDP-wrapped) causal LM, with any adapter on it.

    DDP's wrapper is looked through: preference losses call ``sequence_logps`` on the model the
    Trainer hands them, which under several processes is the wrapper.
    """
    return causal_lm(model).get_output_embeddings()


def answer_positions(
    hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final hidden states that predict an answer token, those tokens, and the (batch, length - 1) mask."""
    keep = loss_positions(labels)
    return hidden[:, :-1][keep], labels[:, 1:][keep], keep


def answer_only_loss(
    model: torch.nn.Module,
    head: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None,
    chunk_size: int = 2048,
    autocast: AbstractContextManager | None = None,
) -> torch.Tensor:
    """Sum of answer-token cross-entropies divided by the tokens of the whole optimizer step.

    Dividing by ``num_items_in_batch`` (all label tokens of all micro-batches of the step)
    rather than by this micro-batch's count is what makes accumulated steps token-weighted.
    ``autocast``: the mixed-precision context the model's forward ran under (the Trainer's
    accelerator gives it), so the head computes in the same precision as the rest of the model.
    A fresh context, not one the caller is inside: a ``torch.autocast`` entered a second time
    restores the wrong state on exit and leaves autocast on.
    """
    labels = inputs["labels"]
    forward_args = {k: v for k, v in inputs.items() if k != "labels"}
    out = model(**forward_args, use_cache=False, output_hidden_states=True, logits_to_keep=no_logits(model))
    selected, wanted, keep = answer_positions(out.hidden_states[-1], labels)
    with autocast if autocast is not None else nullcontext():
        total = _selected_ce(head, selected, wanted, chunk_size)
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def _selected_ce(head: torch.nn.Module, selected: torch.Tensor, wanted: torch.Tensor, chunk_size: int) -> torch.Tensor:
    if selected.shape[0] <= chunk_size:
        total = _chunk_ce(head, selected, wanted)
    else:
        total = selected.new_zeros((), dtype=torch.float32)
        for start in range(0, selected.shape[0], chunk_size):
            # Recomputed in backward: only one chunk of logits is alive at a time.
            total = total + checkpoint(
                _chunk_ce, head, selected[start : start + chunk_size], wanted[start : start + chunk_size],
                use_reentrant=False,
            )
    return total


def answer_token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each answer token (no reduction), and the row each belongs to: for evaluation.

    As in training, only answer positions are projected to the vocabulary where the model allows
    it, so a batch of long samples never holds a full batch x length x vocab tensor.
    """
    args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if selective_loss_supported(model):
        hidden = model(**args, output_hidden_states=True, logits_to_keep=no_logits(model)).hidden_states[-1]
        selected, wanted, keep = answer_positions(hidden, batch["labels"])
        logits = project(output_head(model), selected)
    else:
        keep = loss_positions(batch["labels"])
        logits, wanted = model(**args).logits[:, :-1][keep], batch["labels"][:, 1:][keep]
    losses = torch.nn.functional.cross_entropy(logits.float(), wanted, reduction="none")
    return losses, keep.nonzero()[:, 0]


def _chunk_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    logits = project(head, hidden)
    return -F.cross_entropy(logits / temperature if temperature != 1.0 else logits, targets, reduction="none")


def token_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int = 2048, selective: bool = True,
    autocast: AbstractContextManager | None = None, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-prob of every answer token (row by row, in order), and the (batch, length - 1) mask of
    the positions predicting one. ``temperature`` divides the logits first (GRPO scores the tokens it
    sampled at the temperature it sampled them)."""
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if selective:
        hidden = model(**args, output_hidden_states=True,
                       logits_to_keep=no_logits(model)).hidden_states[-1][:, :-1][keep]
        found = logps_of_hidden(model, hidden, targets[keep], chunk_size, autocast, temperature)
    else:  # logits the model post-processes (soft-capping): its own, whole
        logits = model(**args).logits[:, :-1].float() / temperature
        found = -F.cross_entropy(logits[keep], targets[keep], reduction="none")
    return found, keep


def logps_of_hidden(model: torch.nn.Module, hidden: torch.Tensor, wanted: torch.Tensor, chunk_size: int,
                    autocast: AbstractContextManager | None, temperature: float) -> torch.Tensor:
    """The log-prob of each ``wanted`` token from the final hidden state predicting it, projected in chunks."""
    head = output_head(model)
    with autocast if autocast is not None else nullcontext():
        parts = [
            # Past the first chunk, recomputed in backward: one chunk of logits is alive at a time.
            _chunk_logps(head, hidden[s : s + chunk_size], wanted[s : s + chunk_size], temperature) if s == 0
            else checkpoint(_chunk_logps, head, hidden[s : s + chunk_size], wanted[s : s + chunk_size],
                            temperature, use_reentrant=False)
            for s in range(0, hidden.shape[0], chunk_size)
        ]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int = 2048, selective: bool = True,
    autocast: AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of its answer tokens' log-probs, and how many answer tokens it has."""
    found, keep = token_logps(model, batch, chunk_size, selective, autocast)
    sums = found.new_zeros(keep.shape[0]).index_add(0, keep.nonzero()[:, 0], found)
    return sums, keep.sum(dim=1)
