"""Chat templates: the model's own, a named one for base models, or the user's own Jinja file.

Every template is Jinja run through the tokenizer's ``apply_chat_template``, so training,
generation and serving all render a conversation by one code path. The chosen template
is saved into the run's tokenizer, which is how the same text reaches the server later.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from jinja2 import TemplateError as JinjaTemplateError
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import PreTrainedTokenizerBase

from lorakit.config import TEMPLATE_SUFFIXES
from lorakit.errors import LorakitError
from lorakit.families import END_OF_TURN_TOKENS

log = logging.getLogger(__name__)

# What every stage speaks: data shapes produce conversations, templates render them, inference answers them.
Message = dict[str, str]
Conversation = list[Message]

_LOOP = "{% for message in messages %}"
NAMED_TEMPLATES: dict[str, tuple[str, str | None]] = {
    # name: (jinja, end-of-turn token; None means the tokenizer's EOS)
    "chatml": (
        _LOOP + "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        "<|im_end|>",
    ),
    "llama-3": (
        "{{ bos_token }}" + _LOOP + "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        "<|eot_id|>",
    ),
    "phi-3": (
        _LOOP + "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
        "<|end|>",
    ),
    "alpaca": (
        _LOOP + "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}",
        None,
    ),
    "human-assistant": (
        _LOOP + "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\n\n' }}"
        "{% else %}{{ 'Assistant: ' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
        # The prompt stops before the space: BPE joins a space to the word after it, so the
        # answer's first token is ' word' in training and in generation alike.
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
        None,
    ),
}

# Tokens that close an assistant turn in the families we know (families.py); used to
# find the end of a turn in a model's own template and as stop tokens in generation.
KNOWN_END_TOKENS = END_OF_TURN_TOKENS

# A think block with nothing in it, as Qwen3-style templates write before an answer that has
# no reasoning; data.think=strip_empty removes it with the whitespace that follows.
EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
THINK_CHOICES = ("keep", "strip_empty")


class TemplateError(LorakitError, ValueError):
    """A template that cannot be used as asked; the message says what to change."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str
    end_token_ids: frozenset[int]
    # data.think=strip_empty: every rendering drops empty think blocks, so training, the
    # prompts at inference and the located answers all see the same text.
    strip_empty_think: bool = False

    def render(self, tokenizer: PreTrainedTokenizerBase, messages: Conversation, add_generation_prompt: bool) -> str:
        try:
            text = tokenizer.apply_chat_template(
                messages, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateSyntaxError:
            raise
        except JinjaTemplateError as err:
            # A template's own raise_exception (Gemma and Mistral refuse a system turn, some
            # templates insist on alternating roles): say which template and what to change.
            roles = "/".join(m["role"] for m in messages)
            raise TemplateError(
                f"the chat template '{self.name}' refused a conversation with roles {roles}: {err}. "
                "Change the data to what the template accepts (e.g. no data.system_prompt or system "
                "turns for templates without a system role), or pick another template with data.template."
            ) from None
        return EMPTY_THINK.sub("", text) if self.strip_empty_think else text


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS before plain text (Llama-2-style SentencePiece ones do; most BPE ones do not).

    The GGUF export writes this as ``add_bos_token``, so llama.cpp and Ollama put a BOS before every prompt.
    """
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def leading_bos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """What goes before a rendered conversation's ids: the one rule for templated text, in training and every
    prompt path (chat, generate, serve, eval, verify).

    One BOS, and only where the tokenizer puts BOS before plain text and the rendering does not start with it
    (zephyr, alpaca on a Llama-style base). llama.cpp and Ollama put that BOS there (the GGUF says add_bos_token,
    and llama-server strips a template's own leading BOS before adding its one), real models with such
    templates were trained with it (alignment-handbook tokenized the rendered text with the tokenizer's BOS),
    and the base saw it before every pretraining text. Templates that write ``{{ bos_token }}`` get no second one.
    """
    bos = tokenizer.bos_token_id
    return [bos] if ids[:1] != [bos] and adds_bos(tokenizer) else []


def chat_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """A rendered conversation's ids with each token's character span in ``text``; an added BOS spans no text,
    ``(0, 0)``, so no answer span takes it."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    lead = leading_bos(tokenizer, enc["input_ids"])
    return lead + list(enc["input_ids"]), [(0, 0)] * len(lead) + list(enc["offset_mapping"])


def chat_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A rendered prompt's ids (``chat_tokens`` without the spans)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return leading_bos(tokenizer, ids) + list(ids)


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    if token not in tokenizer.get_vocab():
        return None
    return tokenizer.convert_tokens_to_ids(token)


def _end_ids(tokenizer: PreTrainedTokenizerBase, preferred: str | None) -> frozenset[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if preferred is not None:
        found = _token_id(tokenizer, preferred)
        if found is None:
            raise TemplateError(
                f"the template's end-of-turn token {preferred!r} is not in this tokenizer's vocabulary; "
                "pick a template made for this model, or data.template=auto"
            )
        ids.add(found)
    return frozenset(ids)


def _known_end_ids(tokenizer: PreTrainedTokenizerBase, jinja: str) -> frozenset[int]:
    """EOS plus every known end-of-turn token that this template writes and the vocabulary has."""
    known = [_token_id(tokenizer, t) for t in KNOWN_END_TOKENS if t in jinja]
    return _end_ids(tokenizer, None) | {i for i in known if i is not None}


def _from_file(tokenizer: PreTrainedTokenizerBase, name: str) -> ChatTemplate:
    path = Path(name).expanduser()
    if not path.is_file():
        raise TemplateError(f"template file {path} does not exist (data.template)")
    try:
        jinja = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TemplateError(f"template file {path} is not UTF-8 text") from None
    try:
        ImmutableSandboxedEnvironment().parse(jinja)
    except TemplateSyntaxError as err:
        raise TemplateError(f"{path}, line {err.lineno}: not a valid Jinja template ({err.message})") from None
    return ChatTemplate(path.stem, jinja, _known_end_ids(tokenizer, jinja))


def is_template_file(name: str) -> bool:
    return name.endswith(TEMPLATE_SUFFIXES) or "/" in name or "\\" in name


def resolve_template(tokenizer: PreTrainedTokenizerBase, name: str, think: str = "keep") -> ChatTemplate:
    """Pick the template named in the config ('auto' = the tokenizer's own, or a .jinja file).

    ``think``: 'keep' renders think blocks as the template writes them; 'strip_empty' removes empty ones.
    """
    if think not in THINK_CHOICES:
        raise TemplateError(f"data.think must be one of {', '.join(THINK_CHOICES)}, not {think!r}")
    template = _resolve(tokenizer, name)
    return replace(template, strip_empty_think=think == "strip_empty")


def _resolve(tokenizer: PreTrainedTokenizerBase, name: str) -> ChatTemplate:
    if name == "auto":
        own = tokenizer.chat_template
        if isinstance(own, str) and own.strip():
            return ChatTemplate("model", own, _known_end_ids(tokenizer, own))
        log.warning("the tokenizer has no chat template; falling back to the 'alpaca' template")
        name = "alpaca"
    if name not in NAMED_TEMPLATES:
        if is_template_file(name):
            return _from_file(tokenizer, name)
        raise TemplateError(
            f"unknown template {name!r}; choose auto, one of {', '.join(NAMED_TEMPLATES)}, or a path to a .jinja file"
        )
    jinja, end = NAMED_TEMPLATES[name]
    return ChatTemplate(name, jinja, _end_ids(tokenizer, end))
