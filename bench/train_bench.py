"""lorakit against the recipes it replaces: same model, data, LoRA, learning rate and batch.

Each competitor trains in its own process (so peak RSS is its own), in alternating order,
in one invocation. Every trained adapter is then scored by the same code: answer-only loss
on held-out samples, so speed is never bought with quality.

    python bench/train_bench.py                  # 64 alpaca samples, all competitors
    python bench/train_bench.py --n 32 --only a,e
    python bench/train_bench.py --model random-1b    # on a GPU: a random 1.1B Llama in bf16, QLoRA too

Writes bench/results/train-<host or GPU>-<time>.json and a bar chart PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "alpaca_en.json"
COMPETITORS = {
    "a": "Trainer + peft, per-sample tokenization, dynamic padding (notebook recipe)",
    "b": "Trainer + peft, every sample padded to max_length",
    "c": "TRL SFTTrainer defaults (bf16 off: it refuses to start on CPU otherwise)",
    "d": "TRL tuned for this CPU: no activation checkpointing, best precision here",
    "d+pack": "TRL tuned, with padding-free packing",
    "e": "lorakit defaults",
    "a-q4": "recipe (a) on a 4-bit base: bitsandbytes nf4 + prepare_model_for_kbit_training (QLoRA)",
    "e-q4": "lorakit with model.quantization.bits=4 (QLoRA)",
}
CPU_DEFAULT = "a,b,c,d,d+pack,e"
GPU_DEFAULT = "a,c,d,d+pack,e,a-q4,e-q4"
# Random Llama shapes (no download): 1b is TinyLlama's shape (1.1B parameters with this vocabulary);
# tiny exercises the same path on a CPU in seconds.
RANDOM_MODELS = {
    "random-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                  "num_attention_heads": 32, "num_key_value_heads": 4},
    "random-tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2},
}
LR, BATCH, RANK, ALPHA, MAX_LEN, SEED = 2e-4, 4, 16, 32, 512, 0
EXTRA: list[str] = []  # --lorakit-set: overrides for (e), to measure one switch against the defaults
MODEL_DIR: list[Path] = []  # --model-dir: a random model built by the parent, instead of SmolLM2


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def samples(n: int, offset: int) -> list[dict]:
    rows = [r for r in json.loads(SHARED.read_text(encoding="utf-8")) if r["output"].strip()]
    return rows[offset : offset + n]


def messages(row: dict) -> list[dict]:
    user = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


# ---------------------------------------------------------------- workers (one per process)
def _model_and_tokenizer(cache: Path, four_bit: bool = False):
    from lorakit.config import ModelConfig
    from lorakit.model.loader import load_tokenizer, resolve_model_folder

    source = str(MODEL_DIR[0]) if MODEL_DIR else resolve_model_folder(ModelConfig(cache_dir=cache))
    if four_bit:  # as the QLoRA notebooks do it
        import torch
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, device_map="auto")
        return source, prepare_model_for_kbit_training(model), load_tokenizer(source)
    from lorakit.model.loader import load_model

    return source, load_model(source, "bfloat16" if on_gpu() else "float32"), load_tokenizer(source)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def _precision_flags() -> dict:
    from lorakit.hardware import pick_precision

    return {"bf16": pick_precision("auto") == "bf16"}


def _device_flags() -> dict:
    """The notebook recipes' usual flags: bf16 on a GPU; on a CPU, use_cpu and fp32."""
    return {"bf16": True} if on_gpu() else {"use_cpu": True}


def work_recipe(name: str, rows: list[dict], tmp: Path, cache: Path) -> dict:
    """(a) and (b): the recipe most notebooks copy."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    _, model, tok = _model_and_tokenizer(cache, four_bit=name.endswith("-q4"))
    model = _lora(model)

    def encode(row):
        conv = messages(row)
        prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
        full = prompt + conv[1]["content"] + tok.eos_token
        enc = tok(full, truncation=True, max_length=MAX_LEN, padding="max_length" if name == "b" else False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        cut = len(tok(prompt)["input_ids"])
        labels = [-100 if (i < cut or m == 0) else t for i, (t, m) in enumerate(zip(ids, mask))]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    data = Dataset.from_list(rows).map(encode, remove_columns=["instruction", "input", "output"])
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=BATCH, learning_rate=LR,
                             num_train_epochs=1, logging_steps=1, report_to="none", save_strategy="no",
                             seed=SEED, disable_tqdm=True, **_device_flags())
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    started = time.monotonic()
    out = trainer.train()
    return {"wall_s": time.monotonic() - started, "train_loss": out.training_loss, "model": model, "tok": tok}


def work_trl(name: str, rows: list[dict], tmp: Path, cache: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _, model, tok = _model_and_tokenizer(cache)
    model = _lora(model)
    data = Dataset.from_list([{"prompt": messages(r)[:1], "completion": messages(r)[1:]} for r in rows])
    extra: dict = {} if on_gpu() else {"bf16": False, "use_cpu": True}  # (c): TRL's defaults where it can run
    if name.startswith("d"):
        extra = {**_device_flags(), **_precision_flags(), "gradient_checkpointing": False, "packing": name == "d+pack"}
    args = SFTConfig(output_dir=str(tmp), per_device_train_batch_size=BATCH, learning_rate=LR, num_train_epochs=1,
                     logging_steps=1, report_to="none", save_strategy="no", seed=SEED,
                     max_length=MAX_LEN, disable_tqdm=True, **extra)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    started = time.monotonic()
    out = trainer.train()
    return {"wall_s": time.monotonic() - started, "train_loss": out.training_loss, "model": model, "tok": tok}


def work_lorakit(name: str, rows: list[dict], tmp: Path, cache: Path) -> dict:
    from lorakit.config import load_config
    from lorakit.train import recipe

    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [f"data.train={data}", f"output_dir={tmp / 'run'}", f"model.cache_dir={cache}",
                             f"train.batch_size={BATCH}", f"train.learning_rate={LR}", f"lora.rank={RANK}",
                             f"lora.alpha={ALPHA}", "lora.dropout=0", f"data.max_length={MAX_LEN}",
                             "train.progress_bar=false", "train.save_steps=null", f"seed={SEED}", *EXTRA,
                             *([f"model.name={MODEL_DIR[0]}"] if MODEL_DIR else []),
                             *(["model.dtype=auto"] if on_gpu() else []),
                             *(["model.quantization.bits=4"] if name.endswith("-q4") else [])])
    summary = recipe.run(cfg)
    rss, cuda = _peak_rss_gb(), _peak_cuda_gb()  # before the held-out model is loaded for scoring
    from lorakit.infer.session import open_session

    session = open_session(str(tmp / "run"), cache)
    return {"wall_s": summary["train_seconds"], "train_loss": summary["train_loss"], "model": session.model,
            "tok": session.tokenizer, "peak_rss_gb": rss, "peak_cuda_gb": cuda}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_cuda_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def held_out_loss(model, tok, rows: list[dict]) -> float:
    """The same answer-only loss, same template and masking, for every competitor."""
    from lorakit.data.pipeline import Sample
    from lorakit.templates import resolve_template
    from lorakit.eval.compare import answer_loss
    from lorakit.infer.session import session_of

    model.eval()
    session = session_of(model, tok, resolve_template(tok, "auto"), has_adapter=True)
    return answer_loss(session, [Sample(messages(r), f"held-out {i}") for i, r in enumerate(rows)], MAX_LEN, 8)


def token_counts(tok, rows: list[dict]) -> tuple[int, int]:
    from lorakit.data.encode import encode_conversation
    from lorakit.templates import resolve_template

    template = resolve_template(tok, "auto")
    total = loss = 0
    for r in rows:
        enc = encode_conversation(tok, template, messages(r), MAX_LEN, truncation="cut")
        total += len(enc.input_ids)
        loss += sum(1 for x in enc.labels if x != -100)
    return total, loss


def worker(name: str, n: int, out: Path, cache: Path) -> None:
    import tempfile

    import torch

    torch.manual_seed(SEED)
    train, held = samples(n, 0), samples(64, 10_000)
    fn = {"a": work_recipe, "b": work_recipe, "a-q4": work_recipe, "e": work_lorakit, "e-q4": work_lorakit}.get(
        name, work_trl)
    with tempfile.TemporaryDirectory() as tmp:
        result = fn(name, train, Path(tmp), cache)
        tokens, loss_tokens = token_counts(result["tok"], train)
        model = result["model"]
        head_w, embed_w = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        head = head_w.numel()
        body = sum(p.numel() for p in model.parameters()) - embed_w.numel() - (0 if head_w is embed_w else head)
        record = {
            "competitor": name, "description": COMPETITORS[name], "samples": n,
            "wall_s": round(result["wall_s"], 2), "train_loss": result["train_loss"],
            "tokens": tokens, "loss_tokens": loss_tokens,
            "tokens_per_s": tokens / result["wall_s"], "loss_tokens_per_s": loss_tokens / result["wall_s"],
            # The work every competitor must do, credited alike: forward (2N) and activation
            # gradients (2N) of the transformer body for every real token, and of the output head
            # for every loss-bearing token. Padding and logits nobody needs earn no credit.
            "useful_flop_per_s": 4 * (body * tokens + head * loss_tokens) / result["wall_s"],
            # Peak of training alone: scoring the held-out samples below must not count.
            "peak_rss_gb": result.get("peak_rss_gb") or _peak_rss_gb(),
            "peak_cuda_gb": result["peak_cuda_gb"] if "peak_cuda_gb" in result else _peak_cuda_gb(),
        }
        record["eval_loss"] = held_out_loss(result["model"], result["tok"], held)
    out.write_text(json.dumps(record), encoding="utf-8")


# ---------------------------------------------------------------- parent
def matmul_peak() -> dict:
    """This machine's fp32 (and bf16) matmul rate, measured now, for the FLOP/s shares."""
    import torch

    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        a @ b
        started, reps = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            a @ b
            reps += 1
        rates[str(dtype).split(".")[-1]] = 2 * 1024**3 * reps / (time.perf_counter() - started)
    if torch.cuda.is_available():
        a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
        a @ a
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(50):
            a @ a
        torch.cuda.synchronize()
        rates["bfloat16_cuda"] = 2 * 8192**3 * 50 / (time.perf_counter() - started)
    return rates


def build_random_model(preset: str, folder: Path, cache: Path) -> Path:
    """A randomly initialised Llama of the preset's shape with SmolLM2's tokenizer, saved as a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorakit.config import ModelConfig
    from lorakit.model.loader import load_tokenizer, resolve_model_folder

    tok = load_tokenizer(resolve_model_folder(ModelConfig(cache_dir=cache)))
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **RANDOM_MODELS[preset])
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    if torch.cuda.is_available():
        model = model.to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def chart(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["competitor"] for r in results]
    ax.bar(names, [r["loss_tokens_per_s"] for r in results], color="tab:blue")
    ax.set_ylabel("loss-bearing tokens / s")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, help="training samples (default: 64 on a CPU, 512 on a GPU)")
    parser.add_argument("--only", help=f"competitors (default: {CPU_DEFAULT} on a CPU, {GPU_DEFAULT} on a GPU)")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", *RANDOM_MODELS])
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/lorakit").expanduser())
    parser.add_argument("--rounds", type=int, default=2, help="runs per competitor; the best is reported")
    parser.add_argument("--once", default="b,c,d+pack",
                        help="competitors run in the first round only: the slow ones no goal compares against")
    parser.add_argument("--lorakit-set", action="append", default=[], help="extra KEY=VALUE for (e)")
    parser.add_argument("--worker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    EXTRA.extend(args.lorakit_set)
    MODEL_DIR.extend([args.model_dir] if args.model_dir else [])
    if args.worker:
        worker(args.worker, args.n, args.out, args.cache)
        return
    if not SHARED.is_file():
        sys.exit(f"benchmark data not found: {SHARED} (the team's shared/data folder)")
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    import tempfile

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    args.n = args.n or (512 if gpu else 64)
    names = (args.only or (GPU_DEFAULT if gpu else CPU_DEFAULT)).split(",")
    scratch = tempfile.TemporaryDirectory()
    model_args = []
    if args.model != "smollm2":
        print(f"building {args.model} ...", flush=True)
        model_args = ["--model-dir", str(build_random_model(args.model, Path(scratch.name) / args.model, args.cache))]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    peaks = []
    for round_no in range(args.rounds):
        # Alternate the order, and measure the machine in every round: a shared VM's speed
        # drifts by tens of percent over minutes, and each competitor keeps its best round.
        order = names if round_no % 2 == 0 else names[::-1]
        peaks.append(matmul_peak())
        for name in order:
            if round_no and name in args.once.split(","):
                continue
            out = results_dir / f".worker-{name}.json"
            print(f"[{name}] round {round_no + 1}: {COMPETITORS[name]} ...", flush=True)
            extra = [f"--lorakit-set={kv}" for kv in args.lorakit_set]
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--n", str(args.n), "--out", str(out),
                                   "--cache", str(args.cache), *extra, *model_args], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                runs[name].append({"competitor": name, "description": COMPETITORS[name], "error": proc.stderr[-500:]})
                continue
            runs[name].append(json.loads(out.read_text()))
            out.unlink()
    peak = {key: max(p[key] for p in peaks) for key in peaks[0]}
    results = []
    for name in names:
        good = [r for r in runs[name] if "error" not in r]
        if not good:
            results.append(runs[name][0])
            continue
        best = dict(min(good, key=lambda r: r["wall_s"]))
        best["rounds_wall_s"] = [r["wall_s"] for r in good]
        # The share of what this device's matmuls reach: fp32 on a CPU, bf16 on a GPU.
        best["flop_share_of_peak"] = best["useful_flop_per_s"] / peak["bfloat16_cuda" if gpu else "float32"]
        results.append(best)
    ok = [r for r in results if "error" not in r]
    ref = next((r for r in ok if r["competitor"] == "e"), None)
    mem = "peak_cuda_gb" if gpu else "peak_rss_gb"  # on a GPU the memory that limits is the GPU's
    header = (f"{'':7} {'best s':>7} {'loss tok/s':>10} {'tok/s':>7} {'CUDA GB' if gpu else 'RSS GB':>7} "
              f"{'train':>6} {'eval':>6} {'%peak':>6}")
    print(header + ("   e vs it: speed   memory" if ref else ""))
    for r in ok:
        line = (f"{r['competitor']:7} {r['wall_s']:7.1f} {r['loss_tokens_per_s']:10.1f} {r['tokens_per_s']:7.1f} "
                f"{r[mem]:7.2f} {r['train_loss']:6.3f} {r['eval_loss']:6.3f} "
                f"{100 * r['flop_share_of_peak']:5.1f}%")
        if ref:
            line += f"   {ref['loss_tokens_per_s'] / r['loss_tokens_per_s']:5.2f}x {ref[mem] / r[mem]:5.2f}x"
        print(line + "   rounds: " + ", ".join(f"{w:.0f}s" for w in r["rounds_wall_s"]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    where = (gpu or platform.node()).replace(" ", "-").replace("/", "-")
    base = results_dir / f"train-{where}-{args.model}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps({"matmul_peak_flop_per_s": peak, "rounds": args.rounds, "gpu": gpu, "model": args.model,
                                                     "samples": args.n, "cpu": platform.processor(),
                                                     "lorakit_overrides": args.lorakit_set,
                                                     "results": results}, indent=2), encoding="utf-8")
    if ok:
        chart(ok, base.with_suffix(".png"), f"LoRA fine-tuning of {args.model} on alpaca, {gpu or 'this CPU'}")
    print(f"wrote {base}.json and .png")


if __name__ == "__main__":
    main()
