"""Wrap a base model with LoRA adapters through peft."""

from __future__ import annotations

import logging
import re

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from lorakit.config import LoraConfig

log = logging.getLogger(__name__)


class TargetModulesError(ValueError):
    """The configured LoRA targets match no module; the message lists the real names."""


def _linear_leaf_names(model: PreTrainedModel) -> list[str]:
    import torch

    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    return sorted(names)


def _check_targets(model: PreTrainedModel, targets: str | list[str]) -> None:
    """peft's own error for a miss does not list what exists; ours does."""
    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    if isinstance(targets, str):
        hit = any(re.fullmatch(targets, n) for n in names)
    else:
        hit = any(n == t or n.endswith("." + t) for n in names for t in targets)
    if not hit:
        raise TargetModulesError(
            f"LoRA target_modules {targets!r} match no module of this model. "
            f"Its linear layers are named: {', '.join(_linear_leaf_names(model))} "
            "(or use 'all-linear')."
        )


def apply_lora(model: PreTrainedModel, cfg: LoraConfig) -> PeftModel:
    _check_targets(model, cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_cfg)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return peft_model
