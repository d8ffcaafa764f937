"""Wrap a base model with LoRA adapters through peft, with the variants peft offers.

Everything the config says maps onto one peft ``LoraConfig``, so the saved
``adapter_config.json`` is what plain peft reads back. What lorakit adds: target names
checked against the real module names before peft runs, target presets ('attention',
'attention+mlp') named per model family, ``layers`` usable with ``all-linear``, embeddings
trained whenever the vocabulary grew, and QLoRA's preparation when the base is quantized.
"""

from __future__ import annotations

import logging
import re

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from lorakit.config import LoraConfig
from lorakit.errors import LorakitError
from lorakit.families import FAMILIES, PRESETS, Family, model_type_of, recognise
from lorakit.model.quantization import is_quantized
from lorakit.model.tokens import embedding_module_names

log = logging.getLogger(__name__)


class TargetModulesError(LorakitError, ValueError):
    """The configured LoRA targets match no module; the message lists the real names."""


def _is_linear(module: torch.nn.Module) -> bool:
    # bitsandbytes' 4/8-bit layers subclass nn.Linear, so a quantized base lists the same names.
    return isinstance(module, torch.nn.Linear)


def _linear_leaf_names(model: PreTrainedModel, skip_output: bool = False) -> list[str]:
    output = model.get_output_embeddings() if skip_output else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if _is_linear(mod) and mod is not output
    }
    return sorted(names)


def _presets_text(family: Family | None) -> str:
    if family is None:
        return "or use 'all-linear'"
    return (
        f"for this {family.name} model 'attention' = {', '.join(family.attention)}, "
        f"'attention+mlp' adds {', '.join(family.mlp)}; or use 'all-linear'"
    )


def _check_targets(model: PreTrainedModel, targets: str | list[str]) -> None:
    """peft's own error for a miss does not list what exists; ours does."""
    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    if isinstance(targets, str):
        hit = any(re.fullmatch(targets, n) for n in names)
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        hit = not missing
        if missing and len(missing) < len(targets):
            targets = missing
    if not hit:
        raise TargetModulesError(
            f"LoRA target_modules {targets!r} match no module of this model. "
            f"Its linear layers are named: {', '.join(_linear_leaf_names(model))} "
            f"({_presets_text(recognise(model.config))})."
        )


def _check_modules_to_save(model: PreTrainedModel, names: list[str]) -> None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} | {n for n, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        top = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if not list(m.children())} - {""})
        raise TargetModulesError(
            f"lora.modules_to_save {missing!r} match no module of this model; its leaf modules are named: "
            + ", ".join(top)
        )


def _preset_targets(model: PreTrainedModel, targets: str | list[str]) -> str | list[str]:
    """'attention' and 'attention+mlp' become this family's module names; other values pass through."""
    if not isinstance(targets, str) or targets not in PRESETS or targets == "all-linear":
        return targets
    family = recognise(model.config)
    if family is None:
        known = ", ".join(f.name for f in FAMILIES)
        raise TargetModulesError(
            f"lora.target_modules={targets!r} is named per model family, and model_type "
            f"{model_type_of(model.config)!r} is none lorakit knows ({known}). Use 'all-linear', or list "
            f"the modules: this model's linear layers are named {', '.join(_linear_leaf_names(model))}."
        )
    return family.targets(targets)


def _targets(model: PreTrainedModel, cfg: LoraConfig) -> str | list[str]:
    """peft refuses ``layers_to_transform`` with a string target, 'all-linear' included; spell it out."""
    targets = _preset_targets(model, cfg.target_modules)
    if cfg.layers is None:
        return targets
    if targets == "all-linear":
        return _linear_leaf_names(model, skip_output=True)
    if isinstance(targets, str):
        raise TargetModulesError(
            "lora.layers cannot be combined with a regex target_modules; put the layer numbers in the "
            r"regex (e.g. '.*layers\.(1|1[0-9])\..*_proj') or give target_modules as a list"
        )
    return targets


def _expand_embeddings(model: PreTrainedModel, names: list[str]) -> list[str]:
    """'embeddings' in modules_to_save: the input and output embeddings under this model's own names."""
    if "embeddings" not in names:
        return list(names)
    own = embedding_module_names(model)
    return list(dict.fromkeys(n for name in names for n in (own if name == "embeddings" else [name])))


def _saves_embeddings(model: PreTrainedModel, modules_to_save: list[str]) -> bool:
    embeddings = set(embedding_module_names(model))
    return any(name.rsplit(".", 1)[-1] in embeddings for name in modules_to_save)


def _is_tied(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def apply_lora(model: PreTrainedModel, cfg: LoraConfig, new_tokens: bool = False) -> PeftModel:
    """Wrap ``model``; ``new_tokens``: the vocabulary grew, so the embeddings must train too."""
    targets = _targets(model, cfg)
    _check_targets(model, targets)
    modules_to_save = _expand_embeddings(model, cfg.modules_to_save)
    if new_tokens:
        added = [n for n in embedding_module_names(model) if n not in modules_to_save]
        if added:
            log.info("new tokens need trained embeddings: modules_to_save += %s", added)
        modules_to_save += added
    _check_modules_to_save(model, modules_to_save)
    if is_quantized(model):
        # Freezes the quantized base and upcasts the small unquantized parts (norms) to fp32 so
        # their gradients through the adapter stay stable. The Trainer turns on checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=cfg.layers,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        bias=cfg.bias,
        modules_to_save=modules_to_save or None,
        # With tied input/output embeddings one trained copy must serve both, or merging unties them.
        ensure_weight_tying=_is_tied(model) and _saves_embeddings(model, modules_to_save),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_cfg)
    log_family(peft_model, cfg.target_modules, modules_to_save)
    log_size(peft_model)
    return peft_model


def adapted_module_names(model: PeftModel) -> list[str]:
    """Leaf names of the modules that carry a LoRA adapter, as peft placed them."""
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, LoraLayer)})


def log_family(model: PeftModel, asked: str | list[str], modules_to_save: list[str]) -> None:
    """Say which family was recognised and where the adapters went, so a wrong guess shows at once."""
    base = model.get_base_model()
    family = recognise(base.config)
    targets = ", ".join(adapted_module_names(model))
    if family is None:
        log.info(
            "model_type %r is not a family lorakit knows (lorakit models lists them); it trains through "
            "lora.target_modules=%s and the tokenizer's own chat template and end tokens. LoRA on: %s",
            model_type_of(base.config), asked, targets,
        )
    else:
        log.info(
            "model family: %s (model_type %s); LoRA on %s (lora.target_modules=%s)",
            family.name, model_type_of(base.config), targets, asked,
        )
    if modules_to_save:
        tied = "tied: one shared matrix trains" if _is_tied(base) else "not tied"
        log.info("trained in full: %s (input/output embeddings %s)", ", ".join(modules_to_save), tied)


def log_size(model: PeftModel) -> None:
    """What QLoRA recipe users look for first: how much trains and how much memory the weights take."""
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "LoRA: %s trainable of %s parameters (%.3f%%); weights take %.1f MiB in memory",
        f"{trainable:,}", f"{total:,}", 100 * trainable / total, model.get_memory_footprint() / 2**20,
    )
