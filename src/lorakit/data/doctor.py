"""The data doctor: the common ways a fine-tune trains on the wrong tokens, checked before it starts.

Each check returns findings for the report. Checks that depend on the data count samples
(their origins are examples); checks that depend only on the template render a small probe
conversation, because the template's behaviour is the same for every sample.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from lorakit.data.collate import PadCollator
from lorakit.data.encode import EMPTY_PROMPT, Encoded
from lorakit.data.report import MAX_EXAMPLES, DataReport, Finding
from lorakit.templates import EMPTY_THINK, ChatTemplate, Conversation

PROBE: Conversation = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "It is four."},
]
_NO_LOSS = ("no token carries loss", "no token carries loss after truncation")


def _origins(items: Sequence[Encoded]) -> list[str]:
    return [e.origin for e in items[:MAX_EXAMPLES]]


def no_loss(report: DataReport) -> list[Finding]:
    count = sum(report.dropped[r] for r in _NO_LOSS)
    if not count:
        return []
    examples = [o for r in _NO_LOSS for o in report.examples.get(r, [])][:MAX_EXAMPLES]
    message = f"{count} samples had no token carrying loss and were dropped"
    return [Finding("warning", "no_loss_tokens", message, count, examples)]


def empty_prompts(report: DataReport) -> list[Finding]:
    count = report.dropped[EMPTY_PROMPT]
    if not count:
        return []
    message = (f"{count} samples had an empty prompt (no user text, e.g. instruction and input both blank) and "
               "were dropped; fill in the prompt or remove them")
    return [Finding("warning", "empty_prompt", message, count, report.examples[EMPTY_PROMPT])]


def doubled_bos(tokenizer: PreTrainedTokenizerBase, encoded: Sequence[Encoded]) -> list[Finding]:
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    hits = [e for e in encoded if e.input_ids[:2] == [bos, bos]]
    if not hits:
        return []
    return [Finding(
        "error", "doubled_bos",
        f"{len(hits)} samples start with BOS twice ({tokenizer.bos_token!r}): the text already begins with it "
        "and the tokenizer or template adds another; remove it from the data or the template",
        len(hits), _origins(hits),
    )]


def end_cut(report: DataReport) -> list[Finding]:
    if not report.answers_lost_end:
        return []
    return [Finding(
        "warning", "end_token_cut",
        f"{report.answers_lost_end} answers lost their end-of-turn token to truncation (data.truncation=cut): "
        "the model learns answers that never stop; raise data.max_length or use data.truncation=drop",
        report.answers_lost_end,
    )]


def no_end_label(template: ChatTemplate, encoded: Sequence[Encoded]) -> list[Finding]:
    hits = [e for e in encoded if e.answers_without_end]
    if not hits:
        return []
    answers = sum(e.answers_without_end for e in hits)
    return [Finding(
        "error", "no_end_label",
        f"{answers} answers carry no end-of-turn token in their labels (template '{template.name}'): the "
        "model will not learn to stop. Use a template that closes each answer with the EOS or an end-of-turn "
        "token the tokenizer knows",
        answers, _origins(hits),
    )]


def instruct_without_template(
    tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, has_conversations: bool, has_text: bool
) -> list[Finding]:
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if not own:
        if not has_conversations:
            return []
        return [Finding(
            "note", "base_model_template",
            f"the tokenizer has no chat template (a base model): conversations are rendered with '{template.name}', "
            "and chat and generate will use the same",
        )]
    out = []
    if has_text:
        out.append(Finding(
            "warning", "text_on_instruct_model",
            "this model has a chat template but text samples are trained without it; if they are conversations, "
            "give them as messages so they are rendered as the model expects",
        ))
    if has_conversations and template.jinja != own:
        mine = template.render(tokenizer, PROBE, add_generation_prompt=False)
        theirs = tokenizer.apply_chat_template(PROBE, tokenize=False)
        if mine != theirs:
            out.append(Finding(
                "warning", "instruct_without_template",
                f"this model has its own chat template but the data is rendered with '{template.name}': the "
                "model must relearn the format and chat tools that use its own template will not match. "
                "Use data.template=auto unless this is intended",
            ))
    return out


def empty_think(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> list[Finding]:
    rendered = template.render(tokenizer, PROBE, add_generation_prompt=False)
    if not EMPTY_THINK.search(rendered):
        return []
    return [Finding(
        "warning", "empty_think_block",
        f"template '{template.name}' writes an empty <think></think> block into answers that have no reasoning: "
        "the model is trained to skip thinking. Put the reasoning into the data, set data.think=strip_empty, "
        "or use a template without it",
    )]


def pad_is_eos(tokenizer: PreTrainedTokenizerBase, encoded: Sequence[Encoded]) -> list[Finding]:
    """Pad == EOS is the case where masking labels by pad id would erase every trained EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad != eos or not encoded:
        return []
    batch = list(encoded[:8])
    wanted = sum(lab == eos for e in batch for lab in e.labels)
    kept = int((PadCollator(pad)(batch)["labels"] == eos).sum())
    if kept != wanted:
        return [Finding(
            "error", "pad_masks_eos",
            f"the pad token is the EOS token and padding removed {wanted - kept} EOS labels from a test batch",
        )]
    return [Finding(
        "note", "pad_is_eos",
        f"the pad token is the EOS token ({tokenizer.eos_token!r}); lorakit sets labels before padding, and a "
        f"test batch kept all {wanted} EOS labels. Tools that mask labels by pad id would drop them",
    )]


def diagnose(
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    encoded: Sequence[Encoded],
    report: DataReport,
    *,
    has_conversations: bool,
    has_text: bool,
) -> list[Finding]:
    """Every check, in the order a user should read them: errors of the data, then of the setup."""
    findings = no_loss(report) + empty_prompts(report) + doubled_bos(tokenizer, encoded) + end_cut(report)
    if has_conversations:
        findings += no_end_label(template, encoded) + empty_think(tokenizer, template)
    findings += instruct_without_template(tokenizer, template, has_conversations, has_text)
    findings += pad_is_eos(tokenizer, encoded)
    return findings
