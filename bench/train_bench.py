"""lorakit against the recipes it replaces: same model, data, LoRA, learning rate and batch.

Each competitor trains in its own process (so peak RSS is its own), in alternating order,
in one invocation. Every trained adapter is then scored by the same code: answer-only loss
on held-out samples, so speed is never bought with quality.

    python bench/train_bench.py                  # 64 alpaca samples, all six competitors; a, e, h twice
    python bench/train_bench.py --quick          # 16 samples, 1 round: a check that everything runs (~4 min)
    python bench/train_bench.py --n 32 --only a,e,h
    python bench/train_bench.py --model random-1b    # on a GPU: a random 1.1B Llama in bf16, QLoRA too

Every worker runs with the same OMP_NUM_THREADS (the physical cores unless set), and both wall
and CPU seconds of training are recorded: on a shared machine the process's own CPU seconds
move less with the neighbours' load. Prints a markdown table and the issue-16 goals (met, or
missed by how much). Writes bench/results/train-<host or GPU>-<time>.json (CPU model, flags,
torch version and threads inside) and a bar chart PNG beside it.
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

from dtype_bench import CpuClock  # bench/ is on sys.path when this file runs as a script

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "alpaca_en.json"
COMPETITORS = {
    "a": "Trainer + peft, per-sample tokenization, dynamic padding (notebook recipe), fp32",
    "a-bf16": "the notebook recipe with bf16=True, use_cpu=True (bf16 autocast)",
    "b": "Trainer + peft, every sample padded to max_length",
    "c": "TRL SFTTrainer defaults (bf16 off: it refuses to start on CPU otherwise)",
    "d": "TRL tuned for this CPU: no activation checkpointing, best precision here",
    "d+pack": "TRL tuned, with padding-free packing",
    "e": "lorakit defaults",
    "e-fp32": "lorakit with model.dtype=float32, train.precision=fp32",
    "h": "hand-written peft loop: each batch packed into one row with position ids, bf16 autocast where native",
    "a-q4": "recipe (a) on a 4-bit base: bitsandbytes nf4 + prepare_model_for_kbit_training (QLoRA)",
    "e-q4": "lorakit with model.quantization.bits=4 (QLoRA)",
}
CPU_DEFAULT = "a,a-bf16,d,e,e-fp32,h"
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
    from lorakit.train.plan import pick_precision

    return {"bf16": pick_precision("auto") == "bf16"}


def _device_flags(name: str = "") -> dict:
    """The notebook recipes' usual flags: bf16 on a GPU; on a CPU, use_cpu and fp32 (or bf16 for a-bf16)."""
    return {"bf16": True} if on_gpu() else {"use_cpu": True, "bf16": name.endswith("-bf16")}


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
                             seed=SEED, disable_tqdm=True, **_device_flags(name))
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    started, cpu = time.monotonic(), time.process_time()
    out = trainer.train()
    return {"wall_s": time.monotonic() - started, "cpu_s": time.process_time() - cpu, "train_loss": out.training_loss,
            "model": model, "tok": tok}


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
    started, cpu = time.monotonic(), time.process_time()
    out = trainer.train()
    return {"wall_s": time.monotonic() - started, "cpu_s": time.process_time() - cpu, "train_loss": out.training_loss,
            "model": model, "tok": tok}


def work_hand_loop(name: str, rows: list[dict], tmp: Path, cache: Path) -> dict:
    """(h): the loop a practitioner writes by hand, with the known CPU tricks: packing, autocast."""
    import random

    import torch
    from lorakit.data.encode import encode_conversation
    from lorakit.templates import resolve_template
    from lorakit.hardware.cpu import cpu_has_bf16
    from transformers import get_linear_schedule_with_warmup

    _, model, tok = _model_and_tokenizer(cache)
    model = _lora(model)
    template = resolve_template(tok, "auto")
    encoded = [encode_conversation(tok, template, messages(r), MAX_LEN, truncation="cut") for r in rows]
    random.Random(SEED).shuffle(encoded)
    batches = [encoded[i : i + BATCH] for i in range(0, len(encoded), BATCH)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, len(batches))
    bf16 = cpu_has_bf16() or on_gpu()
    model.train()
    losses = []
    started, cpu = time.monotonic(), time.process_time()
    for batch in batches:
        ids = torch.tensor([[t for e in batch for t in e.input_ids]])
        # Each sample's first label would be predicted from the previous sample: ignored.
        labels = torch.tensor([[-100 if i == 0 else x for e in batch for i, x in enumerate(e.labels)]])
        positions = torch.tensor([[i for e in batch for i in range(len(e.input_ids))]])
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids.to(model.device), labels=labels.to(model.device),
                         position_ids=positions.to(model.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"wall_s": time.monotonic() - started, "cpu_s": time.process_time() - cpu,
            "train_loss": sum(losses) / len(losses), "model": model, "tok": tok}


def work_lorakit(name: str, rows: list[dict], tmp: Path, cache: Path) -> dict:
    from lorakit.config_file import load_config
    from lorakit.train import recipe

    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [f"data.train={data}", f"output_dir={tmp / 'run'}", f"model.cache_dir={cache}",
                             f"train.batch_size={BATCH}", f"train.learning_rate={LR}", f"lora.rank={RANK}",
                             f"lora.alpha={ALPHA}", "lora.dropout=0", f"data.max_length={MAX_LEN}",
                             "train.progress_bar=false", "train.save_steps=null", f"seed={SEED}", *EXTRA,
                             *([f"model.name={MODEL_DIR[0]}"] if MODEL_DIR else []),
                             *(["model.dtype=auto"] if on_gpu() else []),
                             *(["model.dtype=float32", "train.precision=fp32"] if name == "e-fp32" else []),
                             *(["model.quantization.bits=4"] if name.endswith("-q4") else [])])
    clock = CpuClock()
    summary = recipe.run(cfg, hooks=[clock])
    rss, cuda = _peak_rss_gb(), _peak_cuda_gb()  # before the held-out model is loaded for scoring
    from lorakit.infer.session import open_session

    session = open_session(str(tmp / "run"), cache)
    return {"wall_s": summary["train_seconds"], "cpu_s": clock.seconds, "train_loss": summary["train_loss"],
            "precision": summary["precision"], "weights_dtype": summary["weights_dtype"], "model": session.model,
            "tok": session.tokenizer, "peak_rss_gb": rss, "peak_cuda_gb": cuda}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_cuda_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def held_out_loss(model, tok, rows: list[dict]) -> float:
    """The same answer-only loss, same template and masking, for every competitor."""
    from lorakit.data.samples import Sample
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


def worker(name: str, n: int, held_out: int, out: Path, cache: Path) -> None:
    import tempfile

    import torch

    torch.manual_seed(SEED)
    train, held = samples(n, 0), samples(held_out, 10_000)
    fn = {"a": work_recipe, "a-bf16": work_recipe, "b": work_recipe, "a-q4": work_recipe, "e": work_lorakit,
          "e-fp32": work_lorakit, "e-q4": work_lorakit, "h": work_hand_loop}.get(name, work_trl)
    with tempfile.TemporaryDirectory() as tmp:
        result = fn(name, train, Path(tmp), cache)
        tokens, loss_tokens = token_counts(result["tok"], train)
        model = result["model"]
        head_w, embed_w = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        head = head_w.numel()
        body = sum(p.numel() for p in model.parameters()) - embed_w.numel() - (0 if head_w is embed_w else head)
        record = {
            "competitor": name, "description": COMPETITORS[name], "samples": n,
            "wall_s": round(result["wall_s"], 2), "cpu_s": round(result["cpu_s"], 2),
            "threads": torch.get_num_threads(), "train_loss": result["train_loss"],
            **{k: result[k] for k in ("precision", "weights_dtype") if k in result},
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
    """This machine's fp32 and bf16 matmul rates now, on issue 16's shape (1024x576 by 576x1536)."""
    import torch

    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        a @ b
        started, reps = time.perf_counter(), 0
        while time.perf_counter() - started < 1.0:
            a @ b
            reps += 1
        rates[str(dtype).split(".")[-1]] = 2 * 1024 * 576 * 1536 * reps / (time.perf_counter() - started)
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
    parser.add_argument("--n", type=int, help="training samples (default: 64 on a CPU, 512 on a GPU; --quick: 16)")
    parser.add_argument("--held-out", type=int, default=64, help="held-out samples scored per adapter (--quick: 16)")
    parser.add_argument("--quick", action="store_true", help="16 samples, 16 held out, one round: does it all run")
    parser.add_argument("--only", help=f"competitors (default: {CPU_DEFAULT} on a CPU, {GPU_DEFAULT} on a GPU)")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", *RANDOM_MODELS])
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/lorakit").expanduser())
    parser.add_argument("--rounds", type=int, default=2, help="runs per competitor; the best is reported")
    parser.add_argument("--once", default="a-bf16,b,c,d,d+pack,e-fp32",
                        help="competitors run in the first round only: those no goal is set against (the goals "
                        "compare e with a and h), so the whole run stays under 20 minutes")
    parser.add_argument("--lorakit-set", action="append", default=[], help="extra KEY=VALUE for (e)")
    parser.add_argument("--worker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    EXTRA.extend(args.lorakit_set)
    MODEL_DIR.extend([args.model_dir] if args.model_dir else [])
    if args.worker:
        worker(args.worker, args.n, args.held_out, args.out, args.cache)
        return
    if not SHARED.is_file():
        sys.exit(f"benchmark data not found: {SHARED} (the team's shared/data folder)")
    import os
    import tempfile

    import torch

    from lorakit.hardware.cpu import physical_cores
    from train_report import machine, print_report

    # Every worker and the matmul probe compute on the same number of threads.
    os.environ.setdefault("OMP_NUM_THREADS", str(physical_cores()))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.quick:
        args.n, args.held_out, args.rounds = args.n or 16, 16, 1
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
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
    began = time.monotonic()
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
                                   "--held-out", str(args.held_out), "--cache", str(args.cache), *extra, *model_args],
                                  capture_output=True, text=True)
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
        best["rounds_cpu_s"] = [r["cpu_s"] for r in good]
        for key in ("float32", "bfloat16") + (("bfloat16_cuda",) if gpu else ()):
            best[f"share_of_{key}_matmul"] = best["useful_flop_per_s"] / peak[key]
        results.append(best)
    where = machine(gpu)
    report = print_report(results, peak, where, args.n, args.rounds, time.monotonic() - began, gpu)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    host = (gpu or platform.node()).replace(" ", "-").replace("/", "-")
    base = results_dir / f"train-{host}-{args.model}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps({
        "machine": where, "matmul_peak_flop_per_s": peak, "rounds": args.rounds, "gpu": gpu, "model": args.model,
        "samples": args.n, "held_out": args.held_out, "lorakit_overrides": args.lorakit_set,
        "minutes": round((time.monotonic() - began) / 60, 1), "goals": report, "results": results,
    }, indent=2), encoding="utf-8")
    ok = [r for r in results if "error" not in r]
    if ok:
        chart(ok, base.with_suffix(".png"), f"LoRA fine-tuning of {args.model} on alpaca, {gpu or where['cpu']}")
    print(f"wrote {base}.json and .png")


if __name__ == "__main__":
    main()
