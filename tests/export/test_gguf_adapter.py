"""The adapter alone as a GGUF LoRA: what each matrix's (alpha / rank) * B @ A adds is what merging adds.

llama.cpp's own reading of the file (base + adapter == merged export) is in test_gguf_llamacpp.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from lorakit.export.gguf_adapter import export_adapter_gguf
from lorakit.export.gguf_arch import GgufExportError, TensorNames, check_config, convert_tensor
from lorakit.export.merge import merged_model
from tests.export.conftest import make_run_dir


def _deltas(path):
    reader = gguf.GGUFReader(path)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    out = {}
    for name, a in tensors.items():
        if name.endswith(".lora_a"):
            base = name.removesuffix(".lora_a")
            b = tensors[base + ".lora_b"]
            assert a.shape[0] == b.shape[1]  # (rank, in) and (out, rank): what llama.cpp checks
            out[base] = (alpha / a.shape[0]) * b @ a
    return reader, out


@pytest.mark.parametrize("options", [(), ("lora.use_rslora=true", "lora.alpha=8")], ids=["plain", "rslora"])
def test_adapter_deltas_equal_what_merging_adds(tiny_llama, tmp_path, options):
    run = make_run_dir(tmp_path / "run", str(tiny_llama), "lora.rank=4", *options)
    out, modelfile, base_path = export_adapter_gguf(run, tmp_path / "adapter.gguf")
    reader, deltas = _deltas(out)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert not base_path.exists()  # only with --with-base
    assert f"\nFROM ./{base_path.name}\nADAPTER ./adapter.gguf\n" in modelfile.read_text()

    merged, _, _ = merged_model(run)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    spec = check_config(base.config)
    names = TensorNames(spec, base.config.num_hidden_layers)
    base_weights, merged_weights = base.state_dict(), merged.state_dict()
    checked = 0
    for hf_name, weight in base_weights.items():
        name = names.get(hf_name)
        if name not in deltas:
            continue
        want = (convert_tensor(base.config, spec, name, merged_weights[hf_name])
                - convert_tensor(base.config, spec, name, weight)).numpy()
        assert np.abs(deltas[name] - want).max() <= 2e-3 * np.abs(want).max() + 1e-6, name
        assert np.abs(want).max() > 1e-3
        checked += 1
    assert checked == len(deltas) == 7 * base.config.num_hidden_layers  # all-linear: q k v o gate up down


@pytest.mark.parametrize("option,reason", [
    ("lora.use_dora=true", "DoRA"),
    ("lora.modules_to_save=[embeddings]", "whole trained modules"),
])
def test_adapters_a_gguf_lora_cannot_hold_are_refused_before_writing(tiny_llama, tmp_path, option, reason):
    run = make_run_dir(tmp_path / "run", str(tiny_llama), "lora.rank=4", option)
    with pytest.raises(GgufExportError, match=f"{reason}.*without --adapter-only"):
        export_adapter_gguf(run, tmp_path / "adapter.gguf", with_base=True)
    assert not any(tmp_path.glob("*.gguf"))


@pytest.mark.slow
def test_adapter_only_command(tiny_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli" / "style.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "lorakit", "export", "gguf", str(tiny_run), "--out", str(out), "--adapter-only",
         "--with-base"], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    base = next(p for p in out.parent.glob("*.f16.gguf"))
    assert gguf.GGUFReader(base).fields["general.type"].contents() == "model"
    assert f"\nFROM ./{base.name}\nADAPTER ./style.gguf\n" in (out.parent / "style.Modelfile").read_text()
    # the command says where each runtime goes: llama.cpp's --lora, and the merged export for Ollama
    assert f"llama-cli -m {base} --lora {out}" in " ".join(result.stderr.split())
    assert "for Ollama export without --adapter-only" in " ".join(result.stderr.split())
    wrong = subprocess.run([sys.executable, "-m", "lorakit", "export", "gguf", str(tiny_run), "--out", str(out),
                            "--with-base"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "--with-base goes with --adapter-only" in wrong.stderr
    assert "Traceback" not in wrong.stderr
