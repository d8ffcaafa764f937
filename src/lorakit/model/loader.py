"""Where the base model and its tokenizer come from.

A model spec is the embedded SmolLM2, a local transformers folder, a ``.gguf`` file, or a
hub id (``owner/name``), which ``model/hub.py`` resolves to a snapshot in the Hugging Face
cache, downloading it on first use. Every spec ends as a local folder, and transformers is
always called with ``local_files_only=True``: it never reaches the network itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import EMBEDDED_MODEL, ModelConfig, QuantizationConfig
from lorakit.hub import looks_like_hub_id
from lorakit.model.dtype import resolve_dtype
from lorakit.model.gguf_cache import ModelNotFoundError, converted_folder, embedded_gguf
from lorakit.model.hub import check_remote_code, model_snapshot, needs_remote_code
from lorakit.model.quantization import (check_4bit_cpu_shapes, checkpoint_quantization, cpu_4bit_kernel_repacks,
                                        quantized_loading)

log = logging.getLogger(__name__)

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {EMBEDDED_MODEL, "embedded", "smollm2", EMBEDDED_HUB_ID}
# The embedded GGUF is a copy of its hub repo's default branch: these revisions are that copy.
_DEFAULT_REVISIONS = (None, "main")


def _embedded_revision(cfg: ModelConfig, weights: bool) -> str:
    """Another revision of the embedded model: the hub's (cached or downloaded), never the embedded copy."""
    if cfg.name != EMBEDDED_HUB_ID:
        raise ModelNotFoundError(
            f"model.revision '{cfg.revision}': the embedded model '{cfg.name}' has one revision, the hub's main; "
            f"remove model.revision, or set model.name to {EMBEDDED_HUB_ID} to fetch that revision from the hub"
        )
    try:
        return str(model_snapshot(cfg.name, cfg.revision, cfg.download, cfg.trust_remote_code, weights))
    except ModelNotFoundError as err:
        raise ModelNotFoundError(
            f"{err} The embedded copy of {cfg.name} is its main revision only: remove model.revision to train on it"
        ) from None


def resolve_model_folder(cfg: ModelConfig, weights: bool = True) -> str:
    """Turn the configured model name into a local folder ``from_pretrained`` reads offline.

    ``weights=False``: a hub model's folder may lack the weights (only the tokenizer is needed yet).
    A ``model.revision`` that cannot be honoured (on a local model, or a revision of the embedded
    model that neither the cache nor the hub has) is refused, never quietly replaced.
    """
    name = cfg.name
    if name in EMBEDDED_ALIASES:
        if cfg.revision in _DEFAULT_REVISIONS:
            return str(converted_folder(embedded_gguf(), cfg.cache_dir))
        return _embedded_revision(cfg, weights)
    path = Path(name).expanduser()
    if cfg.revision is not None and (path.suffix == ".gguf" or path.exists()):
        raise ModelNotFoundError(f"model.revision '{cfg.revision}' is for hub models, and {path} is a local "
                                 "model: remove model.revision")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        return str(converted_folder(path, cfg.cache_dir))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a transformers model folder (no config.json in it)")
        check_remote_code(path, f"model folder {path}", str(path.resolve()), cfg.trust_remote_code)
        return str(path)
    if looks_like_hub_id(name):
        return str(model_snapshot(name, cfg.revision, cfg.download, cfg.trust_remote_code, weights))
    raise ModelNotFoundError(
        f"model '{name}' not found: give a local model folder, a .gguf file, "
        f"'{EMBEDDED_MODEL}', or a hub id (owner/name)"
    )


def _from_pretrained(loader, source: str, trust_remote_code: bool = False, **kwargs):
    # Remote code runs only where the config allowed it and transformers lacks the architecture;
    # a known architecture always loads with transformers' own code.
    trust = trust_remote_code and (Path(source) / "config.json").is_file() and needs_remote_code(Path(source))
    try:
        return loader.from_pretrained(source, local_files_only=True, trust_remote_code=trust, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"could not load the model from {source}: {err}") from None


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = _from_pretrained(AutoTokenizer, source, trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding positions are excluded from the loss by their labels, never by token id,
        # so reusing EOS as the pad token is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str, dtype: str, quantization: QuantizationConfig | None = None, trust_remote_code: bool = False,
    sharded: bool = False,
) -> PreTrainedModel:
    """Load the base: in ``dtype`` (checked against the hardware), quantized when asked or saved so.

    ``sharded``: fsdp or ZeRO-3 will shard the weights, so 4-bit ones are stored in the compute dtype.

    On a GPU accelerate places the layers (``device_map="auto"``); on a CPU everything stays put.
    """
    kwargs: dict = {"dtype": resolve_dtype(dtype)}
    if torch.cuda.is_available():
        kwargs["device_map"] = "auto"
    config = _from_pretrained(AutoConfig, source, trust_remote_code)
    quantized = quantized_loading(config, quantization, dtype, sharded)  # asked for, or saved quantized
    if quantized:
        if (quantization or checkpoint_quantization(config)).bits == 4 and cpu_4bit_kernel_repacks():
            check_4bit_cpu_shapes(config, source)
        kwargs.update(quantized)
        kwargs.setdefault("device_map", "cpu")  # bitsandbytes quantizes while placing the weights
    return _from_pretrained(AutoModelForCausalLM, source, trust_remote_code, **kwargs)
