"""Tiny stand-ins for the hub repos the seed recipes name, built on disk for ``HubStub``.

Each model repo has the real id, the real architecture (2 layers, hidden 32, random weights)
and a tokenizer of the real kind: byte-level BPE for Falcon, BLOOM, Llama 3 and Qwen3, and a
SentencePiece-style one (Metaspace, byte fallback, ``<s>``/``</s>``) for TinyLlama and Phi-3.
Dataset repos hold a few rows in the real columns, as parquet the way the hub stores them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedTokenizerFast

from tests.conftest import CORPUS, FAMILY_FORMATS, arch_config, make_tokenizer

# TinyLlama-1.1B-Chat's zephyr format, written for these tests: every turn closed by </s>.
ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# bitsandbytes' CPU 4-bit kernels need input widths of at least one 64-wide block: the models
# that run quantized are built a little wider.
WIDE = {"hidden_size": 64, "intermediate_size": 128, "head_dim": 16}

# repo id: (architecture, tokenizer: a conftest family or ("sentencepiece", bos, eos, extra, jinja), config changes)
MODELS: dict[str, tuple[str, object, dict]] = {
    "tiiuae/falcon-3b": ("falcon", "falcon", {}),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": ("llama", ("sentencepiece", "<s>", "</s>", [], ZEPHYR), {}),
    "Langboat/bloom-1b4-zh": ("bloom", "bloom", {}),
    "unsloth/Llama-3.2-1B-Instruct": ("llama", "llama-3", {}),
    "Qwen/Qwen3-4B-Instruct-2507": ("qwen3", "qwen3", {}),
    "microsoft/Phi-3-mini-4k-instruct": ("phi3", ("sentencepiece", *FAMILY_FORMATS["phi-3-mini"]), WIDE),
}
# Saved already quantized: repo id -> (architecture, tokenizer family)
QUANTIZED = {"unsloth/Llama-3.2-1B-Instruct-bnb-4bit": ("llama", "llama-3")}

DOLLY_ROWS = [
    {"instruction": "Who wrote Treasure Island?", "context": "",
     "response": "Arr, 'twas Robert Louis Stevenson, matey!", "category": "open_qa"},
    {"instruction": "Summarize the text.", "context": "The ship sailed at dawn and came back at dusk.",
     "response": "The ship be out from dawn till dusk, arr.", "category": "summarization"},
    {"instruction": "What is two plus two?", "context": "", "response": "Four, ye landlubber!",
     "category": "open_qa"},
]
ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat well, sleep enough, move every day."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four."},
]
ALPACA_ZH_ROWS = [
    {"instruction": "保持健康的三个提示。", "input": "", "output": "吃好，睡好，每天运动。"},
    {"instruction": "二加二等于几？", "input": "", "output": "等于四。"},
    {"instruction": "翻译成英文。", "input": "早上好", "output": "Good morning"},
]


def sentencepiece_tokenizer(bos: str | None, eos: str, extra: list[str], jinja: str) -> PreTrainedTokenizerFast:
    """A Llama/SentencePiece-style tokenizer: Metaspace words, 256 byte-fallback pieces, BOS added."""
    meta = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = meta
    trainer_tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                                    show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    # As in Llama's tokenizer.model: the specials, then <0x00>..<0xFF>, then the learnt pieces.
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = meta
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    tok.add_special_tokens(specials + [eos] + extra)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>")
    fast.chat_template = jinja
    return fast


def _tokenizer(spec: object) -> PreTrainedTokenizerFast:
    if isinstance(spec, str):
        return make_tokenizer(spec)
    _, bos, eos, extra, jinja = spec
    return sentencepiece_tokenizer(bos, eos, extra, jinja)


def build_model(folder: Path, arch: str, tokenizer_spec: object, changes: dict | None = None, seed: int = 0) -> Path:
    tokenizer = _tokenizer(tokenizer_spec)
    config = arch_config(arch, tokenizer)
    if changes:
        config = type(config)(**{**config.to_dict(), **changes})
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not isinstance(tokenizer_spec, str):  # saved as the class the real repos name
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "LlamaTokenizer"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    if arch == "phi3":
        # Phi-3-mini's config.json also points at the repo's own copy of the code; transformers has
        # phi3 built in, so loading must not need trust_remote_code.
        path = folder / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["auto_map"] = {"AutoConfig": "configuration_phi3.Phi3Config",
                              "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        (folder / "modeling_phi3.py").write_text("raise RuntimeError('the repo code must not run')\n")
        (folder / "configuration_phi3.py").write_text("raise RuntimeError('the repo code must not run')\n")
    return folder


def build_quantized(folder: Path, full: Path) -> Path:
    """A checkpoint saved already in 4-bit NF4 by bitsandbytes: config.json carries quantization_config."""
    quantized = AutoModelForCausalLM.from_pretrained(
        full, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), device_map="cpu"
    )
    quantized.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (full / name).is_file():
            (folder / name).write_bytes((full / name).read_bytes())
    return folder


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def build_seed_hub(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """All seed repos under ``root``: (models, datasets), each repo id -> folder."""
    built: dict[str, Path] = {}
    for i, (repo_id, (arch, tok, changes)) in enumerate(MODELS.items()):
        built[repo_id] = build_model(root / "models" / repo_id, arch, tok, changes, seed=i)
    for repo_id, (arch, tok) in QUANTIZED.items():
        full = build_model(root / "full" / repo_id, arch, tok, WIDE)
        built[repo_id] = build_quantized(root / "models" / repo_id, full)
    datasets = {
        "Peyton3995/dolly-15k-mistral-pirate": DOLLY_ROWS,
        "tatsu-lab/alpaca": [{**r, "text": f"{r['instruction']}\n{r['output']}"} for r in ALPACA_ROWS],
    }
    data: dict[str, Path] = {}
    for repo_id, rows in datasets.items():
        folder = root / "datasets" / repo_id
        write_parquet(folder / "data" / "train-00000-of-00001.parquet", rows * 4)
        (folder / "README.md").write_text(f"# {repo_id}\n\nA tiny stand-in for tests.\n", encoding="utf-8")
        data[repo_id] = folder
    return built, data


def write_alpaca_zh_disk(folder: Path) -> Path:
    """A save_to_disk folder like the ``alpaca_data_zh`` the BLOOM notebook loads."""
    from datasets import Dataset

    Dataset.from_list(ALPACA_ZH_ROWS * 4).save_to_disk(str(folder))
    return folder
