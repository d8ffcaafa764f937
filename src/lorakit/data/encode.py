"""Where a conversation becomes token ids and labels.

The whole conversation is rendered and tokenized once; labels are a copy of the ids with
every position outside an assistant answer set to -100. Which characters belong to an
assistant answer is learned from the structure of the conversation, not by searching the
text for a marker: we render the conversation up to the turn (with the generation prompt)
and up to the end of the turn, and the answer is the text between the two. So label t is
always token t of the same sequence (the model shifts), and a user who types
"<|im_start|>assistant" into a prompt cannot leak it into the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from lorakit.data.shapes import Conversation
from lorakit.data.templates import ChatTemplate, TemplateError

IGNORE_INDEX = -100


class SampleDropped(Exception):
    """This sample cannot be trained on; ``reason`` is counted in the data report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    cut_tokens: int = 0  # tokens discarded by truncation
    lost_end: bool = False  # truncation removed an answer's end-of-turn token


def _answer_spans(
    tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, conv: Conversation, full: str, train_on: str
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns that carry loss."""
    spans = []
    for index, message in enumerate(conv):
        if message["role"] != "assistant":
            continue
        before = template.render(tokenizer, conv[:index], add_generation_prompt=True)
        through = template.render(tokenizer, conv[: index + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise TemplateError(
                f"template '{template.name}' does not render a conversation as a growing prefix "
                f"(turn {index}); the answer cannot be located for masking. Use a named template "
                "(data.template) or a template without history rewriting."
            )
        spans.append((len(before), len(through)))
    if train_on == "last_assistant":
        spans = spans[-1:]
    return spans


def _label_positions(
    offsets: list[tuple[int, int]], ids: list[int], span: tuple[int, int], end_ids: frozenset[int]
) -> tuple[list[int], bool]:
    """Token positions inside ``span``, up to and including the turn's end token.

    Returns the positions and whether an end token was found. Text the template adds after
    the end token (a newline, say) is prompt for the next turn, not answer.
    """
    start, stop = span
    inside = [k for k, (s, e) in enumerate(offsets) if e > start and s < stop and e > s]
    ends = [n for n, k in enumerate(inside) if ids[k] in end_ids]
    if not ends:
        return inside, False
    return inside[: ends[-1] + 1], True


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conv: Conversation,
    max_length: int,
    truncation: str = "drop",
    train_on: str = "all_assistant",
) -> Encoded:
    if not any(m["role"] == "assistant" for m in conv):
        raise SampleDropped("no assistant turn")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in conv):
        raise SampleDropped("empty assistant answer")
    full = template.render(tokenizer, conv, add_generation_prompt=False)
    # The template already writes BOS where the model wants it; adding special tokens
    # again here is how recipes end up training on a doubled BOS.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    end_positions: list[int] = []
    for span in _answer_spans(tokenizer, template, conv, full, train_on):
        positions, has_end = _label_positions(offsets, ids, span, template.end_token_ids)
        for k in positions:
            labels[k] = ids[k]
        if has_end:
            end_positions.append(positions[-1])
    if all(x == IGNORE_INDEX for x in labels):
        raise SampleDropped("no token carries loss")
    if len(ids) <= max_length:
        return Encoded(ids, labels)
    if truncation == "error":
        raise ValueError(f"sample has {len(ids)} tokens, over max_length={max_length} (data.truncation=error)")
    if truncation == "drop":
        raise SampleDropped(f"longer than max_length={max_length}")
    cut = len(ids) - max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        raise SampleDropped("no token carries loss after truncation")
    lost_end = any(p >= max_length for p in end_positions)
    return Encoded(ids, labels, cut_tokens=cut, lost_end=lost_end)
