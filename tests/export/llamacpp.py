"""llama.cpp as the judge of an export: its own tokenizer, its own forward pass, its own stop rule.

Through ``llama-cpp-python`` (the C++ library built from source by scripts/setup.sh --test). Tests
that use it skip, with the reason, where it is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP,
    reason="llama.cpp's Python binding is not installed: scripts/setup.sh --test builds llama-cpp-python==0.3.36 "
           "(about 15 minutes on 2 cores; see docs/tests.md)",
)


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


def hf_greedy(model, ids: list[int], max_new: int, end_ids) -> list[int]:
    """transformers' greedy tokens, ending with (and including) the first of ``end_ids``."""
    out: list[int] = []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            out.append(token)
            if token in end_ids:
                break
            seq.append(token)
    return out


def with_file_weights(model, qtype: str):
    """A copy of ``model`` whose matrices hold what a ``qtype`` export stores (quantized, then read back).

    Rounding works on whole rows, so it does not matter that the file reorders some rows. What
    is left between this and llama.cpp is how each computes, not what the file holds.
    """
    import copy

    import gguf

    kind = gguf.GGMLQuantizationType[qtype.upper()]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    out = copy.deepcopy(model)
    with torch.no_grad():
        for param in out.parameters():
            if param.dim() == 2:
                data = param.detach().float().numpy()
                if data.shape[-1] % block:  # the export keeps such rows f16
                    back = data.astype(np.float16).astype(np.float32)
                else:
                    back = gguf.quants.dequantize(gguf.quants.quantize(data, kind), kind)
                param.copy_(torch.from_numpy(np.ascontiguousarray(back)).reshape(param.shape))
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def logit_gap(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float]:
    """Mean and max |difference| as fractions of the largest |logit|, and the worst pick: how far below
    transformers' best logit (same fraction) the token llama.cpp ranks first can be. A near tie may flip;
    a real disagreement shows as a large worst pick."""
    scale = float(np.abs(want).max())
    diff = np.abs(got - want)
    picked = np.take_along_axis(want, got.argmax(-1)[:, None], axis=-1)[:, 0]
    worst_pick = float((want.max(-1) - picked).max() / scale)
    return float(diff.mean() / scale), float(diff.max() / scale), worst_pick
