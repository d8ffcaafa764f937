"""precision and model.dtype 'auto' on a CPU follow a measured probe, cached per machine.

The probe itself is injected here (its timings are the machine's, never asserted); what is
tested is what its answer decides, that it is measured once per machine key, and the pin.
"""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.model.dtype import resolve_dtype
from lorakit.hardware import cpu as hardware_cpu, probes, speed as hardware_speed
from lorakit.hardware.probes import CpuSpeed
from lorakit.hardware.speed import PRECISION_ENV, cpu_speed
from lorakit.train.plan import pick_precision


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    return monkeypatch


def test_bf16_wins_only_by_a_margin():
    assert CpuSpeed(fp32_s=0.030, bf16_s=0.010, threads=2).bf16_faster
    assert not CpuSpeed(fp32_s=0.030, bf16_s=0.026, threads=2).bf16_faster  # faster, but not enough to pay
    assert not CpuSpeed(fp32_s=0.010, bf16_s=0.030, threads=2).bf16_faster


@pytest.mark.parametrize(("speed", "precision", "dtype"), [
    (CpuSpeed(0.030, 0.010, 2), "bf16", torch.bfloat16),
    (CpuSpeed(0.010, 0.030, 2), "fp32", torch.float32),
])
def test_auto_follows_the_probe(cpu, speed, precision, dtype):
    cpu.setattr(hardware_speed, "cpu_has_bf16", lambda: True)
    cpu.setattr(hardware_speed, "cpu_speed", lambda: speed)
    assert pick_precision("auto") == precision
    assert resolve_dtype("auto") is dtype
    assert pick_precision("fp32") == "fp32" and resolve_dtype("float32") is torch.float32  # asked for: kept


def test_no_native_bf16_is_fp32_without_probing(cpu):
    cpu.setattr(hardware_speed, "cpu_has_bf16", lambda: False)
    cpu.setattr(hardware_speed, "cpu_speed", lambda: pytest.fail("probed a CPU without bf16"))
    assert pick_precision("auto") == "fp32" and resolve_dtype("auto") is torch.float32


def test_the_pin_skips_the_probe(cpu):
    cpu.setattr(hardware_speed, "cpu_speed", lambda: pytest.fail("probed despite the pin"))
    cpu.setattr(hardware_speed, "cpu_has_bf16", lambda: True)
    cpu.setenv(PRECISION_ENV, "bf16")
    assert pick_precision("auto") == "bf16"
    cpu.setenv(PRECISION_ENV, "fp32")
    assert resolve_dtype("auto") is torch.float32
    cpu.setenv(PRECISION_ENV, "fast")
    with pytest.raises(ValueError, match="LORAKIT_CPU_PRECISION='fast': use fp32 or bf16"):
        pick_precision("auto")


def test_measured_once_per_machine_and_torch(tmp_path, monkeypatch):
    cache = tmp_path / "cpu-probe.json"
    calls = []

    def probe():
        calls.append(1)
        return CpuSpeed(0.03, 0.01, 2)

    assert cpu_speed(probe, cache) == CpuSpeed(0.03, 0.01, 2)
    assert cpu_speed(probe, cache) == CpuSpeed(0.03, 0.01, 2)
    assert len(calls) == 1  # the second answer came from the cache
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch: its kernels may differ
    cpu_speed(probe, cache)
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2
    cache.write_text("not json")  # a damaged cache is measured again, not an error
    assert cpu_speed(probe, cache).bf16_faster and len(calls) == 3


@pytest.mark.skipif(not hardware_cpu.cpu_has_bf16(), reason="only a CPU with native bf16 is probed")
def test_the_probe_times_both_ways():
    threads = torch.get_num_threads()
    speed = probes.probe_cpu()
    assert speed.fp32_s > 0 and speed.bf16_s > 0 and speed.threads == 1
    assert torch.get_num_threads() == threads  # the probe's one thread is given back


def test_eager_attention_up_to_the_first_length_where_sdpa_wins():
    lengths = (64, 128, 256, 512)
    assert probes.AttentionSpeed(lengths, (1, 2, 5, 9), (2, 3, 4, 5)).eager_up_to == 128
    assert probes.AttentionSpeed(lengths, (1, 2, 3, 4), (2, 3, 4, 5)).eager_up_to == 512
    assert probes.AttentionSpeed(lengths, (3, 2, 1, 1), (2, 3, 4, 5)).eager_up_to == 0  # sdpa from the start
    # A win past a loss does not count: the crossover is where eager first stops winning.
    assert probes.AttentionSpeed(lengths, (1, 4, 1, 9), (2, 3, 4, 5)).eager_up_to == 64


def test_attention_probe_cached_per_dtype_and_pinned_by_env(tmp_path, monkeypatch):
    cache, calls = tmp_path / "cpu-probe.json", []
    monkeypatch.delenv(hardware_speed.EAGER_ENV, raising=False)

    def probe(dtype):
        calls.append(dtype)
        return probes.AttentionSpeed((64, 128), (1, 9), (2, 3)) if dtype == torch.bfloat16 else \
            probes.AttentionSpeed((64, 128), (3, 9), (2, 3))

    assert hardware_speed.cpu_eager_attention_tokens(torch.bfloat16, probe, cache) == 64
    assert hardware_speed.cpu_eager_attention_tokens(torch.bfloat16, probe, cache) == 64
    assert hardware_speed.cpu_eager_attention_tokens(torch.float32, probe, cache) == 0
    assert calls == [torch.bfloat16, torch.float32]  # each dtype measured once, then read back
    cpu_speed(lambda: CpuSpeed(0.03, 0.01, 1), cache)  # the precision probe shares the file
    assert len(json.loads(cache.read_text())) == 3
    monkeypatch.setenv(hardware_speed.EAGER_ENV, "300")
    assert hardware_speed.cpu_eager_attention_tokens(torch.bfloat16, lambda d: pytest.fail("probed"), cache) == 300
    monkeypatch.setenv(hardware_speed.EAGER_ENV, "many")
    with pytest.raises(ValueError, match="LORAKIT_CPU_EAGER_TOKENS='many'"):
        hardware_speed.cpu_eager_attention_tokens(torch.bfloat16, probe, cache)


def test_the_attention_probe_times_both_kernels():
    threads = torch.get_num_threads()
    speed = probes.probe_attention(torch.float32, rounds=1)
    assert len(speed.eager_s) == len(speed.sdpa_s) == len(speed.lengths) and min(speed.eager_s + speed.sdpa_s) > 0
    assert torch.get_num_threads() == threads


def test_a_capped_instruction_set_is_another_machine(tmp_path, monkeypatch):
    cache, calls = tmp_path / "cpu-probe.json", []
    probe = lambda: calls.append(1) or CpuSpeed(0.03, 0.01, 1)  # noqa: E731
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu_speed(probe, cache)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the same CPU with oneDNN kept to AVX2
    cpu_speed(probe, cache)
    assert len(calls) == 2


def test_the_probe_cache_sits_in_the_configs_cache_root(monkeypatch, tmp_path):
    from lorakit.config_file import load_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # followed by none of them (hardware/speed.py says why)
    defaults = load_config(None, [])
    assert hardware_speed._cache_file().parent == defaults.model.cache_dir
    assert defaults.data.cache_dir.parent == defaults.model.cache_dir
