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

from lorakit.labels import IGNORE_INDEX
from lorakit.templates import ChatTemplate, Conversation, TemplateError, chat_ids, chat_tokens



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
    answers_without_end: int = 0  # trained answers whose labels hold no end-of-turn token
    origin: str = ""  # file and line of the sample, for reports


def _answer_spans(
    tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, conv: Conversation, full: str, train_on: str
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns that carry loss."""
    indices = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        indices = indices[-1:]
    spans = []
    for index in indices:
        before = template.render(tokenizer, conv[:index], add_generation_prompt=True)
        last = index == len(conv) - 1
        through = full if last else template.render(tokenizer, conv[: index + 1], add_generation_prompt=False)
        eos = tokenizer.eos_token
        if not full.startswith(through) and eos and through.endswith(eos):
            # Some templates (Phi-3) close a finished conversation with EOS; mid-conversation it is not there.
            through = through.removesuffix(eos)
        if not (through.startswith(before) and full.startswith(through)):
            hint = " or train on the last answer only (data.train_on=last_assistant)"
            hint = "" if train_on == "last_assistant" else hint
            raise TemplateError(
                f"template '{template.name}' does not render a conversation as a growing prefix "
                f"(turn {index}); the answer cannot be located for masking. Use a named template "
                f"(data.template){hint}."
            )
        spans.append((len(before), len(through)))
    return spans


def _label_positions(
    text: str, offsets: list[tuple[int, int]], ids: list[int], span: tuple[int, int], end_ids: frozenset[int]
) -> tuple[list[int], bool]:
    """Token positions inside ``span``, up to and including the turn's end token.

    Returns the positions and whether an end token was found. Text the template adds after
    the end token (a newline, say) is prompt for the next turn, not answer. The turn's end is
    the first end token followed by nothing but whitespace and end tokens: an end token typed
    inside an answer is followed by more answer, while an EOS some templates (Phi-3) append
    after the last turn's own end-of-turn token is not part of the answer.
    """
    start, stop = span
    inside = [k for k, (s, e) in enumerate(offsets) if e > start and s < stop and e > s]
    ends = [n for n, k in enumerate(inside) if ids[k] in end_ids]
    if not ends:
        return inside, False

    def closes(n: int) -> bool:
        return all(ids[k] in end_ids or not text[offsets[k][0] : offsets[k][1]].strip() for k in inside[n + 1 :])

    last = next((n for n in ends if closes(n)), ends[-1])
    return inside[: last + 1], True


def _fit(encoded: Encoded, end_positions: list[int], max_length: int, truncation: str) -> Encoded:
    """Apply the over-length policy; every outcome is either whole, counted as cut, or raised."""
    ids, labels = encoded.input_ids, encoded.labels
    if len(ids) <= max_length:
        return encoded
    if truncation == "error":
        raise ValueError(f"sample has {len(ids)} tokens, over max_length={max_length} (data.truncation=error)")
    if truncation == "drop":
        raise SampleDropped(f"longer than max_length={max_length}")
    kept = labels[:max_length]
    if all(x == IGNORE_INDEX for x in kept):
        raise SampleDropped("no token carries loss after truncation")
    encoded.input_ids, encoded.labels = ids[:max_length], kept
    encoded.cut_tokens = len(ids) - max_length
    encoded.lost_end = any(p >= max_length for p in end_positions)
    return encoded


EMPTY_PROMPT = "empty prompt"
# data train_on for a prompt to be answered (method grpo): no answer, no label (see ``encode_prompt``).
PROMPT_ONLY = "prompt"


def empty_prompt(conv: Conversation) -> bool:
    """Whether the conversation has user turns and not one holds text: an answer to nothing.

    Almost always a data error (alpaca's instruction and input both blank, a prompt column
    left empty); training on it teaches the model to answer a question nobody asked. A
    conversation with no user turn at all (a system prompt and an answer) is left alone:
    that is a choice of format, not a blank cell.
    """
    users = [m for m in conv if m["role"] == "user"]
    return bool(users) and not any(m["content"].strip() for m in users)


def content_problem(conv: Conversation, text: str | None, train_on: str) -> str | None:
    """Why a sample cannot be trained on, judged from its content alone (no tokenizer needed)."""
    if text is not None:
        return None if text.strip() else "empty text"
    if train_on not in ("everything", PROMPT_ONLY) and not any(m["role"] == "assistant" for m in conv):
        return "no assistant turn"
    if any(m["role"] == "assistant" and not m["content"].strip() for m in conv):
        return "empty assistant answer"
    if empty_prompt(conv):
        return EMPTY_PROMPT
    return None


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conv: Conversation,
    max_length: int,
    truncation: str = "drop",
    train_on: str = "all_assistant",
) -> Encoded:
    problem = content_problem(conv, None, train_on)
    if problem:
        raise SampleDropped(problem)
    full = template.render(tokenizer, conv, add_generation_prompt=False)
    # No special tokens but the one BOS llama.cpp and Ollama put before the prompt (templates.leading_bos):
    # a template that writes BOS gets no second one, the doubled BOS of many recipes.
    ids, offsets = chat_tokens(tokenizer, full)
    if train_on == "everything":
        ends = [k for k, t in enumerate(ids) if t in template.end_token_ids]
        # label 0 is never predicted (the model shifts), so a leading BOS may keep its label, as in encode_text
        return _fit(Encoded(ids, list(ids)), ends[-1:], max_length, truncation)
    labels = [IGNORE_INDEX] * len(ids)
    end_positions: list[int] = []
    without_end = 0
    for span in _answer_spans(tokenizer, template, conv, full, train_on):
        positions, has_end = _label_positions(full, offsets, ids, span, template.end_token_ids)
        for k in positions:
            labels[k] = ids[k]
        if has_end:
            end_positions.append(positions[-1])
        else:
            without_end += 1
    if all(x == IGNORE_INDEX for x in labels):
        raise SampleDropped("no token carries loss")
    return _fit(Encoded(ids, labels, answers_without_end=without_end), end_positions, max_length, truncation)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, conv: Conversation,
                  max_length: int, truncation: str = "drop") -> Encoded:
    """A conversation to be answered: rendered with the generation prompt, as chat and generate render it.

    No token carries a label: the answer is sampled later. Over ``max_length``, ``cut`` keeps the
    prompt's end (where the answer starts), so the tokens dropped are its earliest.
    """
    problem = content_problem(conv, None, PROMPT_ONLY)
    if problem:
        raise SampleDropped(problem)
    ids = chat_ids(tokenizer, template.render(tokenizer, conv, add_generation_prompt=True))
    if len(ids) <= max_length:
        return Encoded(ids, [IGNORE_INDEX] * len(ids))
    if truncation == "error":
        raise ValueError(f"prompt has {len(ids)} tokens, over max_length={max_length} (data.truncation=error)")
    if truncation == "drop":
        raise SampleDropped(f"longer than max_length={max_length}")
    return Encoded(ids[-max_length:], [IGNORE_INDEX] * max_length, cut_tokens=len(ids) - max_length)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int, truncation: str = "drop") -> Encoded:
    """Plain language-model data: every token carries loss, and EOS closes the text so the model learns to stop."""
    problem = content_problem([], text, "everything")
    if problem:
        raise SampleDropped(problem)
    # Here the tokenizer's own special tokens are wanted: there is no template to write BOS.
    ids: list[int] = tokenizer(text, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and ids[-1:] != [eos]:
        ids.append(eos)
    return _fit(Encoded(ids, list(ids)), [len(ids) - 1], max_length, truncation)
