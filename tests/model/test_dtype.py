"""dtype choice: resolved for the hardware, refused with the reason where it cannot run."""

from __future__ import annotations

import logging

import pytest
import torch

from lorakit.model import dtype as dtype_module
from lorakit.model.dtype import DtypeError, resolve_dtype


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


@pytest.fixture
def old_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    return monkeypatch


def test_cpu(cpu, caplog):
    cpu.setattr(dtype_module, "cpu_has_fp16", lambda: False)
    cpu.setattr(dtype_module, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto") is torch.float32
    assert resolve_dtype("float32") is torch.float32
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bfloat16") is torch.bfloat16
    assert "emulates" in caplog.text
    with pytest.raises(DtypeError, match="model.dtype=float16 needs a CUDA GPU or a CPU with native float16"):
        resolve_dtype("float16")
    cpu.setattr(dtype_module, "cpu_has_fp16", lambda: True)
    assert resolve_dtype("float16") is torch.float16


def test_gpu_without_bf16(old_gpu):
    assert resolve_dtype("auto") is torch.float16
    with pytest.raises(DtypeError, match=r"this GPU \(Tesla T4\) has no bfloat16"):
        resolve_dtype("bfloat16", "model.quantization.compute_dtype")
    assert resolve_dtype("float16") is torch.float16


@pytest.mark.slow
def test_train_reports_dtype_the_cpu_lacks(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    if dtype_module.cpu_has_fp16() or torch.cuda.is_available():
        pytest.skip("this machine computes float16 natively")
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Hi", "output": "Hello"}\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "lorakit", "train", "--set", f"model.name={tiny_model_dir}", "--set",
         f"data.train={data}", "--set", "model.dtype=float16", "--set", f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "model.dtype=float16 needs a CUDA GPU" in result.stderr
