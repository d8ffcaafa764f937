"""New tokens: added to the tokenizer, given embedding rows, and reproducible on reload.

The rule that makes reload work: the embedding matrix is grown to ``len(tokenizer)`` only
when the tokenizer has outgrown it. Training and every later load (chat, merge, export)
apply the same rule to the same base and the run's saved tokenizer, so the shapes match the
embeddings saved with the adapter.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def add_tokens(tokenizer: PreTrainedTokenizerBase, special_tokens: list[str], pad_token: str | None) -> list[str]:
    """Add the configured special tokens and pad token; return those new to the vocabulary."""
    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(special_tokens) if t not in vocab]
    if special_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": list(dict.fromkeys(special_tokens))}, replace_extra_special_tokens=False
        )
    if pad_token is not None:
        if pad_token not in vocab and pad_token not in new:
            new.append(pad_token)
        tokenizer.add_special_tokens({"pad_token": pad_token})
    if new:
        log.info("added %d new token(s) to the vocabulary: %s", len(new), ", ".join(new))
    return new


def fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Grow the embeddings when the tokenizer has more tokens than rows; return whether it grew.

    transformers starts the new rows at the old rows' mean (with their covariance), so a new
    token begins as an average token, not as noise that dominates the first steps.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    model.config.pad_token_id = tokenizer.pad_token_id
    if len(tokenizer) <= rows:
        return False
    model.resize_token_embeddings(len(tokenizer))
    log.info("embeddings resized from %d to %d rows", rows, len(tokenizer))
    return True


def embedding_module_names(model: PreTrainedModel) -> list[str]:
    """Leaf names of the input and output embeddings (e.g. embed_tokens, lm_head) for modules_to_save."""
    wanted = [model.get_input_embeddings(), model.get_output_embeddings()]
    names = []
    for name, module in model.named_modules():
        if any(module is w for w in wanted if w is not None):
            names.append(name.rsplit(".", 1)[-1])
    return list(dict.fromkeys(names))
