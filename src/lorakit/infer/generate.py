"""Answer conversations: batched with left padding, or one at a time with streaming."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from lorakit.config import GenerationConfig
from lorakit.data.shapes import Conversation
from lorakit.data.templates import ChatTemplate


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    new_tokens: int


def prompt_ids(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, conv: Conversation) -> list[int]:
    """The exact tokens training saw before an answer: same template, no extra BOS."""
    text = template.render(tokenizer, conv, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _sampling(gen: GenerationConfig) -> dict:
    if gen.temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p}


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conversations: Sequence[Conversation],
    gen: GenerationConfig,
) -> list[Answer]:
    answers: list[Answer] = []
    pad = tokenizer.pad_token_id
    stop = sorted(template.end_token_ids)
    for start in range(0, len(conversations), gen.batch_size):
        chunk = [prompt_ids(tokenizer, template, c) for c in conversations[start : start + gen.batch_size]]
        width = max(len(p) for p in chunk)
        # Left padding keeps every prompt's last token at the same column, where generation starts.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        out = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=gen.max_new_tokens,
            eos_token_id=stop,
            pad_token_id=pad,
            **_sampling(gen),
        )
        for row, p in enumerate(chunk):
            new = out[row, width:].tolist()
            # Cut at the first stop token: rows that finished early are padded after it.
            for k, tok in enumerate(new):
                if tok in template.end_token_ids:
                    new = new[: k + 1]
                    break
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            answers.append(Answer(text, len(p), len(new)))
    return answers


@torch.inference_mode()
def stream_answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conv: Conversation,
    gen: GenerationConfig,
) -> Answer:
    """Print tokens as they are generated and return the whole answer."""
    ids = prompt_ids(tokenizer, template, conv)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(
        input_ids=torch.tensor([ids], device=model.device),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=model.device),
        max_new_tokens=gen.max_new_tokens,
        eos_token_id=sorted(template.end_token_ids),
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **_sampling(gen),
    )
    new = out[0, len(ids) :].tolist()
    return Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids), len(new))
