"""Comparing float32 tensors that were computed with sums taken in another order.

Two computations of the same gradient (eager against compiled, a fused op against peft's, one
process against two) add the same terms in another order. The difference that leaves is about
``n * eps * sum(|term|)``: it follows the size of the terms, which is the scale of the tensor, not
the size of each result. An element whose terms cancel to nearly zero keeps the whole absolute
error and so looks wildly off in relative terms. A fixed ``atol`` (1e-6, say) then passes on one CPU
and fails on another, where the vector width (AVX2, AVX512), the BLAS kernel or inductor's C++ code
picks another order: on a Xeon with AVX512 and no AVX512-BF16, one near-zero element of 128 in a
compiled LoRA gradient was 1.17e-6 off (0.75% of itself) while the loss agreed to 1e-5.

:func:`assert_close_at_scale` therefore takes the absolute tolerance from the tensor's own scale:
each element may be ``rtol`` of the largest expected element off, plus ``rtol`` of itself. A real
defect (a missing term, a wrong mask, a dropped sample) moves elements by a large fraction of the
scale and still fails. Reordering stays far inside it: compiled against eager LoRA gradients
differed by at most 1.9e-6 of their tensor's scale on an AMD EPYC with AVX512-BF16 and 3.9e-6 with
ATen and inductor capped to AVX2 there (``ATEN_CPU_CAPABILITY=avx2``, 3.4e-6 absolute: a fixed 1e-6
would have failed); the element that failed on the AVX512-without-bf16 Xeon is 1.3e-6 of its
tensor's scale (0.88). With ``rtol=1e-4`` that leaves a margin of 25x or more on every class.
"""

from __future__ import annotations

import torch


def assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float, msg: str | None = None) -> None:
    """``assert_close`` with ``atol = rtol * max|expected|`` (see the module's docstring for why)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    # A tensor that is all zeros (a LoRA B before its first step) is compared exactly.
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=msg)
