"""Merge a run's adapter into its base and save a plain transformers folder.

The folder needs nothing from lorakit or peft: ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load it, and the tokenizer carries the chat template the
run was trained with. The merge is done in float32 whatever the run used, and only the saved
weights are cast to the output dtype, so rounding happens once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import RunConfig
from lorakit.errors import LorakitError
from lorakit.model.adapter import adapter_names, load_run_model
from lorakit.model.dtype import DTYPES
from lorakit.model.loader import resolve_model_folder
from lorakit.model.setup import saved_setup
from lorakit.outputs import writing
from lorakit.run import SAVED_ADAPTER, open_run

log = logging.getLogger(__name__)


class MergeError(LorakitError, ValueError):
    """The folder cannot be merged as asked; the message says why and what to give instead."""


def base_checkpoint_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype the base model was published in: a merged model is saved like its base."""
    config = json.loads((Path(resolve_model_folder(cfg.model)) / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype")
    return DTYPES.get(dtype, torch.float32) if isinstance(dtype, str) else torch.float32


def weighted_merge(model: PeftModel, weights: dict[str, float]) -> PreTrainedModel:
    """Fold several adapters into the base as W + sum(weight_i * delta_i), exactly.

    peft's ``add_weighted_adapter`` builds a new adapter from a copy of the first one's config,
    so with rsLoRA its scale comes out wrong; scaling each adapter's own factor and merging them
    all keeps every adapter's scale as trained.
    """
    for name in weights:
        config = model.peft_config[name]
        if config.use_dora:
            raise MergeError(f"adapter {name} uses DoRA, whose magnitudes do not add up; merge it alone")
        if config.modules_to_save:
            raise MergeError(f"adapter {name} trains whole modules ({', '.join(config.modules_to_save)}), which "
                             "cannot be weighted; merge it alone")
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, weight in weights.items():
                if name in module.scaling:
                    module.scaling[name] *= weight
    return model.merge_and_unload(adapter_names=list(weights))


def merged_model(
    run_dir: Path, others: list[Path] | None = None, weights: list[float] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, RunConfig]:
    """Base + adapter folded into one float32 model (a quantized base is dequantized first).

    ``others``: more runs on the same base, folded in too with ``weights`` (default 1 each).
    """
    cfg = open_run(run_dir, SAVED_ADAPTER).read_config()
    others = others or []
    for other in others:
        open_run(other, SAVED_ADAPTER)
    weights = weights or [1.0] * (1 + len(others))
    if len(weights) != 1 + len(others):
        raise MergeError(f"{len(weights)} weights for {1 + len(others)} adapters; give one weight per adapter")
    text = saved_setup(run_dir, cfg.data.think)
    tokenizer = text.tokenizer
    peft_model = load_run_model(run_dir, cfg.model, tokenizer, dtype="float32", dequantize=True, others=others)
    if others:
        model = weighted_merge(peft_model, dict(zip(adapter_names([run_dir, *others]), weights)))
    elif weights != [1.0]:
        model = weighted_merge(peft_model, {"default": weights[0]})
    else:
        model = peft_model.merge_and_unload()
    # Plain generate() should stop where lorakit's chat stops: at the template's end-of-turn.
    end_ids = sorted(text.template.end_token_ids)
    if end_ids:
        model.generation_config.eos_token_id = end_ids if len(end_ids) > 1 else end_ids[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer, cfg


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask can only swap it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ordinary_permissions(folder: Path) -> None:
    """mkdtemp makes a private folder (0700): give the merged model the modes any new folder and file get."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def merge_run(
    run_dir: Path, out_dir: Path, dtype: str = "base", overwrite: bool = False,
    others: list[Path] | None = None, weights: list[float] | None = None,
) -> Path:
    """Write the merged model to ``out_dir``; ``dtype``: 'base' (the base checkpoint's), or a dtype name."""
    open_run(run_dir, SAVED_ADAPTER)  # refuse a wrong folder before anything else
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        # --overwrite deletes a folder it replaces: never a file, a device or what a link points to
        raise MergeError(f"--out {out_dir} is a file or a link, not a folder; give a folder for the merged model")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MergeError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
    model, tokenizer, cfg = merged_model(run_dir, others, weights)
    if dtype == "base":
        target = base_checkpoint_dtype(cfg)
    elif dtype in DTYPES:
        target = DTYPES[dtype]
    else:
        raise MergeError(f"--dtype {dtype!r}: choose base, {', '.join(DTYPES)}")
    model.to(target)
    needed = sum(p.numel() for p in model.parameters()) * target.itemsize  # a tied matrix is saved once
    # Write beside the target and rename, so a failed merge never leaves a half folder that loads.
    with writing("the merged model", out_dir, needed=needed) as job:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        job.undo = Path(tempfile.mkdtemp(prefix=".merge-", dir=out_dir.parent))
        model.save_pretrained(job.undo)
        tokenizer.save_pretrained(job.undo)
        _ordinary_permissions(job.undo)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        job.undo.rename(out_dir)
    log.info("merged %s into %s (%s)", run_dir, out_dir, str(target).replace("torch.", ""))
    return out_dir
