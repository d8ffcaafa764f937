"""GRPO runs through the recipe: a run logs and samples as it trains; accumulation equals one big batch;
the reference is the adapter switched off; reused completions (iterations) read each step's prompts
again; killed and resumed it ends where the uninterrupted run ends; bad reward functions stop it with
one line naming the function and the sample."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.config import GRPOConfig
from lorakit.data.prompt_rows import EncodedPrompt, PromptRow
from lorakit.infer.generate import prompt_ids
from lorakit.model.compiled_layers import compiler_missing
from lorakit.model.loss import token_logps
from lorakit.run import RUN_WRITES
from lorakit.train import checkpoints, recipe
from lorakit.train.methods.grpo import GRPO, RepeatedSteps
from lorakit.train.rewards import RewardError, load_rewards, score
from lorakit.templates import resolve_template
from lorakit.train.trainer import LorakitTrainer
from safetensors.torch import load_file

from tests.conftest import make_tokenizer, write_jsonl
from tests.train.helpers import adapter, assert_same_update, metrics, run_on_one_thread, tiny_config
from tests.train.test_preference import lora_model
from tests.train.test_resume import CHILD_ENV, assert_same_adapter, start_training, wait_for_checkpoint

ROWS = [
    {"prompt": "Say hi", "reference": "hi", "tag": "a"},
    {"instruction": "Count to three", "input": "", "output": "1 2 3", "tag": "b"},
    {"messages": [{"role": "user", "content": "Your name?"}], "tag": "bad"},
    {"prompt": "JSON please", "reference": '{"a": 1}', "tag": "c"},
]
REWARDS = '''
def vowels(prompts, completions, **columns):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

def raises(prompts, completions, tag, **columns):
    return [1 / (t != "bad") for t in tag]

def returns_string(prompts, completions, **columns):
    return ["good" for c in completions]

def wrong_length(prompts, completions, **columns):
    return [1.0]

def skips_some(prompts, completions, tag, **columns):
    return [None if t == "a" else float(len(c) % 3) for t, c in zip(tag, completions)]
'''


def reward_file(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "rewards.py"
    path.write_text(REWARDS, encoding="utf-8")
    return path


def grpo_config(model_dir: Path, tmp: Path, *overrides: str, rewards: tuple[str, ...] = ("vowels", "skips_some")):
    file = reward_file(tmp)
    specs = json.dumps([f"{file}:{name}" for name in rewards] + ["builtin:length"])
    return tiny_config(model_dir, tmp, "method=grpo", f"grpo.rewards={specs}", "grpo.max_completion_length=6",
                       "grpo.num_generations=3", "train.logging_steps=1", "data.cache_dir=null",
                       "train.learning_rate=0.02", *overrides, rows=ROWS * 2)


def test_a_run_logs_rewards_and_writes_samples_of_completions(tiny_model_dir, tmp_path):
    cfg = grpo_config(tiny_model_dir, tmp_path, "train.max_steps=3", "train.batch_size=2", "grpo.beta=0.1")
    summary = recipe.run(cfg)
    assert summary["steps"] == 3 and summary["method"] == "grpo"
    rows = [r for r in metrics(cfg.output_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    wanted = {"reward", "reward_std", "rewards/vowels/mean", "rewards/vowels/std", "rewards/skips_some/mean",
              "rewards/length/mean", "frac_reward_zero_std", "completions/mean_length", "completions/max_length",
              "completions/clipped_ratio", "kl", "clip_ratio/region_mean", "seconds/generation",
              "seconds/rewards", "seconds/training"}
    assert all(wanted <= set(r) for r in rows)
    assert all(1 <= r["completions/mean_length"] <= r["completions/max_length"] <= 6 for r in rows)
    sample = [json.loads(line) for line in (cfg.output_dir / "completions" / "step-000002.jsonl").read_text()
              .splitlines()]
    assert len(sample) == 2 * 3 and {s["step"] for s in sample} == {2}
    assert set(sample[0]["rewards"]) == {"vowels", "skips_some", "length"}
    assert all(", line " in s["source"] for s in sample)
    assert sum(s["advantage"] for s in sample[:3]) == pytest.approx(0, abs=1e-5)  # a group's advantages
    data = summary["data"][0]
    assert data["kept"] == 8 and data["loss_tokens"] == 0
    # Everything the run wrote is the run's: --overwrite may delete it (completions/ included).
    assert {p.name for p in cfg.output_dir.iterdir()} <= RUN_WRITES
    recipe.run(cfg, overwrite=True)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path, loss_type):
    common = ("train.max_steps=2", "train.precision=fp32", "model.dtype=float32", f"grpo.loss_type={loss_type}",
              "grpo.beta=0.05")
    big = grpo_config(tiny_model_dir, tmp_path / "big", *common, "train.batch_size=4", "train.grad_accum=1")
    small = grpo_config(tiny_model_dir, tmp_path / "small", *common, "train.batch_size=2", "train.grad_accum=2")
    split = grpo_config(tiny_model_dir, tmp_path / "split", *common, "train.batch_size=4",
                        "train.micro_batch_tokens=40")
    run_on_one_thread(big), run_on_one_thread(small), run_on_one_thread(split)
    for other in (small, split):
        assert_same_update(adapter(other.output_dir), adapter(big.output_dir), "fp32")
        first, second = metrics(big.output_dir)[0], metrics(other.output_dir)[0]
        assert first["reward"] == pytest.approx(second["reward"], rel=1e-6)  # the same completions
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-5, abs=1e-6)  # about 0: advantages sum to 0


def test_the_reference_logps_are_the_adapter_switched_off(tiny_model_dir, tmp_path):
    model = lora_model(tiny_model_dir)
    method = GRPO(GRPOConfig(beta=0.1, iterations=2, num_generations=2, max_completion_length=5),
                  load_rewards(["builtin:length"], 5), seed=3, logging_steps=0, output_dir=None)
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    method.use_text(tokenizer, template)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = LorakitTrainer(model=model, args=args, method=method)
    prompts = [EncodedPrompt(prompt_ids(tokenizer, template, [{"role": "user", "content": t}]),
                             PromptRow([{"role": "user", "content": t}], f"p.jsonl, line {k}"))
               for k, t in enumerate(["Hi", "Count to three, please"])]
    (batch,) = method.prepare(trainer, model, [prompts], seed=5, logged_step=None)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected, keep = token_logps(base, batch)
        policy, _ = token_logps(model.eval(), batch)
    torch.testing.assert_close(batch["ref_logps"][:, 1:][keep], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["old_logps"][:, 1:][keep], policy, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, expected)  # the adapter does change them
    assert batch["advantages"].shape == (4, 1)
    # Sampled for evaluation (no logged step): nothing is added to the training steps' logged seconds.
    assert method.window.seconds == {"generation": 0.0, "rewards": 0.0, "training": 0.0}


def test_repeated_steps_read_each_steps_prompts_again_and_fill_the_last_step():
    sampler = RepeatedSteps(5, 2, 2, seed=0)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    got = list(sampler)
    assert len(got) == len(sampler) == 12
    assert got[:4] == order[:2] * 2 and got[4:8] == order[2:4] * 2 and got[8:] == [order[4], order[0]] * 2
    sampler.set_epoch(1)
    assert list(sampler) != got and sorted(set(list(sampler))) == [0, 1, 2, 3, 4]


def test_iterations_train_each_batch_of_completions_for_that_many_steps(tiny_model_dir, tmp_path):
    cfg = grpo_config(tiny_model_dir, tmp_path, "train.max_steps=4", "train.batch_size=2", "grpo.iterations=2")
    recipe.run(cfg)
    rows = [r for r in metrics(cfg.output_dir) if "loss" in r]
    assert rows[0]["reward"] == rows[1]["reward"] and rows[2]["reward"] == rows[3]["reward"]
    assert rows[0]["clip_ratio/region_mean"] == 0  # the first step of a batch is on its own policy: ratio 1
    first = [json.loads(x)["completion"] for x in (cfg.output_dir / "completions" / "step-000001.jsonl")
             .read_text().splitlines()]
    again = [json.loads(x)["completion"] for x in (cfg.output_dir / "completions" / "step-000003.jsonl")
             .read_text().splitlines()]
    assert first != again  # step 3 sampled anew


def completions(run: Path, step: int) -> list[dict]:
    """The sample of a step's completions, without the data file's path (it differs between runs)."""
    rows = [json.loads(line) for line in (run / "completions" / f"step-{step:06d}.jsonl").read_text().splitlines()]
    return [{**row, "source": row["source"].rpartition(", ")[2]} for row in rows]


@pytest.mark.slow  # starts training subprocesses
def test_sigkill_then_resume_gives_the_same_completions_and_adapter(tiny_model_dir, tmp_path):
    steps = ("train.max_steps=8", "train.batch_size=2", "train.save_steps=2", "train.precision=fp32",
             "model.dtype=float32", "lora.dropout=0.1", "grpo.beta=0.05")
    reference = grpo_config(tiny_model_dir, tmp_path / "reference", *steps)
    run_on_one_thread(reference)
    killed = grpo_config(tiny_model_dir, tmp_path / "killed", *steps)
    config = tmp_path / "killed" / "grpo.yaml"
    config.write_text(json.dumps(killed.model_dump(mode="json")), encoding="utf-8")  # JSON is YAML
    proc = start_training(config)
    wait_for_checkpoint(killed.output_dir / "checkpoints", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed.output_dir / "summary.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), "--resume"],
                             capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_adapter(adapter(killed.output_dir), adapter(reference.output_dir))
    for step in range(1, 9):  # the same completions, rewards and advantages at every step
        assert completions(killed.output_dir, step) == completions(reference.output_dir, step)
    assert checkpoints.latest_complete(killed.output_dir / "checkpoints") is not None


def test_reward_errors_name_the_function_and_the_sample(tmp_path):
    file = reward_file(tmp_path)
    columns = {"tag": ["a", "bad", "c"]}
    origins = ["d.jsonl, line 1", "d.jsonl, line 3", "d.jsonl, line 4"]
    for name, message in [("raises", r"rewards.py:raises failed on d.jsonl, line 3: ZeroDivisionError"),
                          ("returns_string", r"returned 'good' for d.jsonl, line 1; return a number"),
                          ("wrong_length", r"returned 1 values for 3 completions \(the batch starting at d.jsonl")]:
        (reward,) = load_rewards([f"{file}:{name}"], 8)
        with pytest.raises(RewardError, match=message):
            score([reward], ["p"] * 3, ["x", "y", "z"], columns, origins)
    for spec, message in [(f"{tmp_path}/missing.py:fn", "does not exist"), (f"{file}:nothing", "has no 'nothing'"),
                          ("builtin:nope", "no such built-in"), ("builtin:regex:(", "does not compile")]:
        with pytest.raises(RewardError, match=message):
            load_rewards([spec], 8)


def test_built_in_rewards():
    (exact, valid, fields, pattern, length) = [r.function for r in load_rewards(
        ["builtin:exact", "builtin:valid_json", "builtin:json_fields", "builtin:regex:^\\{.*\\}$", "builtin:length"], 8)]
    completions = [' {"name": "Lena", "age": 30}', "Lena", '{"name": "Lena", "age": 29}']
    refs = ['{"name": "Lena", "age": 29}', None, '{"name": "Lena", "age": 29}']
    assert exact([], completions, reference=refs) == [0.0, None, 1.0]
    assert valid([], completions) == [1.0, 0.0, 1.0]
    assert fields([], completions, reference=refs) == [0.5, None, 1.0]
    assert pattern([], completions) == [0.0, 0.0, 1.0]
    assert length([], completions, completion_ids=[[1] * 8, [1] * 2, [1] * 4]) == [-1.0, -0.25, -0.5]


def test_a_bad_reward_file_stops_before_the_run_folder_is_touched(tiny_model_dir, tmp_path):
    cfg = grpo_config(tiny_model_dir, tmp_path, "train.max_steps=1", "train.batch_size=2")
    recipe.run(cfg)
    before = sorted((p.relative_to(cfg.output_dir), p.stat().st_mtime_ns) for p in cfg.output_dir.rglob("*"))
    with pytest.raises(RewardError, match="has no 'missing_function'"):  # refused as the config loads
        grpo_config(tiny_model_dir, tmp_path, "train.max_steps=1", rewards=("missing_function",))
    with pytest.raises(RewardError, match="has no 'missing_function'"):  # and by the recipe, given one in code
        recipe.run(cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"rewards": [
            cfg.grpo.rewards[0].rpartition(":")[0] + ":missing_function"]})}), overwrite=True)
    assert sorted((p.relative_to(cfg.output_dir), p.stat().st_mtime_ns) for p in cfg.output_dir.rglob("*")) == before


def test_a_reward_that_fails_during_training_stops_it_naming_the_sample(tiny_model_dir, tmp_path):
    cfg = grpo_config(tiny_model_dir, tmp_path, "train.max_steps=4", "train.batch_size=4", rewards=("raises",))
    with pytest.raises(RewardError, match=r"rewards.py:raises failed on .*train.jsonl, line [37]: ZeroDivisionError"):
        recipe.run(cfg)


def test_eval_at_end_reports_each_rewards_mean_for_base_and_tuned(tiny_model_dir, tmp_path):
    held_out = [{"prompt": "Say hi", "completion": "hi", "tag": "a"}, {"prompt": "Count", "completion": "1 2 3",
                "tag": "b"}, {"prompt": "No answer", "completion": "", "tag": "c"}]  # no reference: not scored
    cfg = grpo_config(tiny_model_dir, tmp_path, "train.max_steps=2", "train.batch_size=2", "eval.at_end=true",
                      "generation.max_new_tokens=6", f"data.eval={write_jsonl(tmp_path / 'held.jsonl', held_out)}")
    summary = recipe.run(cfg)
    table = summary["eval"]
    for name in ("vowels", "skips_some", "length"):
        assert set(table[f"reward/{name}"]) == {"base", "tuned"}
    assert -1 <= table["reward/length"]["base"] < 0 and "exact_match" in table
    report = json.loads((cfg.output_dir / "eval.json").read_text())
    assert report["settings"]["samples_scored"] == 2
    assert "reward vowels" in (cfg.output_dir / "eval.md").read_text()


def test_from_an_sft_adapter_the_reference_is_that_adapter_frozen(tiny_model_dir, tmp_path):
    sft = tiny_config(tiny_model_dir, tmp_path / "sft", "train.max_steps=3", "train.save_steps=null",
                      "train.learning_rate=0.02")
    recipe.run(sft)
    cfg = grpo_config(tiny_model_dir, tmp_path / "grpo", "train.max_steps=3", "train.batch_size=2", "grpo.beta=0.1",
                      "train.warmup=0", f"model.adapter={sft.output_dir}")
    recipe.run(cfg)
    rows = [r for r in metrics(cfg.output_dir) if "loss" in r]
    # Step 1: the policy is still the SFT adapter, so it is the reference exactly; then it moves away.
    assert rows[0]["kl"] == 0.0 and rows[2]["kl"] > 0
    tuned, start = adapter(cfg.output_dir), adapter(sft.output_dir)
    assert tuned.keys() == start.keys() and any(not torch.equal(tuned[k], start[k]) for k in tuned)
    assert not (cfg.output_dir / "reference").exists()


def test_a_run_resumed_inside_a_cycle_of_iterations_reuses_the_saved_completions(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """Steps 3 and 4 share one batch of completions; resumed after step 3, step 4 takes it from the checkpoint."""
    common = ("train.batch_size=2", "grpo.iterations=2", "train.scheduler=constant", "train.warmup=0",
              "train.precision=fp32", "model.dtype=float32", "train.save_steps=1", "grpo.beta=0.05")
    whole = grpo_config(tiny_model_dir, tmp_path / "whole", "train.max_steps=4", *common)
    run_on_one_thread(whole)
    cut = grpo_config(tiny_model_dir, tmp_path / "cut", "train.max_steps=3", *common)
    run_on_one_thread(cut)
    assert (cut.output_dir / "checkpoints" / "checkpoint-3" / "grpo-batches-0.pt").is_file()
    resumed = cut.model_copy(update={"train": cut.train.model_copy(update={"max_steps": 4})})
    monkeypatch.setattr(recipe, "run", partial(recipe.run, resume="latest"))
    run_on_one_thread(resumed)  # on one thread, as the other two ran
    assert_same_adapter(adapter(cut.output_dir), adapter(whole.output_dir))
    last = [[r for r in metrics(run.output_dir) if r.get("step") == 4 and "loss" in r][0] for run in (cut, whole)]
    assert last[0]["reward"] == last[1]["reward"] and last[0]["loss"] == last[1]["loss"]


@pytest.mark.parametrize(("rows", "rewards", "message"), [
    ([{"answer": "no prompt"}], ("vowels",), r"train.jsonl, line 1: cannot tell the data shape"),
    (ROWS, ("missing_function",), r"has no 'missing_function'"),
    (ROWS, ("returns_string",), r"returned 'good' for .*train.jsonl, line \d+; return a number"),
    (ROWS, ("wrong_length",), r"returned 1 values for 6 completions"),
])
def test_the_command_refuses_bad_input_in_one_line_with_exit_code_2(tiny_model_dir, tmp_path, rows, rewards, message):
    file = reward_file(tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    specs = json.dumps([f"{file}:{name}" for name in rewards])
    result = CliRunner().invoke(app, [
        "train", "--set", f"model.name={tiny_model_dir}", "--set", "method=grpo", "--set", f"data.train={data}",
        "--set", f"grpo.rewards={specs}", "--set", "grpo.num_generations=3", "--set", "grpo.max_completion_length=4",
        "--set", f"output_dir={tmp_path / 'run'}", "--set", "train.max_steps=1", "--set", "train.batch_size=2",
        "--set", "data.cache_dir=null", "--set", "train.progress_bar=false"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing("cpu") is not None, reason="torch.compile needs a C++ compiler")
def test_train_compile_compiles_the_training_passes_only_and_samples_as_eager(tiny_model_dir, tmp_path):
    """train.compile=true with GRPO: the layers compile in the first step's passes, and sampling runs
    the eager layers between steps (no graph of its own: a one-token pass per new length would
    otherwise compile again). Completions and losses are the eager run's (fp32)."""
    from tests.train.test_auto_compile import GraphCount

    common = ("train.max_steps=3", "train.batch_size=2", "train.precision=fp32", "model.dtype=float32")
    eager = grpo_config(tiny_model_dir, tmp_path / "eager", *common, "train.compile=false")
    cfg = grpo_config(tiny_model_dir, tmp_path / "compiled", *common, "train.compile=true")
    graphs = GraphCount()
    run_on_one_thread(eager), run_on_one_thread(cfg, hooks=[graphs])
    assert len(graphs.per_step) == 3 and graphs.per_step[0] > 0 and len(set(graphs.per_step)) == 1
    ran = [[(r["reward"], r["loss"]) for r in metrics(c.output_dir) if "loss" in r] for c in (eager, cfg)]
    assert [r for r, _ in ran[1]] == pytest.approx([r for r, _ in ran[0]], rel=1e-6)  # the same completions
    assert [loss for _, loss in ran[1]] == pytest.approx([loss for _, loss in ran[0]], rel=1e-4, abs=1e-6)


def test_sampling_folds_the_adapter_or_fuses_it_and_samples_what_peft_would(tiny_model_dir, tmp_path, monkeypatch):
    """Sampling between steps runs each LoRA layer as one linear over W + s·B·A (model/folded_lora.py);
    where the folded copies would not fit it runs training's fused op. In float32 both sample the
    completions of peft's own layers (train.fused_lora=false and no folding), so the rewards are equal."""
    from lorakit.model import folded_lora, fused_lora

    calls = {"folded": [], "fused": []}
    plain_fused, plain_folded = fused_lora.fused_forward, folded_lora._folded_forward

    def counted_fused(layer, x, *args, **kwargs):
        calls["fused"].append(torch.is_inference_mode_enabled())
        return plain_fused(layer, x, *args, **kwargs)

    def counted_folded(weight, bias, layer):
        forward = plain_folded(weight, bias, layer)

        def recorded(x, *args, **kwargs):
            calls["folded"].append(torch.is_inference_mode_enabled())
            return forward(x, *args, **kwargs)
        return recorded

    monkeypatch.setattr(fused_lora, "fused_forward", counted_fused)
    monkeypatch.setattr(folded_lora, "_folded_forward", counted_folded)
    common = ("train.max_steps=2", "train.batch_size=2", "train.precision=fp32", "model.dtype=float32")
    runs = {kind: grpo_config(tiny_model_dir, tmp_path / kind, *common, f"train.fused_lora={kind != 'peft'}")
            for kind in ("folded", "fused", "peft")}
    run_on_one_thread(runs["folded"])
    assert calls["folded"] and all(calls["folded"])  # sampling (inference mode) ran the folded layers
    assert calls["fused"] and not any(calls["fused"])  # and training the fused op, never sampling
    monkeypatch.setattr(folded_lora, "fold_fits", lambda layers, device: False)  # as if memory were short
    calls["folded"].clear(), calls["fused"].clear()
    run_on_one_thread(runs["fused"])
    assert not calls["folded"] and any(calls["fused"]) and not all(calls["fused"])  # sampling's and training's
    run_on_one_thread(runs["peft"])
    rewards = {kind: [r["reward"] for r in metrics(c.output_dir) if "loss" in r] for kind, c in runs.items()}
    assert len(set(rewards["peft"])) > 1  # the steps sampled completions scored differently
    assert rewards["folded"] == pytest.approx(rewards["peft"], rel=1e-6)
    assert rewards["fused"] == pytest.approx(rewards["peft"], rel=1e-6)
    # Both trained through the fused op on the same completions: folding left the weights untouched.
    folded, fused = adapter(runs["folded"].output_dir), adapter(runs["fused"].output_dir)
    assert all(torch.equal(folded[key], fused[key]) for key in fused)


def test_a_prompts_rows_trained_as_one_row_train_as_the_rows_apart(tiny_model_dir, tmp_path, monkeypatch):
    """Training computes each prompt's completions as one row, the prompt once (model/shared_prompt.py),
    in passes of whole prompts (split_runs); in float32 the losses and the adapter are the rows apart's,
    with the reference's KL term and two iterations (old log-probs) computed the same way."""
    from lorakit.model import shared_prompt

    layouts = []
    plain = shared_prompt.shared_layout
    monkeypatch.setattr(shared_prompt, "shared_layout", lambda *a: layouts.append(plain(*a)) or layouts[-1])
    common = ("train.max_steps=4", "train.batch_size=2", "train.grad_accum=2", "train.micro_batch_tokens=40",
              "grpo.beta=0.1", "grpo.iterations=2", "train.precision=fp32", "model.dtype=float32")
    shared = grpo_config(tiny_model_dir, tmp_path / "shared", *common)
    run_on_one_thread(shared)
    assert layouts and all(layout is not None for layout in layouts)
    assert any(layout.input_ids.shape[0] > 1 for layout in layouts)  # some passes held two prompts
    layouts.clear()
    monkeypatch.setattr(shared_prompt, "shares", lambda model: False)
    apart = grpo_config(tiny_model_dir, tmp_path / "apart", *common)
    run_on_one_thread(apart)
    assert not layouts
    ran = [[(r["reward"], r["loss"], r["kl"]) for r in metrics(c.output_dir) if "loss" in r] for c in (shared, apart)]
    assert [r for r, _, _ in ran[0]] == pytest.approx([r for r, _, _ in ran[1]], rel=1e-6)  # the same completions
    values = [[v for _, loss, kl in r for v in (loss, kl)] for r in ran]
    assert values[0] == pytest.approx(values[1], rel=1e-4, abs=1e-6)
    assert_same_update(adapter(shared.output_dir), adapter(apart.output_dir), "fp32")


def test_keep_best_keeps_the_checkpoint_with_the_highest_eval_reward(tiny_model_dir, tmp_path):
    """GRPO's loss says nothing of quality (a group's advantages sum to zero), so train.keep_best
    follows the held-out reward, higher being better, and keeps that step's adapter."""
    cfg = grpo_config(tiny_model_dir, tmp_path, "train.max_steps=4", "train.batch_size=2", "train.save_steps=1",
                      "train.eval_steps=1", "train.keep_best=true")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval": [write_jsonl(tmp_path / "held.jsonl",
                                                                                         ROWS[:2])]})})
    summary = run_on_one_thread(cfg)
    evals = [(r["step"], r["eval_reward"]) for r in metrics(cfg.output_dir) if "eval_reward" in r]
    assert [s for s, _ in evals] == [1, 2, 3, 4] and len({r for _, r in evals}) > 1  # the choice is a real one
    best_step = max(evals, key=lambda e: e[1])[0]  # the first of equals, as the Trainer keeps it
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    kept = load_file(cfg.output_dir / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    for key, value in adapter(cfg.output_dir).items():
        assert torch.equal(value, kept[key]), key
