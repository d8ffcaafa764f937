"""llama.cpp as a consumer of an export: its own tokenizer, chat formatter, forward pass and stop rule.

Through ``llama-cpp-python``, the one place lorakit calls it for inference; ``missing()`` says why
not where it is not installed, and the checks that need it skip with that reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def missing() -> str | None:
    """Why llama.cpp cannot be used here; None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama.cpp's Python binding is not installed (`pip install llama-cpp-python`, which compiles "
                "llama.cpp; scripts/setup.sh builds it)")
    return None


class LlamaCpp:
    """One GGUF (and optionally a GGUF LoRA on top) loaded by llama.cpp, with every position's logits kept."""

    def __init__(self, path: Path, lora: Path | None = None, n_ctx: int = 256):
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=n_ctx, n_batch=n_ctx,
            n_threads=1, n_threads_batch=1, logits_all=True, verbose=False, seed=0,
        )

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """Text as llama.cpp splits it, special tokens parsed, no BOS added (lorakit's prompts carry their own)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt llama-cpp-python's chat completion builds from the GGUF's own chat template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:
            return self.llm._model.token_get_text(token) if token != -1 else ""

        formatter = Jinja2ChatFormatter(self.metadata()["tokenizer.chat_template"],
                                        eos_token=text(self.llm.token_eos()), bos_token=text(self.llm.token_bos()))
        return formatter(messages=messages).prompt

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The ids llama-server feeds the model for a chat: the GGUF's chat template rendered, the template's own
        leading BOS (trailing EOS) dropped where the GGUF says add_bos_token (add_eos_token), and the text tokenized
        with the specials the GGUF says to add. llama-cpp-python's own chat completion adds none (its formatter
        says the template wrote them); llama-server, llama-cli and ollama, which users run, do."""
        text, model = self.chat_prompt(messages), self.llm._model
        bos, eos = (model.token_get_text(t) if t != -1 else "" for t in (self.llm.token_bos(), self.llm.token_eos()))
        if model.add_bos_token() and bos and text.startswith(bos):
            text = text[len(bos):]
        if model.add_eos_token() and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def is_end(self, token: int) -> bool:
        """llama.cpp's own end-of-generation rule (EOS, EOT and the like)."""
        return bool(self._lib.llama_vocab_is_eog(self.llm._model.vocab, token))

    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (teacher-forced), shape (len, vocab)."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], max_new: int) -> list[int]:
        """Greedy tokens after ``ids``, ending with (and including) the first end-of-generation token."""
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(max_new):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if self.is_end(token):
                break
            self.llm.eval([token])
        return out
