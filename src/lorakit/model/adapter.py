"""A trained run's model: its base, fitted to the run's tokenizer, with the adapter on top.

Chat, eval, merge and export all load a run this way, so they all see the model training
saw: the same base (quantized again when the run was QLoRA), the same embedding size when
tokens were added, and the adapter peft saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.model.loader import load_model, resolve_model_folder
from lorakit.model.quantization import is_quantized
from lorakit.model.tokens import fit_embeddings

log = logging.getLogger(__name__)


def load_run_base(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: str | None = None, dequantize: bool = False
) -> PreTrainedModel:
    """The run's base model. ``dequantize``: turn a 4/8-bit base back into plain layers holding
    exactly the quantized values, which is what the adapter was trained against (merging into
    the original full-precision weights instead would shift every output a little)."""
    base = load_model(resolve_model_folder(cfg), dtype or cfg.dtype, cfg.quantization)
    if dequantize and is_quantized(base):
        base = base.dequantize()
        # transformers drops the quantizer but leaves these flags, which peft reads to pick layer types.
        base.is_loaded_in_4bit = base.is_loaded_in_8bit = False
        log.info("dequantized the %s-bit base to %s", cfg.quantization.bits, base.dtype)
    fit_embeddings(base, tokenizer)
    return base


def load_run_model(
    run_dir: Path, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: str | None = None,
    dequantize: bool = False,
) -> PeftModel:
    base = load_run_base(cfg, tokenizer, dtype=dtype, dequantize=dequantize)
    model = PeftModel.from_pretrained(base, str(run_dir))
    log.info("loaded adapter from %s on %s", run_dir, cfg.name)
    return model
