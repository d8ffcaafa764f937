"""The tokenizer as GGUF metadata: what llama.cpp, ollama and transformers rebuild it from.

A GGUF file carries no tokenizer.json. For a byte-level BPE tokenizer (GPT-2, Llama 3,
SmolLM) it carries the token strings in id order, a type per token, the merges, the special
ids and the name of a pre-tokenizer llama.cpp knows. That name is the one part that cannot be
copied: it is derived here from the shape of the tokenizer's pre-tokenizer, and a shape we
cannot name is refused rather than exported to split text differently from training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gguf
from transformers import PreTrainedTokenizerBase

# Llama 3's split pattern, as its tokenizer.json and llama.cpp's "llama-bpe" both spell it.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class VocabExportError(ValueError):
    """The tokenizer cannot be written so that llama.cpp splits text as training did."""


@dataclass
class GgufVocab:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad, eot
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def _is_byte_level(step: dict, use_regex: bool) -> bool:
    return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex


def llama_cpp_pre_name(pre_tokenizer: dict | None) -> str:
    """Name llama.cpp's pre-tokenizer that splits text as ``pre_tokenizer`` (tokenizers JSON) does."""
    if pre_tokenizer is None:
        raise VocabExportError("the tokenizer has no pre-tokenizer; only byte-level BPE tokenizers can be exported")
    if _is_byte_level(pre_tokenizer, use_regex=True):
        return "gpt-2"
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits"):
        if _is_byte_level(steps[1], use_regex=True):
            return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and _is_byte_level(steps[1], use_regex=False):
        if steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
            return "llama-bpe"
    raise VocabExportError(
        "lorakit can export byte-level BPE tokenizers that split text like GPT-2, SmolLM or Llama 3; "
        f"this one's pre-tokenizer is not one of those: {json.dumps(pre_tokenizer)[:300]}"
    )


def _adds_special(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Does plain encoding add BOS / EOS? llama.cpp must do the same for raw prompts."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    add_eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return add_bos, add_eos


def build_vocab(tokenizer: PreTrainedTokenizerBase, rows: int, end_of_turn_id: int | None) -> GgufVocab:
    """Describe ``tokenizer`` for a model with ``rows`` embedding rows (rows past the vocabulary are padding)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise VocabExportError(
            f"only byte-level BPE tokenizers can be exported to GGUF; this one is {model.get('type')} with a "
            f"{(spec.get('decoder') or {}).get('type')} decoder"
        )
    if len(tokenizer) > rows:
        raise VocabExportError(f"the tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(rows):
        if token_id >= len(tokenizer):
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(added[token_id].content)
            types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(tokenizer.convert_ids_to_tokens(token_id))
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special_ids = {
        "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id,
        "eot": end_of_turn_id if end_of_turn_id != tokenizer.eos_token_id else None,
    }
    add_bos, add_eos = _adds_special(tokenizer)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return GgufVocab(
        pre=llama_cpp_pre_name(spec.get("pre_tokenizer")),
        tokens=tokens, types=[int(t) for t in types], merges=merges,
        special_ids={k: v for k, v in special_ids.items() if v is not None},
        add_bos=add_bos, add_eos=add_eos, chat_template=template,
    )


def write_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    setters = {
        "bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id, "eot": writer.add_eot_token_id,
    }
    for key, token_id in vocab.special_ids.items():
        setters[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
