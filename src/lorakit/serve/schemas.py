"""The OpenAI request bodies this server accepts, as pydantic models.

Unknown fields are refused (400) rather than ignored, as OpenAI itself does: a client that
sends ``tools`` or ``logprobs`` must learn they were not honoured. ``top_k``, ``min_p`` and
``repetition_penalty`` are accepted besides the OpenAI fields, as other local servers do.
Every number has a range (and no NaN or infinity), so an out-of-range value is a 400 that
names the field, never a 500 from deep inside generation. Types are strict: ``"max_tokens": "5"``
or ``"temperature": true`` is a client's mistake, refused rather than guessed at (an integer
still fills a float field, as JSON has one kind of number).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorakit.config import SEED_MAX

# The widest count accepted: far above any context. Seeds take the config's range.
MAX_COUNT = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_COUNT)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One answer per request.")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s]

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _not_supported(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("only 0 is supported; use repetition_penalty (1 = off, above 1 discourages repeats)")
        return value

    def generation_overrides(self) -> dict:
        """The request's sampling fields that are set, under GenerationConfig's names."""
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        return {k: v for k, v in fields.items() if v is not None}


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    logprobs: Literal[False] | None = None

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        # The chat templates know system, user and assistant; "developer" is OpenAI's newer system.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: Literal[False] = False
    logprobs: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("give one prompt per request (a string, or a list of one string)")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value

    def requested_tokens(self) -> int | None:
        return self.max_tokens
