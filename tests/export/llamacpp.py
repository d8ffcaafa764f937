"""llama.cpp as the judge of an export: its own tokenizer, its own forward pass, its own stop rule.

Through ``llama-cpp-python`` (the C++ library built from source by scripts/setup.sh --test). Tests
that use it skip, with the reason, where it is not installed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lorakit.verify.llamacpp import LlamaCpp  # noqa: F401  (the tests judge with the product's wrapper)
from lorakit.verify.logits import logit_gap  # noqa: F401

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP,
    reason="llama.cpp's Python binding is not installed: scripts/setup.sh --test builds llama-cpp-python==0.3.36 "
           "(about 15 minutes on 2 cores; see docs/tests.md)",
)


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
