"""A GRPO step of lorakit against TRL's ``GRPOTrainer``, side by side in one process, and where it goes.

    python bench/grpo_bench.py --steps 10              # writes bench/results/grpo-<host>-<time>.json
    python bench/grpo_bench.py --steps 6 --ablate      # lorakit alone, each saving off in turn

The same task for every contender: ``examples/grpo/config.yaml`` (the embedded SmolLM2-135M-Instruct,
LoRA r16 on all linear layers, the demo's extraction prompts, rewards json_fields + 0.5 x valid_json,
4 prompts x 4 completions of up to 48 tokens a step, temperature 1, learning rate 5e-4 with 10% warmup
and a cosine decay, loss ``dapo``, no KL term). The contenders:

- **lorakit**: ``lorakit train`` on that config, through the recipe, as the CLI runs it.
- **TRL defaults**: ``GRPOTrainer`` with a peft ``LoraConfig`` of the same shape and GRPOConfig's own
  defaults for everything the task does not fix (gradient checkpointing on, bf16 autocast).
- **TRL tuned for CPU**: the same with gradient checkpointing off and the weights loaded in the dtype
  lorakit's plan chose on this machine.

TRL is handed lorakit's reward functions themselves (they follow TRL's calling convention) and the
prompts as conversations, which the model's template renders to the same text lorakit's prompts are
(checked below before anything is timed). Each step is timed whole, and split into generation, rewards
and the rest (log-probs, backward, optimizer): lorakit logs that split itself; TRL's ``_generate`` and
``_calculate_rewards`` are wrapped with a timer. The first step (warm-up) is left out of the medians.
The reward curves are the per-step mean rewards of the sampled completions; sampling seeds differ
between the tools, so they are compared by mean and standard error, not step by step.

The generation section answers the same 16 prompt rows (4 prompts x 4) as GRPO's sampling does
(``generate_ids`` with ``group=4``: each prompt read once, the adapter folded into a copy of the weights,
sampling by the Gumbel-max trick) and with one
``model.generate`` call of transformers on the same LoRA-wrapped model, sampling, up to 48 new tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "examples" / "grpo" / "config.yaml"


class StepClock(TrainerCallback):
    """Wall seconds of every optimizer step, and of the generation and reward calls inside it.

    A step is timed from the end of the one before (the start of training for the first), because
    lorakit samples a step's completions before the Trainer's ``on_step_begin`` (``get_batch_samples``)
    and TRL inside it: between two step ends both tools do all of a step's work.
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.inside = {"generation": 0.0, "rewards": 0.0}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.dtype = next(p.dtype for n, p in model.named_parameters() if "lora_" not in n)
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps.append({"seconds": now - self.last, **self.inside})
        self.last, self.inside = now, {"generation": 0.0, "rewards": 0.0}

    def timed(self, fn, part: str):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.inside[part] += time.perf_counter() - started
        return wrapper


def summary(steps: list[dict[str, float]], rewards: list[float]) -> dict:
    """Medians over the steps after the first, and the reward curve's mean and standard error."""
    timed = steps[1:] or steps
    median = {k: statistics.median(s[k] for s in timed) for k in timed[0]}
    sem = statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else float("nan")
    return {"median": median, "steps": steps, "rewards": rewards,
            "reward_mean": statistics.fmean(rewards), "reward_sem": sem}


def run_lorakit(steps: int, out: Path) -> tuple[dict, str]:
    from lorakit.config_file import load_config
    from lorakit.train import recipe

    cfg = load_config(CONFIG, [f"train.max_steps={steps}", "train.logging_steps=1", f"train.save_steps={steps + 1}",
                               "eval.at_end=false", "data.eval=[]", "train.keep_best=false", f"output_dir={out}"])
    clock = StepClock()
    recipe.run(cfg, hooks=[clock], overwrite=True)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "reward" in m]
    for step, m in zip(clock.steps, logged):  # the method's own split of each step
        step["generation"], step["rewards"] = m["seconds/generation"], m["seconds/rewards"]
    return summary(clock.steps, [m["reward"] for m in logged]), clock.dtype, cfg.lora.dropout


def without(saving: str):
    """lorakit with one of its GRPO savings switched off, to measure what it is worth (--ablate)."""
    from contextlib import ExitStack
    from unittest import mock

    from lorakit.infer import generate
    from lorakit.model import folded_lora, shared_prompt

    ours = generate.sampling_kwargs

    def multinomial(gen):  # transformers' own sampling: its warpers and torch.multinomial
        kwargs = ours(gen)
        if "logits_processor" in kwargs:
            kwargs = {**kwargs, "logits_processor": None, "do_sample": True, "temperature": gen.temperature,
                      "top_p": gen.top_p if gen.top_p < 1.0 else None, "top_k": gen.top_k or None,
                      "min_p": gen.min_p or None}
        return kwargs

    stack = ExitStack()
    if saving == "shared-prompt":
        stack.enter_context(mock.patch.object(shared_prompt, "shares", lambda model: False))
    elif saving == "folded-lora":
        stack.enter_context(mock.patch.object(folded_lora, "fold_fits", lambda layers, device: False))
    elif saving == "gumbel":
        stack.enter_context(mock.patch.object(generate, "sampling_kwargs", multinomial))
    return stack


def trl_dataset(tokenizer, rows_path: Path):
    """The demo's prompts as TRL takes them, each checked to render to lorakit's prompt ids."""
    from datasets import Dataset

    from lorakit.data.encode import encode_prompt
    from lorakit.templates import resolve_template

    template = resolve_template(tokenizer, "auto")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    records = [{"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}], "reference": r["output"]}
               for r in rows]
    for record in records:
        theirs = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        if theirs != encode_prompt(tokenizer, template, record["prompt"], 10_000).input_ids:
            raise SystemExit(f"TRL's prompt differs from lorakit's: {record['prompt']}")
    return Dataset.from_list(records)


def run_trl(steps: int, model_path: str, tuned: bool, dtype: torch.dtype, dropout: float, out: Path) -> dict:
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lorakit.train.rewards import json_fields, valid_json

    def content(completions):  # TRL hands conversational completions as message lists
        return [c[-1]["content"] if isinstance(c, list) else c for c in completions]

    def trl_json_fields(prompts, completions, reference, **_):
        return json_fields(prompts, content(completions), reference=reference)

    def trl_valid_json(prompts, completions, **_):
        return valid_json(prompts, content(completions))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=16, num_generations=4,
        max_completion_length=48, temperature=1.0, learning_rate=5e-4, warmup_steps=0.1, lr_scheduler_type="cosine",
        reward_weights=[1.0, 0.5], logging_steps=1, save_strategy="no", report_to=[], seed=42, use_cpu=True,
        **({"gradient_checkpointing": False, "model_init_kwargs": {"dtype": dtype}} if tuned else {}),
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = trl_dataset(tokenizer, CONFIG.parent.parent / "demo" / "train.jsonl")
    clock = StepClock()
    trainer = GRPOTrainer(model=model_path, reward_funcs=[trl_json_fields, trl_valid_json], args=args,
                          train_dataset=dataset, peft_config=lora, callbacks=[clock], processing_class=tokenizer)
    trainer._generate = clock.timed(trainer._generate, "generation")
    trainer._calculate_rewards = clock.timed(trainer._calculate_rewards, "rewards")
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return summary(clock.steps, rewards)


def generation_speed(model_path: str, dtype: torch.dtype) -> dict:
    """GRPO's sampling (generate_ids with the group's prompt read once, the adapter folded) against one
    model.generate call on the same 16 rows, LoRA on, sampling."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.config import GenerationConfig
    from lorakit.infer.generate import generate_ids
    from lorakit.model import folded_lora

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.eval()
    rows = [json.loads(line) for line in (CONFIG.parent.parent / "demo" / "train.jsonl").read_text().splitlines()][:4]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for r in rows for _ in range(4)]
    stop = frozenset([tokenizer.convert_tokens_to_ids("<|im_end|>")])
    gen = GenerationConfig(max_new_tokens=48, temperature=1.0, seed=0, batch_size=16)
    result = {}
    for attempt in range(2):  # the first of each is a warm-up
        started = time.perf_counter()
        with folded_lora.folded(list(model.modules())):  # as GRPO samples where the copy fits
            ours = generate_ids(model, tokenizer, prompts, gen, stop, group=4)
        ours_s = time.perf_counter() - started
        width = max(map(len, prompts))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=True, temperature=1.0,
                                 top_p=1.0, top_k=0, eos_token_id=sorted(stop), pad_token_id=tokenizer.pad_token_id)
        theirs_s = time.perf_counter() - started
        theirs_tokens = sum(min(len(row), 48) for row in (_until(r[width:].tolist(), stop) for r in out))
        result = {"lorakit_s": ours_s, "lorakit_tokens": sum(len(a.token_ids) for a in ours),
                  "transformers_s": theirs_s, "transformers_tokens": theirs_tokens}
    result["lorakit_tokens_per_s"] = result["lorakit_tokens"] / result["lorakit_s"]
    result["transformers_tokens_per_s"] = result["transformers_tokens"] / result["transformers_s"]
    return result


def _until(ids: list[int], stop: frozenset[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in stop:
            return ids[: i + 1]
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/lorakit").expanduser())
    parser.add_argument("--skip", nargs="*", default=[], choices=["generation", "lorakit", "trl-defaults", "trl-tuned"])
    parser.add_argument("--ablate", action="store_true",
                        help="only lorakit, with each saving switched off in turn (shared-prompt, folded-lora, gumbel)")
    args = parser.parse_args()
    if args.ablate:
        return ablate(args.steps)

    from lorakit.model.gguf_cache import converted_folder, embedded_gguf

    model_path = str(converted_folder(embedded_gguf(), args.cache))
    result: dict = {"machine": f"{socket.gethostname()} {platform.processor() or platform.machine()}",
                    "threads": torch.get_num_threads(), "steps": args.steps, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        dtype, dropout = torch.bfloat16, 0.0  # what lorakit's plan picks on a CPU with fast bf16; measured below
        if "lorakit" not in args.skip:
            result["lorakit"], dtype, dropout = run_lorakit(args.steps, Path(tmp) / "lorakit")
        result["weight_dtype"] = str(dtype)
        if "generation" not in args.skip:
            result["generation"] = generation_speed(model_path, dtype)
        if "trl-defaults" not in args.skip:
            result["trl_defaults"] = run_trl(args.steps, model_path, False, dtype, dropout, Path(tmp) / "trl-d")
        if "trl-tuned" not in args.skip:
            result["trl_tuned"] = run_trl(args.steps, model_path, True, dtype, dropout, Path(tmp) / "trl-t")
    for name in ("lorakit", "trl_defaults", "trl_tuned"):
        if name in result:
            m, r = result[name]["median"], result[name]
            print(f"{name:13s} step {m['seconds']:6.2f} s  generation {m['generation']:6.2f} s  rewards "
                  f"{m['rewards']:5.3f} s  reward {r['reward_mean']:.3f} ± {r['reward_sem']:.3f}")
    if "lorakit" in result:
        for name in ("trl_defaults", "trl_tuned"):
            if name in result:
                print(f"lorakit step is {result[name]['median']['seconds'] / result['lorakit']['median']['seconds']:.2f}x "
                      f"faster than {name}")
    if "generation" in result:
        g = result["generation"]
        print(f"generation: lorakit {g['lorakit_tokens_per_s']:.1f} tok/s, transformers {g['transformers_tokens_per_s']:.1f}"
              " tok/s")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = HERE / "results" / f"grpo-{socket.gethostname()}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def ablate(steps: int) -> None:
    """lorakit's step as it runs, then with each saving off: what each is worth, side by side in one process."""
    result: dict = {"machine": f"{socket.gethostname()} {platform.processor() or platform.machine()}",
                    "threads": torch.get_num_threads(), "steps": steps, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for saving in ("none", "shared-prompt", "folded-lora", "gumbel"):
            with without(saving):
                found, _, _ = run_lorakit(steps, Path(tmp) / saving)
            m = found["median"]
            result[f"without {saving}"] = found
            print(f"without {saving:14s} step {m['seconds']:6.2f} s  generation {m['generation']:6.2f} s  "
                  f"the rest {m['seconds'] - m['generation']:6.2f} s")
    path = HERE / "results" / f"grpo-ablate-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
