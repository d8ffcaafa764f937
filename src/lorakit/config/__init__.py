"""The one typed configuration of a lorakit run.

It is built once, at the CLI, from a YAML file plus ``--set key=value`` overrides.
Each stage then receives only its own section (``cfg.data``, ``cfg.lora`` ...), so a
reader can see from a function's signature what it depends on. Unknown keys are an
error with a suggestion, because a silently ignored typo (``lora.rnak``) is the
classic way a fine-tune runs with settings nobody asked for.

This package is the schema alone: the train section is in ``train.py``, what every section
shares in ``section.py``. Reading a YAML file and ``--set`` into it is ``lorakit.config_file``'s.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, model_validator

from lorakit.config.grpo import GRPOConfig
from lorakit.config.section import EXPAND_HOME, RESUMABLE, Section, resumable_keys
from lorakit.config.train import TrainConfig
from lorakit.errors import LorakitError

EMBEDDED_MODEL = "smollm2-135m-instruct"
# A data.template ending so is the user's own Jinja file (a path, relative to the config).
TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")
# numpy's generators (seeded by transformers' set_seed) take no wider seed: a larger one
# passed validation and failed only after the data and the model had loaded.
SEED_MAX = 2**32 - 1


class ConfigError(LorakitError, ValueError):
    """A configuration the user wrote cannot be used; the message says how to fix it."""


class QuantizationConfig(Section):
    """Load the base quantized through bitsandbytes (QLoRA): LoRA trains on top of frozen 4/8-bit weights."""

    bits: Literal[4, 8] = Field(4, description="4 (QLoRA) or 8.")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; nf4 suits normally distributed weights.")
    double_quant: bool = Field(True, description="Quantize the 4-bit scales too (saves ~0.4 bits per weight).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the 4-bit weights are dequantized to for each matmul; 'auto' as model.dtype."
    )


class ModelConfig(Section):
    name: str = Field(
        EMBEDDED_MODEL,
        description="'smollm2-135m-instruct' (embedded, no download), a local model folder, a .gguf file, "
        "or a hub id (owner/name): taken from the Hugging Face cache (HF_HUB_CACHE / HF_HOME), else "
        "downloaded once (only the weights, config and tokenizer files).",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit of model.name; None: the default branch (main)."
    )
    download: bool = Field(
        True, json_schema_extra=RESUMABLE,
        description="Download a hub model missing from the cache; false: cache only (air-gapped use).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow a model whose architecture transformers does not know to run the Python code "
        "its repo ships (config.json auto_map). Off: such a model is refused with the reason.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights' dtype when loading. 'auto': bfloat16 (float16 before Ampere) on a GPU; on a CPU "
        "bfloat16 where train.precision's probe measured bf16 faster, else float32 (LoRA's own parameters stay "
        "float32 either way). A dtype the hardware cannot compute is refused with the reason.",
    )
    quantization: QuantizationConfig | None = Field(
        None, description="Quantized loading for QLoRA (needs the 'qlora' extra: bitsandbytes). None: full weights."
    )
    special_tokens: list[str] = Field(
        default_factory=list,
        description="Special tokens to add to the vocabulary; the embeddings grow and are trained and saved.",
    )
    pad_token: str | None = Field(
        None, description="Pad token to use (added as a special token when new); default: the tokenizer's, else EOS."
    )
    adapter: Path | None = Field(
        None, strict=False,
        description="Start from this run's adapter (e.g. runs/sft) instead of a fresh one; it must be on the same "
        "base. For method: dpo it is also the frozen reference. Its own LoRA settings apply, not the lora section. "
        "Relative to where the command runs, as output_dir is.",
    )
    cache_dir: Annotated[Path, EXPAND_HOME] = Field(
        Path("~/.cache/lorakit"), strict=False, json_schema_extra=RESUMABLE,
        description="Where converted GGUF models are cached so the second load takes a second.",
        validate_default=True,  # so the default's ~ is expanded too
    )


class DataSource(Section):
    """One place samples come from; a plain string in the YAML is a source with weight 1."""

    path: str = Field(
        description="A file (.json, .jsonl, .csv, .tsv, .parquet), a glob ('parts/*.jsonl'), a folder "
        "written by datasets' save_to_disk, or a hub dataset ('hub:owner/name', or 'owner/name' when no "
        "such local path exists)."
    )
    weight: float = Field(
        1.0, gt=0, description="Times each record is used: 2 repeats this source twice, 0.5 keeps a seeded half."
    )
    split: str = Field("train", description="Split to read from a hub dataset or a save_to_disk DatasetDict.")
    key: str | None = Field(None, description="For a JSON object holding several lists: the key of the samples.")

    # A source reads as its path wherever a path was expected before sources had weights.
    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path


class DataConfig(Section):
    train: list[DataSource] = Field(
        default_factory=list, description="Training sources: paths, globs, hub names, or {path, weight}."
    )
    eval: list[DataSource] = Field(default_factory=list, description="Held-out sources for eval loss and scoring.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this seeded fraction of each training source for eval instead."
    )
    shuffle: bool = Field(True, description="Shuffle the samples (seeded) before holding out and training.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the shuffle, held-out choice, fractional weights.")
    format: Literal[
        "auto", "alpaca", "dolly", "prompt_completion", "text", "messages", "sharegpt", "preference"
    ] = Field(
        "auto", description="Sample shape; 'auto' detects it from each source's columns ('preference': pairs of "
        "answers, for methods dpo, orpo, simpo and kto)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Read a shape's field from another column: {prompt: sentence, completion: translation}.",
    )
    template: str = Field(
        "auto",
        description="'auto' uses the tokenizer's own chat template (alpaca-style fallback when it "
        "has none); one of chatml, llama-3, phi-3, alpaca, human-assistant; or a .jinja file.",
    )
    system_prompt: str | None = Field(None, description="System prompt added to samples that have none.")
    think: Literal["keep", "strip_empty"] = Field(
        "keep",
        description="Think blocks (Qwen3-style templates): 'keep' trains the text exactly as the template "
        "renders it, an empty <think></think> before answers included; 'strip_empty' removes empty think "
        "blocks from every rendering (training and the prompts of chat, generate, serve), so the model "
        "learns to answer directly. Non-empty reasoning is kept either way.",
    )
    max_length: int = Field(1024, gt=8, description="Longest tokenized sample.")
    truncation: Literal["drop", "cut", "error"] = Field(
        "drop", description="Over max_length: drop the sample (default, answers stay whole), cut it, or stop."
    )
    train_on: Literal["all_assistant", "last_assistant", "everything"] = Field(
        "all_assistant", description="Which tokens carry loss: every answer, the last answer, or all tokens."
    )
    skip_bad_records: bool = Field(
        False, description="Skip malformed records (counted and reported) instead of stopping at the first."
    )
    hub_download: bool = Field(
        True, json_schema_extra=RESUMABLE,
        description="Download a hub dataset missing from the local cache; false: use the cache only.",
    )
    hub_cache: Path | None = Field(
        None, strict=False, description="Hugging Face hub cache to read from (default: HF's own)."
    )
    cache_dir: Annotated[Path | None, EXPAND_HOME] = Field(
        Path("~/.cache/lorakit/tokens"), strict=False, json_schema_extra=RESUMABLE,
        description="Encoded samples are kept here, keyed on tokenizer, template and settings, so the next "
        "run over the same data skips tokenizing; null: no cache.",
        validate_default=True,
    )
    num_proc: int = Field(
        0, ge=0, json_schema_extra=RESUMABLE,
        description="Processes that tokenize; 0: one per core when there are thousands of samples.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_source_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("train", "eval"):
                value = values.get(key)
                if isinstance(value, (str, Path, dict)):
                    value = [value]
                if isinstance(value, list):
                    values[key] = [{"path": str(v)} if isinstance(v, (str, Path)) else v for v in value]
        return values

    @model_validator(mode="after")
    def _one_way_to_hold_out(self) -> "DataConfig":
        if self.val_fraction and self.eval:
            raise ValueError("set data.eval (held-out files) or data.val_fraction, not both")
        if any(s.weight != 1 for s in self.eval):
            raise ValueError("source weights mix training data; give data.eval sources without a weight")
        return self


class LoraConfig(Section):
    rank: int = Field(16, gt=0, description="Higher: more capacity, more memory.")
    alpha: float = Field(32, gt=0, description="Scale of the update is alpha / rank.")
    dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Dropout on the LoRA path while training. 0 by default, as in peft, LLaMA-Factory and unsloth: "
        "on a CPU the masks' random numbers took a third of a step (1.23 s against 1.80 s a pass at 0.05, measured), and dropout 0 "
        "lets train.fused_lora fuse each layer.",
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="'all-linear', 'attention' or 'attention+mlp' (named per model family: lorakit models), "
        "a list of module names, or a regex matched against full module names "
        r"(e.g. '.*layers\.(1|1[0-9])\.self_attn\.(q|v)_proj' trains layers 1 and 10-19 only).",
    )
    layers: list[int] | None = Field(
        None, description="Only these layer indices get adapters (needs target_modules as a list or all-linear)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale alpha/sqrt(rank), not alpha/rank.")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output as well as the LoRA direction.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train alongside.")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head; "
        "'embeddings' means this model's input and output embeddings, whatever their names). "
        "Added automatically when model.special_tokens or a new pad token grow the vocabulary.",
    )


class GenerationConfig(Section):
    max_new_tokens: int = Field(256, gt=0, description="Longest answer, in tokens.")
    temperature: float = Field(0.0, ge=0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the likeliest tokens up to this mass.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0: no limit.")
    min_p: float = Field(0.0, ge=0, le=1, description="Drop tokens below min_p x the top probability; 0: off.")
    repetition_penalty: float = Field(1.0, gt=0, description="Above 1 discourages repeating tokens; 1: off.")
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed for sampling, so a sampled answer can be reproduced."
    )
    batch_size: int = Field(16, gt=0, description="Prompts answered per forward pass (left-padded).")
    context_length: int | None = Field(
        None, gt=8, description="Prompt plus answer, in tokens; default: the model's max_position_embeddings."
    )


class EvalConfig(Section):
    at_end: bool = Field(
        False, description="After training, score base against tuned on data.eval (writes eval.json, eval.md)."
    )
    limit: int | None = Field(None, gt=0, description="Score only the first N held-out samples; null: all.")
    examples: int = Field(3, ge=0, description="How many of the samples whose answer changed most to show.")
    scorer: str | None = Field(
        None,
        description="Your own per-sample score, averaged: 'file.py:function' (relative to this config) or "
        "'package.module:function', called as fn(prediction, reference) or fn(prediction, reference, sample) "
        "and returning a number or a bool.",
    )


class PreferenceConfig(Section):
    """How methods dpo, orpo and kto weigh the answers to learn against those to unlearn."""

    beta: float = Field(0.1, gt=0, description="DPO and KTO: how far the tuned model may move from the reference; "
                        "higher: closer to it.")
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="DPO loss: sigmoid (the DPO paper's) or ipo (squared distance to 1/(2 beta), on "
        "per-token mean log-probs).",
    )
    orpo_lambda: float = Field(
        0.1, gt=0, validation_alias=AliasChoices("lambda", "orpo_lambda"),
        description="ORPO (written 'lambda'): weight of the odds-ratio term beside the SFT loss on the chosen answer.",
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="KTO: weight of the desirable answers' loss. With more desirable than undesirable "
        "answers, lower it (or raise undesirable_weight) so the two kinds weigh about the same in all.",
    )
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable answers' loss.")


class SimPOConfig(Section):
    """How method simpo compares the chosen answer with the rejected one (no reference model)."""

    beta: float = Field(2.0, gt=0, description="Scale of the reward, beta x the answer's per-token mean log-prob "
                        "(the paper's 2.0 for base models).")
    gamma: float = Field(0.5, ge=0, description="The margin, in reward units, by which the chosen answer's reward "
                         "must beat the rejected one's (as TRL's simpo_gamma; the paper's repository sets "
                         "gamma/beta instead).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="The chance that a pair's label is wrong (0: "
                                   "trust every pair).")


class RunConfig(Section):
    name: str = Field(
        "run", json_schema_extra=RESUMABLE, description="The run's name; default: the config file's stem."
    )
    output_dir: Path | None = Field(
        None, strict=False, json_schema_extra=RESUMABLE, description="Default: runs/<name>; always set once validated."
    )
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the model's initialisation and the training order.")
    method: Literal["sft", "dpo", "orpo", "simpo", "kto", "grpo"] = Field(
        "sft", description="sft: learn the answers; dpo, orpo, simpo: learn which of two answers is better (pairs "
        "data); kto: learn from answers labelled desirable or undesirable (or pairs, split); grpo: learn from "
        "reward functions' scores of sampled answers (prompts).",
    )
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    simpo: SimPOConfig = Field(default_factory=SimPOConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig, json_schema_extra=RESUMABLE)
    eval: EvalConfig = Field(default_factory=EvalConfig, json_schema_extra=RESUMABLE)

    @model_validator(mode="after")
    def _eval_at_end_needs_data(self) -> RunConfig:
        # Checked here, not after training, so a missing file list costs no training time.
        if self.eval.at_end and not self.data.eval:
            raise ValueError("eval.at_end needs held-out samples: set data.eval to one or more files")
        return self

    @model_validator(mode="after")
    def _output_dir_from_name(self) -> RunConfig:
        # Fixed once, here, so every reader of cfg.output_dir (and the saved lorakit.yaml) sees the same folder.
        if self.output_dir is None:
            self.output_dir = Path("runs") / self.name
        return self


@functools.cache
def resumable() -> tuple[str, ...]:
    """The dotted keys a resumed run may change (``train.max_steps``, ``generation`` ...), as marked above."""
    return tuple(resumable_keys(RunConfig))
