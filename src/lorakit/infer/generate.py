"""Answer many conversations at once: batched, left-padded, greedy unless asked to sample."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import GenerationConfig
from lorakit.errors import LorakitError
from lorakit.infer.sampling import sampling_processors
from lorakit.templates import ChatTemplate, Conversation, chat_ids

# Models that do not say how long a sequence they were trained on get this many positions.
FALLBACK_CONTEXT = 2048


class GenerationError(LorakitError, ValueError):
    """Prompts that cannot be answered as asked (they do not fit the context); the message says what to change."""


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    new_tokens: int
    # "stop": an end-of-turn token or a stop string ended it; "length": max_new_tokens did.
    finish_reason: str = "stop"
    token_ids: list[int] = field(default_factory=list, repr=False)  # the generated tokens, stop token included


def prompt_ids(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, conv: Conversation) -> list[int]:
    """The exact tokens training saw before an answer: same template, the same BOS rule (``templates.chat_ids``)."""
    return chat_ids(tokenizer, template.render(tokenizer, conv, add_generation_prompt=True))


def context_length(model: PreTrainedModel, gen: GenerationConfig) -> int:
    """Longest prompt plus answer: the configured one, else what the model was built for."""
    if gen.context_length is not None:
        return gen.context_length
    return int(getattr(model.config, "max_position_embeddings", None) or FALLBACK_CONTEXT)


def sampling_kwargs(gen: GenerationConfig) -> dict:
    """generate() arguments for the sampling settings.

    Everything is passed explicitly (None switches a processor off), so a model's own
    generation_config.json (a top_k of 50, say) never changes what the user asked for. Sampling
    runs as greedy decoding over Gumbel-noised logits (``infer/sampling.py``: the same
    distribution as ``do_sample=True``, without ``torch.multinomial``'s cost on a CPU), so
    ``generate``'s own warpers stay off and lorakit's processors apply the settings.
    """
    penalty = {"repetition_penalty": gen.repetition_penalty if gen.repetition_penalty != 1.0 else None}
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None, **penalty}
    if gen.temperature <= 0:
        return greedy
    return {**greedy, "logits_processor": sampling_processors(gen)}


def finish_reason(new_ids: Sequence[int], stop_ids: frozenset[int], max_new_tokens: int) -> str:
    if new_ids and new_ids[-1] in stop_ids:
        return "stop"
    return "length" if len(new_ids) >= max_new_tokens else "stop"


def _cut_at_stop(new_ids: list[int], stop_ids: frozenset[int]) -> list[int]:
    """Rows that finished early are padded after their stop token; keep up to the first one."""
    for k, tok in enumerate(new_ids):
        if tok in stop_ids:
            return new_ids[: k + 1]
    return new_ids


@torch.inference_mode()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    gen: GenerationConfig,
    stop_ids: frozenset[int],
    progress: Callable[[int], None] | None = None,
    group: int = 1,
) -> list[Answer]:
    """Answer token prompts in batches of ``gen.batch_size``; answers come back in prompt order.

    Prompts are batched longest first, so a batch holds prompts of similar length and little
    compute goes to padding. ``progress`` is called with the number of prompts each batch finished.

    ``group``: the prompts come in runs of ``group`` equal prompts (GRPO's completions of one
    prompt). A run stays in one batch, and its prompt is read once: the cache of that one pass is
    copied to the run's rows before sampling starts, so the prompt's tokens are computed once per
    run, not once per answer. With prompts of 70 tokens and answers of 48 that is most of the work
    of a step's prefill. The answers are those of ``group=1`` (tests/infer/test_generate.py).
    """
    if gen.seed is not None:
        torch.manual_seed(gen.seed)
    runs = _runs(prompts, group)
    pad = tokenizer.pad_token_id
    order = sorted(range(len(runs)), key=lambda r: -len(prompts[runs[r][0]]))
    per_batch = max(1, gen.batch_size // group)  # whole runs; a run longer than the batch is one batch
    answers: list[Answer | None] = [None] * len(prompts)
    for start in range(0, len(order), per_batch):
        rows = [i for r in order[start : start + per_batch] for i in runs[r]]
        chunk = [prompts[i] for i in rows]
        width = max(len(p) for p in chunk)
        # Left padding keeps every prompt's last token at the same column, where generation starts.
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk]).to(model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk]).to(model.device)
        # Prompts of one token leave nothing to read ahead: generate reads them itself.
        shared = {"cache": _prefilled(model, ids[::group], mask[::group], group)} if group > 1 and width > 1 else {}
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=gen.max_new_tokens,
            eos_token_id=sorted(stop_ids),
            pad_token_id=pad,
            **shared,
            **sampling_kwargs(gen),
        )
        for row, index in enumerate(rows):
            new = _cut_at_stop(out[row, width:].tolist(), stop_ids)
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            answers[index] = Answer(
                text, len(prompts[index]), len(new), finish_reason(new, stop_ids, gen.max_new_tokens), new
            )
        if progress is not None:
            progress(len(rows))
    return [a for a in answers if a is not None]


def _runs(prompts: Sequence[list[int]], group: int) -> list[range]:
    if group < 1 or len(prompts) % group:
        raise ValueError(f"{len(prompts)} prompts do not come in runs of {group}")
    runs = [range(i, i + group) for i in range(0, len(prompts), group)]
    if any(prompts[i] != prompts[run[0]] for run in runs for i in run):
        raise ValueError(f"the prompts do not come in runs of {group} equal prompts")
    return runs


def _prefilled(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, group: int) -> DynamicCache:
    """The cache of one pass over each run's prompt but its last token, copied to the run's ``group`` rows.

    ``generate`` then finds all but the last prompt token cached and starts from there. Positions
    count real tokens only, as ``generate`` numbers a left-padded prompt.
    """
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache,
          use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(group)
    return cache


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conversations: Sequence[Conversation],
    gen: GenerationConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Answer]:
    prompts = [prompt_ids(tokenizer, template, c) for c in conversations]
    return generate_ids(model, tokenizer, prompts, gen, template.end_token_ids, progress)


@dataclass
class Answered:
    """A batch of answers in prompt order, and how long generating them took."""

    answers: list[Answer]
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(a.new_tokens for a in self.answers)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def check_fits(prompts: Sequence[list[int]], origins: Sequence[str], limit: int, max_new_tokens: int) -> None:
    """Refuse, before generating anything, prompts whose answer could not fit the context."""
    too_long = [f"{origin} ({len(p)} tokens)" for origin, p in zip(origins, prompts) if len(p) + max_new_tokens > limit]
    if too_long:
        raise GenerationError(
            f"{len(too_long)} prompt(s) plus --max-new-tokens {max_new_tokens} exceed the {limit}-token "
            f"context: {'; '.join(too_long[:5])}{' ...' if len(too_long) > 5 else ''}. "
            "Shorten them or lower --max-new-tokens."
        )


def answer_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conversations: Sequence[Conversation],
    origins: Sequence[str],
    gen: GenerationConfig,
    progress: Callable[[int], None] | None = None,
) -> Answered:
    """What ``lorakit generate`` does: check every prompt fits, then answer them all in batches, timed."""
    prompts = [prompt_ids(tokenizer, template, c) for c in conversations]
    check_fits(prompts, origins, context_length(model, gen), gen.max_new_tokens)
    started = time.perf_counter()
    answers = generate_ids(model, tokenizer, prompts, gen, template.end_token_ids, progress)
    return Answered(answers, time.perf_counter() - started)
