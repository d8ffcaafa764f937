"""GRPO: learn from scores of the model's own answers, with no answers to imitate.

Each optimizer step, before any of its micro-batches is trained (``prepare_step``), every prompt of
the step gets ``grpo.num_generations`` completions sampled from the policy (the adapter on, dropout
off), through lorakit's batched generation (``infer/generate.py``: a KV cache, stopping at the
template's end-of-turn token). The reward functions score them (``train/rewards.py``), each prompt's
group gives the advantages, and the batches become rows of prompt + completion whose labels are the
completion tokens (end of turn included), with each row's advantage beside them and, when needed,
the sampling policy's log-probs (``iterations`` > 1) and the reference's (``beta`` > 0; the adapter
switched off, or a starting run's adapter, frozen: ``train/preference.py``). The loss is
``grpo_loss.py``'s.

Where the time goes, and what saves it (bench/grpo_bench.py, docs/grpo.md): sampling runs the
adapter folded into a copy of the weights (``model/folded_lora.py``) and draws tokens by the
Gumbel-max trick (``infer/sampling.py``); training computes a prompt's completions as one row, the
prompt once (``model/shared_prompt.py``), in passes of whole prompts (``microbatch.split_runs``).

Sampling is seeded from the run's seed and the step (and the process), inside a forked RNG: a
step's completions do not depend on what ran before it, so a run resumed from a checkpoint (even
after SIGKILL) samples what the uninterrupted run sampled, and the global RNG the Trainer restores
on resume is never drawn from here. Generating a whole step at once makes accumulation over
micro-batches sample, and so train, exactly as one large batch does.

With ``iterations`` k > 1 each batch of completions is trained on for k optimizer steps (TRL's
num_iterations): the data loader repeats each step's prompts k times (``RepeatedSteps``), and the
completions, advantages and log-probs prepared at the first of them are kept for the others, in the
checkpoints too (``save_state``), so a run resumed inside a cycle trains on the same completions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import Sampler

from lorakit.config import ConfigError, GenerationConfig, GRPOConfig, RunConfig
from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.data.prompt_rows import PROMPTS, EncodedPrompt
from lorakit.infer.generate import Answer, generate_ids
from lorakit.labels import IGNORE_INDEX
from lorakit.model import shared_prompt
from lorakit.outputs import writing
from lorakit.run import RunFolder
from lorakit.train.methods.base import Batch, Method, Step, step_share
from lorakit.train.methods.grpo_loss import completion_sums, group_advantages, items, token_losses
from lorakit.train.microbatch import split_rows, split_runs
from lorakit.train.preference import reference_model
from lorakit.train.rewards import RewardFunction, load_rewards, score

log = logging.getLogger(__name__)

SEED_RANGE = 2**32  # GenerationConfig.seed's range
STAT = "stat/"  # a prepared batch's per-completion values, logged as they are


def sampling_seed(seed: int, step: int, process: int) -> int:
    """The seed of one step's sampling on one process: a fixed function of the run's seed and the step."""
    return (seed * 1_000_003 + step * 7_919 + process) % SEED_RANGE


class RepeatedSteps(Sampler[int]):
    """The training rows in a seeded order per epoch, each optimizer step's ``step_rows`` of them read
    ``repeats`` times in a row, so the steps that reuse a batch of completions are handed its prompts.

    Rows 0-4, steps of 2, repeats 2, order [3, 0, 4, 1, 2]: 3 0 3 0 4 1 4 1 2 3 2 3 (the last step
    is filled from the start of the order, so every step is whole and the repeats stay aligned).
    The order is a function of the seed and the epoch alone, so a resumed run reads what the first read.
    """

    def __init__(self, size: int, step_rows: int, repeats: int, seed: int):
        self.size, self.step_rows, self.repeats, self.seed = size, step_rows, repeats, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.step_rows) * self.step_rows * self.repeats

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        for start in range(0, self.size, self.step_rows):
            rows = order[start : start + self.step_rows]
            rows += (order * self.step_rows)[: self.step_rows - len(rows)]
            for _ in range(self.repeats):
                yield from rows


class Window:
    """What the method measures itself between two logs: the longest completion and the seconds of each part."""

    def __init__(self) -> None:
        self.steps, self.longest = 0, 0
        self.seconds = {"generation": 0.0, "rewards": 0.0, "training": 0.0}
        self.prepared_at: float | None = None  # when the last step's batches were ready: training starts

    def close_training(self) -> None:
        if self.prepared_at is not None:
            self.seconds["training"] += time.perf_counter() - self.prepared_at
            self.prepared_at = None

    def values(self) -> dict[str, float]:
        self.close_training()
        if not self.steps:
            return {}
        found = {"completions/max_length": float(self.longest),
                 **{f"seconds/{part}": s / self.steps for part, s in self.seconds.items()}}
        self.__init__()
        return found


class GRPO(Method):
    name = "grpo"
    rows = PROMPTS
    item = "completion"
    reference = True  # a starting run's adapter is loaded again, frozen, for the KL term
    # The best adapter has the highest held-out reward: the loss measures nothing of quality (a group's
    # advantages sum to zero, so it hovers about 0 with either sign, whatever the answers are worth).
    best = ("eval_reward", True)

    def __init__(self, settings: GRPOConfig, rewards: list[RewardFunction], seed: int, logging_steps: int,
                 output_dir: Path | None):
        self.settings, self.rewards, self.seed = settings, rewards, seed
        self.logging_steps, self.output_dir = logging_steps, output_dir
        self.epsilon_high = settings.epsilon_high if settings.epsilon_high is not None else settings.epsilon
        weights = settings.reward_weights or [1.0] * len(rewards)
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.tokenizer, self.stop_ids = None, frozenset()
        self.window = Window()
        self.kept: tuple[int, list[Batch]] | None = None  # (first step, batches) reused while iterations last
        self.eval_batches = 0
        self.shares_prompts = False  # whether the model computes a prompt's rows as one (set each step)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> GRPO:
        rewards = load_rewards(cfg.grpo.rewards, cfg.grpo.max_completion_length)
        return cls(cfg.grpo, rewards, cfg.seed, cfg.train.logging_steps, cfg.output_dir)

    @classmethod
    def check(cls, cfg):
        if cfg.train.packing or cfg.train.group_by_length:
            raise ConfigError("method: grpo samples its answers in groups per prompt: train.packing and "
                              "train.group_by_length do not apply; set them to false")

    def use_text(self, tokenizer, template):
        self.tokenizer, self.stop_ids = tokenizer, template.end_token_ids

    def collator(self, pad_token_id, packing):
        return lambda prompts: {"prompts": list(prompts)}

    def train_sampler(self, size, step_rows, seed):
        return RepeatedSteps(size, step_rows, self.settings.iterations, seed) if self.settings.iterations > 1 else None

    def split(self, inputs, budget, packed):
        # A prompt's rows stay together, in order, where a pass computes them as one row (prompt once).
        if self.shares_prompts:
            return split_runs(inputs, budget, self.settings.num_generations)
        return split_rows(inputs, budget)

    def item_count(self, batch):
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return items(self.settings.loss_type, batch["labels"].shape[0], tokens, self.settings.max_completion_length)

    # --- completions reused over iterations travel with the checkpoints
    def save_state(self, folder, process):
        if self.kept is not None:
            torch.save({"first_step": self.kept[0], "batches": self.kept[1]}, folder / f"grpo-batches-{process}.pt")

    def load_state(self, folder, process):
        path = folder / f"grpo-batches-{process}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            self.kept = (saved["first_step"], saved["batches"])

    # --- one step's completions, scores and advantages
    def prepare_step(self, step, model, batches):
        self.window.close_training()
        self.shares_prompts = shared_prompt.shares(step.unwrap(model))
        global_step = step.state.global_step
        k = self.settings.iterations
        if self.kept is not None and self.kept[0] <= global_step < self.kept[0] + k:
            prepared = self.kept[1]  # the same prompts again (RepeatedSteps): the same completions
        else:
            if global_step % k:  # a checkpoint written before GRPO kept its completions in them
                log.warning("step %d: resumed inside a cycle of grpo.iterations=%d from a checkpoint without its "
                            "completions; they are sampled again, from the current policy", global_step + 1, k)
            seed = sampling_seed(self.seed, global_step, getattr(step.args, "process_index", 0))
            prepared = self.prepare(step, model, [b["prompts"] for b in batches], seed, global_step + 1)
            self.kept = (global_step, prepared) if k > 1 else None
        self.window.steps += 1
        self.window.prepared_at = time.perf_counter()
        return prepared

    def prepare(self, step: Step, model: torch.nn.Module, groups: list[list[EncodedPrompt]], seed: int,
                logged_step: int | None) -> list[Batch]:
        """Sample, score and weigh the completions of a step's prompts (one list per micro-batch)."""
        prompts = [p for group in groups for p in group]
        started = time.perf_counter()
        answers = self.sample(step, model, prompts, seed)
        scored_at = time.perf_counter()
        scores = self.score(prompts, answers)
        g = self.settings.num_generations
        found = group_advantages(scores, self.weights, g, self.settings.scale_rewards)
        if logged_step is not None:  # a training step's: evaluation's sampling is not a step's time
            self.window.seconds["generation"] += scored_at - started
            self.window.seconds["rewards"] += time.perf_counter() - scored_at
            self.window.longest = max([self.window.longest, *(len(a.token_ids) for a in answers)])
        if logged_step is not None and self.logging_steps and logged_step % self.logging_steps == 0:
            self.write_sample(step, logged_step, prompts, answers, scores, found)
        batches, start = [], 0
        for group in groups:
            rows = slice(start * g, (start + len(group)) * g)
            batch = self.batch(group, answers[rows], scores[rows], found.advantages[rows], found.flat_groups[
                start:start + len(group)])
            batches.append(self.add_logps(step, model, batch))
            start += len(group)
        return batches

    def sample(self, step: Step, model: torch.nn.Module, prompts: list[EncodedPrompt], seed: int) -> list[Answer]:
        """``num_generations`` completions of each prompt, in order, sampled by the policy in eval mode."""
        s = self.settings
        policy = step.unwrap(model)
        ids = [p.input_ids for p in prompts for _ in range(s.num_generations)]
        gen = GenerationConfig(max_new_tokens=s.max_completion_length, temperature=s.temperature, top_p=s.top_p,
                               top_k=s.top_k, min_p=s.min_p, seed=seed, batch_size=len(ids))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        was_training = policy.training
        policy.eval()  # no dropout: the completions are the policy's own
        try:
            with torch.random.fork_rng(devices=devices), step.generating():  # the run's RNG is left as it was
                return generate_ids(policy, self.tokenizer, ids, gen, self.stop_ids, group=s.num_generations)
        finally:
            policy.train(was_training)

    def score(self, prompts: list[EncodedPrompt], answers: list[Answer]) -> torch.Tensor:
        g = self.settings.num_generations
        rows = [p.row for p in prompts for _ in range(g)]
        names = sorted({key for row in rows for key in row.columns})
        columns = {name: [row.columns.get(name) for row in rows] for name in names}
        columns["completion_ids"] = [a.token_ids for a in answers]
        columns["truncated"] = [a.finish_reason == "length" for a in answers]
        return score(self.rewards, [r.text for r in rows], [a.text for a in answers], columns,
                     [r.origin for r in rows])

    def batch(self, prompts: list[EncodedPrompt], answers: list[Answer], scores: torch.Tensor,
              advantages: torch.Tensor, flat: torch.Tensor) -> Batch:
        """Rows of prompt + completion, the completion's tokens (end of turn included) as labels."""
        g = self.settings.num_generations
        encoded = []
        for k, answer in enumerate(answers):
            prompt = prompts[k // g].input_ids
            masked = self.settings.mask_truncated and answer.finish_reason == "length"
            labels = [IGNORE_INDEX] * len(answer.token_ids) if masked else list(answer.token_ids)
            encoded.append(Encoded(prompt + answer.token_ids, [IGNORE_INDEX] * len(prompt) + labels))
        batch = PadCollator(self.tokenizer.pad_token_id)(encoded)
        column = lambda values: torch.as_tensor(values, dtype=torch.float32).reshape(-1, 1)  # noqa: E731
        total = (scores * self.weights).nansum(dim=1).masked_fill(torch.isnan(scores).all(dim=1), float("nan"))
        batch["advantages"] = column(advantages)
        batch[STAT + "reward"] = column(total)
        for j, reward in enumerate(self.rewards):
            batch[f"{STAT}rewards/{reward.name}/mean"] = column(scores[:, j])
        batch[STAT + "completions/mean_length"] = column([len(a.token_ids) for a in answers])
        batch[STAT + "completions/clipped_ratio"] = column([a.finish_reason == "length" for a in answers])
        batch[STAT + "frac_reward_zero_std"] = column(flat.float().repeat_interleave(g))
        return batch

    def add_logps(self, step: Step, model: torch.nn.Module, batch: Batch) -> Batch:
        """The sampling policy's log-probs (for iterations > 1) and the reference's (beta > 0), per label position."""
        policy = step.unwrap(model)
        wanted = []
        if self.settings.iterations > 1:
            wanted.append(("old_logps", None))
        if self.settings.beta:
            wanted.append(("ref_logps", reference_model))
        for key, switch in wanted:
            was_training = policy.training
            policy.eval()
            try:
                with torch.no_grad():
                    if switch is None:
                        found, keep = self.logps(step, policy, batch)
                    else:
                        with switch(policy) as reference:
                            found, keep = self.logps(step, reference, batch)
            finally:
                policy.train(was_training)
            aligned = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
            aligned[:, 1:][keep.cpu()] = found.float().cpu()
            batch[key] = aligned
        return batch

    def logps(self, step: Step, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
        return shared_prompt.prompt_shared_logps(model, inputs, step.loss_chunk_size, step.selective_loss,
                                                 step.autocast(), self.settings.temperature,
                                                 self.tokenizer.pad_token_id)

    def write_sample(self, step: Step, logged_step: int, prompts: list[EncodedPrompt], answers: list[Answer],
                     scores: torch.Tensor, found) -> None:
        """A few prompts' groups with their rewards, to read what the model is learning: completions/step-N.jsonl."""
        if self.output_dir is None or not self.settings.log_completions or not step.is_world_process_zero():
            return
        g = self.settings.num_generations
        lines = []
        for k in range(min(len(answers), self.settings.log_completions * g)):
            row = prompts[k // g].row
            rewards = {r.name: None if math.isnan(v) else v for r, v in zip(self.rewards, scores[k].tolist())}
            lines.append(json.dumps({
                "step": logged_step, "source": row.origin, "prompt": row.text, "completion": answers[k].text,
                "rewards": rewards, "reward": None if math.isnan(found.rewards[k]) else float(found.rewards[k]),
                "advantage": float(found.advantages[k]), "truncated": answers[k].finish_reason == "length",
            }, ensure_ascii=False))
        path = RunFolder(Path(self.output_dir)).completions / f"step-{logged_step:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with writing("a sample of completions", path):
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # --- the loss
    def loss(self, step, model, inputs, num_items):
        if "advantages" not in inputs:  # an evaluation batch: sampled and scored here, at the run's seed
            self.eval_batches += 1
            prepared = self.prepare(step, model, [inputs["prompts"]], sampling_seed(self.seed, -self.eval_batches, 0),
                                    None)[0]
            device = next(model.parameters()).device
            inputs = {key: value.to(device) for key, value in prepared.items()}
        s = self.settings
        # A prompt's completions as one row, the prompt computed once (model/shared_prompt.py)
        logps, keep = shared_prompt.prompt_shared_logps(model, inputs, step.loss_chunk_size, step.selective_loss,
                                                        step.autocast(), s.temperature, self.tokenizer.pad_token_id)
        rows = keep.nonzero()[:, 0]
        old = inputs["old_logps"][:, 1:][keep] if "old_logps" in inputs else logps.detach()
        ref = inputs["ref_logps"][:, 1:][keep] if s.beta else None
        found = token_losses(logps, old, inputs["advantages"][:, 0][rows], ref, s.epsilon, self.epsilon_high, s.beta)
        sums = completion_sums(found.loss, rows, keep.shape[0], s.loss_type)
        if num_items is None:
            num_items = items(s.loss_type, keep.shape[0], int(keep.sum()), s.max_completion_length)
        values = {key[len(STAT):]: value[~torch.isnan(value)] for key, value in inputs.items() if key.startswith(STAT)}
        values["reward_sq"] = values["reward"] ** 2
        for reward in self.rewards:
            values[f"rewards/{reward.name}/sq"] = values[f"rewards/{reward.name}/mean"] ** 2
        values["clip_ratio/region_mean"] = found.clipped.float()
        if found.kl is not None:
            values["kl"] = found.kl.detach()
        return step_share(sums, num_items), values

    def summarize(self, means):
        found = dict(means)
        for key in [k for k in means if k == "reward_sq" or k.endswith("/sq")]:
            mean_key = "reward" if key == "reward_sq" else key[: -len("sq")] + "mean"
            variance = found.pop(key) - found.get(mean_key, 0.0) ** 2
            found[mean_key[: -len("mean")] + "std" if mean_key != "reward" else "reward_std"] = math.sqrt(
                max(variance, 0.0))
        return {**found, **self.window.values()}
