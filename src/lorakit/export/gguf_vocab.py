"""The tokenizer as GGUF metadata: what llama.cpp, ollama and transformers rebuild it from.

A GGUF file carries no tokenizer.json. Two kinds are written:

* byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): ``tokenizer.ggml.model = gpt2`` with the
  token strings in id order, a type per token, the merges, and the name of a pre-tokenizer
  llama.cpp knows. llama.cpp picks that name by hashing how the tokenizer splits a fixed text;
  here it is derived from the shape of the tokenizer's pre-tokenizer, and a shape we cannot
  name is refused rather than exported to split text differently from training.
* SentencePiece-style BPE with byte fallback (TinyLlama, Llama 2, Mistral, Gemma):
  ``tokenizer.ggml.model = llama`` with a score per token. llama.cpp merges the pair whose
  joined token scores highest, so each token scores minus the rank of the merge that makes
  it: the order the tokenizer's merges are applied in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import gguf
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from lorakit.errors import LorakitError
from lorakit.families import END_OF_TURN_TOKENS
from lorakit.templates import adds_bos, resolve_template

# Llama 3's split pattern, as its tokenizer.json and llama.cpp's "llama-bpe" both spell it.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's: Llama 3's with single digits; llama.cpp's "qwen2".
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# BLOOM's (a run of anything but whitespace and these stops, after at most one space), as its tokenizer.json
# spells it with a nested class; llama.cpp's "bloom" spells the same set flat.
BLOOM_SPLIT = " ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+"
_SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2", BLOOM_SPLIT: "bloom",
           BLOOM_SPLIT.replace("[.", ".").replace("])", ")"): "bloom"}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class VocabExportError(LorakitError, ValueError):
    """The tokenizer cannot be written so that llama.cpp splits text as training did."""


@dataclass
class GgufVocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    pre: str | None
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad, eot
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    scores: list[float] = field(default_factory=list)
    add_space_prefix: bool = False


def _is_byte_level(step: dict, use_regex: bool) -> bool:
    return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex


def _is_split(step: dict, regex: str | None = None) -> bool:
    """A Split that keeps each match as its own piece (what llama.cpp's regex lists do)."""
    return (step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert")
            and (regex is None or step.get("pattern", {}).get("Regex") == regex))


def llama_cpp_pre_name(pre_tokenizer: dict | None) -> str:
    """Name llama.cpp's pre-tokenizer that splits text as ``pre_tokenizer`` (tokenizers JSON) does.

    Each shape below is one llama.cpp has a regex list for (``llama-vocab.cpp``): GPT-2's regex
    alone; SmolLM's digits one by one first; Llama 3's, Qwen2's or BLOOM's split on raw bytes;
    and Falcon's punctuation runs, then GPT-2's regex, then digits in threes.
    """
    if pre_tokenizer is None:
        raise VocabExportError("the tokenizer has no pre-tokenizer; a byte-level BPE tokenizer needs one")
    if _is_byte_level(pre_tokenizer, use_regex=True):
        return "gpt-2"
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else []
    types = [step.get("type") for step in steps]
    if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        if _is_byte_level(steps[1], use_regex=True):
            return "smollm"
    if types == ["Split", "ByteLevel"] and _is_split(steps[0]) and _is_byte_level(steps[1], use_regex=False):
        name = _SPLITS.get(steps[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    if (types == ["Punctuation", "ByteLevel", "Digits", "Split"] and steps[0].get("behavior") == "Contiguous"
            and _is_byte_level(steps[1], use_regex=True) and not steps[2].get("individual_digits")
            and _is_split(steps[3], "[0-9][0-9][0-9]")):
        return "falcon"
    raise VocabExportError(
        "lorakit can export byte-level BPE tokenizers that split text like GPT-2, SmolLM, Llama 3, Qwen2, BLOOM or "
        f"Falcon; this one's pre-tokenizer is not one of those: {json.dumps(pre_tokenizer)[:300]}"
    )


def _spec(tokenizer: PreTrainedTokenizerBase) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabExportError(f"{type(tokenizer).__name__} has no tokenizer.json form; GGUF export needs one")
    return json.loads(backend.to_str())


def _kind(spec: dict) -> str:
    model, decoder = spec.get("model", {}), spec.get("decoder") or {}
    if model.get("type") == "BPE" and decoder.get("type") == "ByteLevel":
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    raise VocabExportError(
        "GGUF export takes byte-level BPE tokenizers (GPT-2 / Llama 3 / Qwen style) and SentencePiece-style BPE "
        f"with byte fallback (Llama 2 / Mistral / Gemma style); this one is {model.get('type')} "
        f"(byte_fallback={model.get('byte_fallback')}) with a {decoder.get('type')} decoder"
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer llama.cpp would split differently, before any model is loaded."""
    spec = _spec(tokenizer)
    if _kind(spec) == "gpt2":
        llama_cpp_pre_name(spec.get("pre_tokenizer"))
    else:
        _space_rule(tokenizer, spec)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token the chat template closes a turn with (the family's, when it is not the EOS); None without a template."""
    if not isinstance(tokenizer.chat_template, str):
        return None
    ends = set(resolve_template(tokenizer, "auto").end_token_ids)
    order = {token: i for i, token in enumerate(END_OF_TURN_TOKENS)}
    others = sorted(ends - {tokenizer.eos_token_id},
                    key=lambda i: (order.get(tokenizer.convert_ids_to_tokens(i), len(order)), i))
    if others:
        return others[0]
    return tokenizer.eos_token_id if tokenizer.eos_token_id in ends else None


def _adds_special(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Does plain encoding add BOS / EOS? llama.cpp must do the same for raw prompts (and so puts the BOS before
    chat prompts where training put it: templates.leading_bos reads the same ``adds_bos``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    add_eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return adds_bos(tokenizer), add_eos


def _merge_scores(spec: dict, vocab: dict[str, int]) -> dict[int, float]:
    """Each merged token's score: minus the rank of the first merge that makes it."""
    scores: dict[int, float] = {}
    for rank, merge in enumerate(spec["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = vocab.get(left + right)
        if token_id is not None and token_id not in scores:
            scores[token_id] = -float(rank)
    return scores


def _steps(part: dict | None) -> list[dict]:
    if not part:
        return []
    return part.get("normalizers") or part.get("pretokenizers") or [part]


def _as_llama_cpp_splits(spec: dict, space_prefix: bool) -> Tokenizer:
    """The tokenizer with llama.cpp's SentencePiece rule for spaces: each space becomes "▁", and with
    ``space_prefix`` one "▁" goes before every stretch of text that starts the input or follows a
    special token (a Prepend normalizer does exactly that: it runs on each stretch between them)."""
    steps = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if space_prefix:
        steps.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    return Tokenizer.from_str(json.dumps({**spec, "normalizer": {"type": "Sequence", "normalizers": steps},
                                          "pre_tokenizer": None}))


def _chat_samples(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Prompts as lorakit renders them for this tokenizer: what llama.cpp must split the same way."""
    if not isinstance(tokenizer.chat_template, str):
        return ["Hello world. Where does Maria live?"]
    template = resolve_template(tokenizer, "auto")
    turns = [{"role": "user", "content": "Where does Maria live?"},
             {"role": "assistant", "content": " In Lisbon, I think."}, {"role": "user", "content": "And Ana?"}]
    samples = [template.render(tokenizer, turns[:1], True), template.render(tokenizer, turns, True)]
    try:
        samples.append(template.render(tokenizer, [{"role": "system", "content": "Be brief."}, *turns], True))
    except Exception:  # noqa: BLE001 - a template that refuses system turns
        pass
    return samples


@dataclass(frozen=True)
class SpaceRule:
    """How llama.cpp must be set up to split a SentencePiece-style tokenizer's prompts as training did.

    ``add_space_prefix``: llama.cpp's switch, one "▁" before every stretch of text that starts the
    input or follows a special token. ``lead``: text the exported chat templates (the GGUF's and the
    Modelfile's) write before everything else, for the one case the switch cannot express.
    """

    add_space_prefix: bool
    lead: str = ""


def _space_rule(tokenizer: PreTrainedTokenizerBase, spec: dict) -> SpaceRule:
    """The :class:`SpaceRule` under which llama.cpp splits this tokenizer's chat prompts as it does.

    A Prepend normalizer (the "legacy" form, TinyLlama's tokenizer.json) is llama.cpp's own rule.
    transformers 5 builds Llama-style tokenizers with a Metaspace pre-tokenizer instead, which puts
    "▁" only before the first stretch ("first") or before stretches that do not start with a space
    ("always"). For those, the switch whose splits equal the tokenizer's own on its chat prompts is
    chosen. Neither fits "first" with prompts that start with text (TinyLlama's zephyr format under
    transformers 5): the "▁" belongs before the first stretch only. Metaspace does not add a "▁" to
    text that already starts with a space, so such a tokenizer splits " " + prompt exactly as it
    splits the prompt, and so does llama.cpp with the switch off: the exported templates then start
    with that space. A tokenizer none of these reproduce is refused with the prompt that differs.
    """
    if any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581" for s in _steps(spec.get("normalizer"))):
        return SpaceRule(True)
    meta = next((s for s in _steps(spec.get("pre_tokenizer")) if s.get("type") == "Metaspace"), None)
    if meta is None or meta.get("prepend_scheme", "always") == "never":
        return SpaceRule(False)
    samples = _chat_samples(tokenizer)
    want = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in samples]
    first = meta.get("prepend_scheme", "always") == "always"
    candidates = [SpaceRule(first), SpaceRule(not first), SpaceRule(False, lead=" ")]
    for rule in candidates:
        splits = _as_llama_cpp_splits(spec, rule.add_space_prefix)
        texts = [rule.lead + text for text in samples]
        same_for_training = all(tokenizer(t, add_special_tokens=False)["input_ids"] == w for t, w in zip(texts, want))
        got = [splits.encode(text, add_special_tokens=False).ids for text in texts]
        if same_for_training and got == want:
            return rule
    # what llama.cpp's own switch (the first candidate) would make of the prompt that differs
    got = [_as_llama_cpp_splits(spec, first).encode(text, add_special_tokens=False).ids for text in samples]
    text, ids = next((t, w) for t, w, g in zip(samples, want, got) if w != g)
    raise VocabExportError(
        "llama.cpp cannot split this SentencePiece-style tokenizer's prompts as training did: it puts \u2581 "
        "before every stretch of text after a special token or before none, while this tokenizer's Metaspace "
        f"pre-tokenizer (prepend_scheme={meta.get('prepend_scheme', 'always')!r}) does neither. For the prompt "
        f"{text!r} training saw {tokenizer.convert_ids_to_tokens(ids)[:12]}, llama.cpp would see "
        f"{tokenizer.convert_ids_to_tokens(got[samples.index(text)])[:12]}. A tokenizer in the legacy form (a "
        "Prepend normalizer) or whose template starts every prompt with a special token (BOS) exports."
    )


def space_rule(tokenizer: PreTrainedTokenizerBase) -> SpaceRule:
    """The :class:`SpaceRule` for ``tokenizer`` (byte-level BPE needs none: spaces are bytes there)."""
    spec = _spec(tokenizer)
    return _space_rule(tokenizer, spec) if _kind(spec) == "llama" else SpaceRule(False)


def lead_template(template: str, lead: str) -> str:
    """``template`` (Jinja) writing ``lead`` first: an expression, so a leading ``{%-`` cannot trim it."""
    return "{{ " + json.dumps(lead) + " }}" + template if lead else template


def build_vocab(tokenizer: PreTrainedTokenizerBase, rows: int, end_of_turn: int | None) -> GgufVocab:
    """Describe ``tokenizer`` for a model with ``rows`` embedding rows (rows past the vocabulary are padding)."""
    spec = _spec(tokenizer)
    kind = _kind(spec)
    pre = llama_cpp_pre_name(spec.get("pre_tokenizer")) if kind == "gpt2" else None
    if len(tokenizer) > rows:
        raise VocabExportError(f"the tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows")
    added = tokenizer.added_tokens_decoder
    merge_scores = _merge_scores(spec, tokenizer.get_vocab()) if kind == "llama" else {}
    tokens, types, scores = [], [], []
    for token_id in range(rows):
        score = 0.0
        if token_id >= len(tokenizer):
            token, kind_ = f"[PAD{token_id}]", gguf.TokenType.UNUSED
        elif token_id in added:
            token = added[token_id].content
            kind_ = gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED
            if token_id == tokenizer.unk_token_id and kind == "llama":
                kind_ = gguf.TokenType.UNKNOWN
        else:
            token = tokenizer.convert_ids_to_tokens(token_id)
            kind_ = gguf.TokenType.NORMAL
            if kind == "llama":
                if _BYTE_TOKEN.fullmatch(token):
                    kind_ = gguf.TokenType.BYTE
                # A token no merge makes is never joined in llama.cpp unless it is a single character.
                score = merge_scores.get(token_id, 0.0 if len(token) == 1 else -1e9)
        tokens.append(token)
        types.append(int(kind_))
        scores.append(score)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])] if kind == "gpt2" else []
    special_ids = {
        "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id, "eot": end_of_turn,
    }
    add_bos, add_eos = _adds_special(tokenizer)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    rule = _space_rule(tokenizer, spec) if kind == "llama" else SpaceRule(False)
    return GgufVocab(
        model=kind, pre=pre, tokens=tokens, types=types, merges=merges,
        special_ids={k: v for k, v in special_ids.items() if v is not None},
        add_bos=add_bos, add_eos=add_eos, chat_template=template and lead_template(template, rule.lead),
        scores=scores if kind == "llama" else [],
        add_space_prefix=rule.add_space_prefix,
    )


def write_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {
        "bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id, "eot": writer.add_eot_token_id,
    }
    for key, token_id in vocab.special_ids.items():
        setters[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
