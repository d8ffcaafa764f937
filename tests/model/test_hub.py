"""Models (and datasets) named by hub id, fetched from a stand-in hub by the real huggingface_hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.config import DataSource, ModelConfig
from lorakit.data.records import DataError
from lorakit.data.sources import read_source
from lorakit.model.gguf_cache import ModelNotFoundError
from lorakit.model.hub import RemoteCodeError, wanted_files
from lorakit.model.loader import load_model, load_tokenizer, resolve_model_folder
from tests.conftest import make_tiny_model_dir
from tests.seedrepos import DOLLY_ROWS

LLAMA3 = "unsloth/Llama-3.2-1B-Instruct"
TINYLLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
DOLLY = "Peyton3995/dolly-15k-mistral-pirate"


def resolve(name: str, **kwargs) -> Path:
    return Path(resolve_model_folder(ModelConfig(name=name, **kwargs)))


def same_weights(folder: Path, other: Path) -> bool:
    ours, theirs = load_file(folder / "model.safetensors"), load_file(other / "model.safetensors")
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_hub_id_downloads_the_needed_files_once_then_loads_offline(hub, seed_repos):
    folder = resolve(TINYLLAMA)
    assert folder.is_relative_to(Path(os.environ["HF_HOME"]) / "hub")
    assert folder.name == hub.commit(TINYLLAMA)
    assert {p.name for p in folder.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert sorted(hub.fetched()) == sorted(p.name for p in folder.iterdir())  # each file once
    assert same_weights(folder, seed_repos[0][TINYLLAMA])
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello").input_ids)[0] == "<s>"  # SentencePiece-style, BOS
    assert load_model(str(folder), "float32").config.model_type == "llama"

    before = hub.requests
    assert resolve(TINYLLAMA) == folder
    assert hub.requests == before  # the cached snapshot needs no request at all


def test_cached_model_loads_with_the_hub_down_and_offline(hub, monkeypatch):
    folder = resolve(LLAMA3)
    hub.stop()
    assert resolve(LLAMA3) == folder
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve(LLAMA3) == folder


def test_offline_without_a_cached_copy_names_the_model_and_the_ways_out(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError) as info:
        resolve(LLAMA3)
    message = str(info.value)
    assert f"model '{LLAMA3}' is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message and f"`hf download {LLAMA3}`" in message
    assert str(Path(os.environ["HF_HOME"]) / "hub") in message
    assert hub.requests == 0


def test_download_false_uses_the_cache_only(hub):
    with pytest.raises(ModelNotFoundError, match=r"model.download is false.*Set model.download: true"):
        resolve(LLAMA3, download=False)
    assert hub.requests == 0
    folder = resolve(LLAMA3)
    assert resolve(LLAMA3, download=False) == folder


def test_hub_unreachable_without_a_cached_copy(hub):
    hub.stop()
    with pytest.raises(ModelNotFoundError, match=r"could not be reached.*hf download unsloth/Llama-3.2-1B-Instruct"):
        resolve(LLAMA3)


def test_unknown_repo_and_unknown_revision(hub):
    with pytest.raises(ModelNotFoundError, match=r"model 'nobody/nothing' was not found on the hub .*HF_TOKEN"):
        resolve("nobody/nothing")
    with pytest.raises(ModelNotFoundError, match=r"revision 'v9' does not exist on the hub .*model.revision"):
        resolve(LLAMA3, revision="v9")


def test_revision_picks_a_branch_or_a_commit(hub, tmp_path):
    other = make_tiny_model_dir(tmp_path / "v2", "llama-3", seed=7)
    commit = hub.add_model(LLAMA3, other, revision="v2")
    main = resolve(LLAMA3)
    v2 = resolve(LLAMA3, revision="v2")
    assert v2.name == commit != main.name
    assert same_weights(v2, other) and not same_weights(main, other)
    before = hub.requests
    assert resolve(LLAMA3, revision=commit) == v2  # a commit already cached: no request
    assert resolve(LLAMA3, revision="v2") == v2 and hub.requests == before


def test_token_from_the_environment_reaches_the_hub(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_lorakit_test")
    resolve(LLAMA3)
    repo_requests = [a for (_, path), a in zip(hub.log, hub.authorization) if LLAMA3 in path]
    assert repo_requests and all(a == "Bearer hf_lorakit_test" for a in repo_requests)


def test_gated_repo_needs_the_token(hub, monkeypatch):
    hub.gate(LLAMA3, "hf_granted")
    with pytest.raises(ModelNotFoundError, match=r"is gated: accept its conditions at http://127.0.0.1:\d+/"
                                                 r"unsloth/Llama-3.2-1B-Instruct and log in"):
        resolve(LLAMA3)
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    assert (resolve(LLAMA3) / "model.safetensors").is_file()


def test_saved_login_reaches_the_hub(hub, monkeypatch):
    """`hf auth login` writes HF_HOME/token; huggingface_hub sends it without lorakit's help."""
    from huggingface_hub import constants

    hub.gate(DOLLY, "hf_saved", kind="datasets")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text("hf_saved")
    assert len(read_source(DataSource(path=DOLLY), hub_download=True).records) == len(DOLLY_ROWS) * 4


def test_base_model_by_hub_id_opens_for_chat_generate_eval_and_serve(hub, tmp_path):
    from lorakit.infer.session import open_session

    session = open_session(LLAMA3, tmp_path / "lorakit-cache")
    assert session.model.config.model_type == "llama" and not session.has_adapter
    assert session.tokenizer.convert_tokens_to_ids("<|eot_id|>") in session.template.end_token_ids


@pytest.mark.slow
def test_generate_on_a_hub_id_shows_the_download_and_answers(hub):
    """The CLI hides transformers' progress bars unless verbose; the download's own still shows."""
    result = subprocess.run(
        [sys.executable, "-m", "lorakit", "generate", LLAMA3, "--prompt", "Hi", "--max-new-tokens", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Fetching 6 files" in result.stderr and "1 answers, " in result.stderr


def test_export_gguf_of_a_hub_id(hub, tmp_path):
    from lorakit.export.gguf import export_gguf

    gguf_path, modelfile = export_gguf(Path(LLAMA3), tmp_path / "llama.gguf", "f16")
    assert gguf_path.stat().st_size > 0 and modelfile.is_file()


def _with_bin(folder: Path) -> Path:
    """A copy of the weights as pytorch_model.bin beside model.safetensors, as older repos have."""
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_safetensors_are_fetched_and_bin_is_not(hub, tmp_path):
    repo = _with_bin(make_tiny_model_dir(tmp_path / "both", "llama-3"))
    (repo / "README.md").write_text("card\n")
    (repo / "onnx").mkdir()
    (repo / "onnx" / "model.onnx").write_bytes(b"\0" * 64)
    hub.add_model("someone/both-formats", repo)
    folder = resolve("someone/both-formats")
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()
    assert not any(f.endswith((".bin", ".onnx", "README.md")) for f in hub.fetched())


def test_bin_only_repo_is_fetched_and_loads(hub, tmp_path):
    repo = _with_bin(make_tiny_model_dir(tmp_path / "old", "llama-3"))
    (repo / "model.safetensors").unlink()
    hub.add_model("someone/bin-only", repo)
    folder = resolve("someone/bin-only")
    assert (folder / "pytorch_model.bin").is_file()
    assert load_model(str(folder), "float32").config.model_type == "llama"


def test_wanted_files_choose_one_weight_format():
    files = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "tokenizer.model",
             "additional_chat_templates/tool_use.jinja", "onnx/model.onnx", "modeling_x.py", "adapter_model.bin"]
    assert wanted_files(files) == [
        "additional_chat_templates/tool_use.jinja", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model",
    ]
    assert "modeling_x.py" in wanted_files(files, remote_code=True)


CUSTOM_CONFIG = (
    "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'lorakit_custom'\n"
)
CUSTOM_MODEL = (
    "from transformers import LlamaForCausalLM\n\nfrom .configuration_custom import CustomConfig\n\n\n"
    "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
)


def _custom_repo(folder: Path) -> Path:
    """A model whose architecture transformers does not know: its repo ships the code."""
    make_tiny_model_dir(folder, "llama-3")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="lorakit_custom", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODEL)
    return folder


def test_remote_code_is_refused_before_the_weights_are_fetched(hub, tmp_path):
    hub.add_model("someone/custom", _custom_repo(tmp_path / "custom"))
    with pytest.raises(RemoteCodeError) as info:
        resolve("someone/custom")
    message = str(info.value)
    assert "model 'someone/custom' needs code of its own" in message and "'lorakit_custom'" in message
    assert "set model.trust_remote_code: true" in message and "modeling_custom.CustomForCausalLM" in message
    assert hub.fetched() == ["config.json"]


@pytest.mark.slow
def test_remote_code_runs_when_allowed(hub, tmp_path):
    """In a subprocess: transformers imports the repo's code into HF_HOME/modules, read at its import."""
    hub.add_model("someone/custom", _custom_repo(tmp_path / "custom"))
    script = (
        "from lorakit.config import ModelConfig\n"
        "from lorakit.model.loader import load_model, load_tokenizer, resolve_model_folder\n"
        "cfg = ModelConfig(name='someone/custom', trust_remote_code=True)\n"
        "folder = resolve_model_folder(cfg)\n"
        "model = load_model(folder, 'float32', trust_remote_code=True)\n"
        "load_tokenizer(folder, trust_remote_code=True)\n"
        "print(type(model).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("CustomForCausalLM")
    assert {"configuration_custom.py", "modeling_custom.py"} <= set(hub.fetched())


def test_unknown_architecture_without_code_says_what_to_do(hub, tmp_path):
    folder = make_tiny_model_dir(tmp_path / "future", "llama-3")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama9"}))
    hub.add_model("someone/future", folder)
    with pytest.raises(RemoteCodeError, match=r"does not know model_type 'llama9'.*pip install -U transformers"):
        resolve("someone/future", trust_remote_code=True)


def test_known_architecture_with_an_auto_map_loads_without_its_code(hub):
    """Phi-3-mini's config.json names its own code; transformers' phi3 loads it, the repo's .py never runs."""
    folder = resolve("microsoft/Phi-3-mini-4k-instruct")
    assert not any(f.endswith(".py") for f in hub.fetched())
    assert load_model(str(folder), "float32").config.model_type == "phi3"


def test_local_folder_needing_remote_code_is_refused(tmp_path):
    folder = _custom_repo(tmp_path / "custom")
    with pytest.raises(RemoteCodeError, match="set model.trust_remote_code: true"):
        resolve(str(folder))


def test_hub_dataset_downloads_once_and_then_reads_from_the_cache(hub):
    source = DataSource(path=DOLLY)
    records = read_source(source, hub_download=True)
    assert [r.fields for r in records.records] == DOLLY_ROWS * 4
    assert records.files[0].endswith("data/train-00000-of-00001.parquet")
    assert sorted(hub.fetched()) == ["README.md", "data/train-00000-of-00001.parquet"]
    before = hub.requests
    assert [r.fields for r in read_source(source, hub_download=True).records] == DOLLY_ROWS * 4
    assert hub.requests == before


def test_hub_dataset_offline_or_not_allowed(hub, monkeypatch):
    with pytest.raises(DataError, match=r"data.hub_download is false.*hf download --repo-type dataset"):
        read_source(DataSource(path=DOLLY), hub_download=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=rf"dataset '{DOLLY}' is not in the local .*HF_HUB_OFFLINE is set"):
        read_source(DataSource(path=DOLLY), hub_download=True)
    assert hub.requests == 0


def test_unknown_hub_dataset(hub):
    with pytest.raises(DataError, match=r"dataset 'nobody/nothing' was not found on the hub"):
        read_source(DataSource(path="nobody/nothing"), hub_download=True)


@pytest.mark.slow
def test_tokenizer_first_then_weights_and_bad_data_fails_before_the_weights(hub, tmp_path):
    folder = Path(resolve_model_folder(ModelConfig(name=LLAMA3), weights=False))
    assert "model.safetensors" not in hub.fetched() and "tokenizer.json" in hub.fetched()
    assert load_tokenizer(str(folder)).eos_token  # the tokenizer alone is usable
    before = hub.requests
    assert Path(resolve_model_folder(ModelConfig(name=LLAMA3), weights=False)) == folder
    assert hub.requests == before  # cached, as far as tokenizer and config go

    # Training reads the tokenizer and checks the data before it fetches the weights.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Hi", "output": "Hello"}\n{"instruction": \n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "lorakit", "train", "--set", f"model.name={LLAMA3}", "--set", f"data.train={bad}",
         "--set", f"output_dir={tmp_path / 'run'}", "--set", "train.max_steps=1", "--set", "data.cache_dir=null"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "bad.jsonl" in result.stderr and "line 2" in result.stderr
    assert "model.safetensors" not in hub.fetched()

    assert Path(resolve_model_folder(ModelConfig(name=LLAMA3))) == folder  # the same snapshot, now whole
    assert hub.fetched().count("model.safetensors") == 1 and (folder / "model.safetensors").is_file()
