"""A tiny SentencePiece-style tokenizer, as TinyLlama's and Mistral's tokenizer.json have it (or as
transformers 5 rebuilds them).

BPE with byte fallback over "▁"-marked text: a Prepend("▁") + Replace(" ", "▁") normalizer,
no pre-tokenizer, the 256 byte tokens <0x00>..<0xFF> after the specials, BOS added by the
post-processor. Characters the training lines lack (é, ü, newlines) fall back to bytes.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tests.conftest import CORPUS, FAMILY_FORMATS

SPACE = "\u2581"


def make_spm_tokenizer(family: str = "zephyr", metaspace: str | None = None, prefix: bool = True
                       ) -> PreTrainedTokenizerFast:
    """``metaspace``: "first" or "always" gives the form transformers 5 builds Llama-style tokenizers in
    (a Metaspace pre-tokenizer with that prepend_scheme, no normalizer) instead of the legacy one.
    ``prefix=False``: no "▁" before the text at all, as Gemma's tokenizer has it."""
    bos, eos, extra, jinja = FAMILY_FORMATS[family]
    specials = ["<unk>", bos, eos]
    # Train word-local merges (as SentencePiece does), on text marked the way the normalizer marks it.
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
    trainer_tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    if not prefix:
        tok.normalizer = normalizers.Replace(" ", SPACE)
        tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    if metaspace is not None:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=metaspace, split=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                   pad_token=eos)
    fast.add_special_tokens({"additional_special_tokens": extra})
    fast.chat_template = jinja
    return fast
