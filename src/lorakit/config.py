"""The one typed configuration of a lorakit run.

It is built once, at the CLI, from a YAML file plus ``--set key=value`` overrides.
Each stage then receives only its own section (``cfg.data``, ``cfg.lora`` ...), so a
reader can see from a function's signature what it depends on. Unknown keys are an
error with a suggestion, because a silently ignored typo (``lora.rnak``) is the
classic way a fine-tune runs with settings nobody asked for.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A configuration the user wrote cannot be used; the message says how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field(
        EMBEDDED_MODEL,
        description="'smollm2-135m-instruct' (embedded, no download), a local model folder, "
        "a .gguf file, or a hub name already in the local cache.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights' dtype when loading. LoRA trains fine on fp32 weights on CPU."
    )
    cache_dir: Path = Field(
        Path("~/.cache/lorakit"),
        description="Where converted GGUF models are cached so the second load takes a second.",
    )

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class DataConfig(_Section):
    train: list[Path] = Field(default_factory=list, description="Training files (JSON or JSONL).")
    eval: list[Path] = Field(default_factory=list, description="Held-out files for eval loss and scoring.")
    format: Literal["auto", "alpaca", "messages"] = Field(
        "auto", description="Sample shape; 'auto' detects it from the columns."
    )
    template: str = Field(
        "auto",
        description="'auto' uses the tokenizer's own chat template (alpaca-style fallback when it "
        "has none); or one of chatml, llama-3, phi-3, alpaca, human-assistant.",
    )
    system_prompt: str | None = Field(None, description="System prompt added to samples that have none.")
    max_length: int = Field(1024, gt=8, description="Longest tokenized sample.")
    truncation: Literal["drop", "cut", "error"] = Field(
        "drop", description="Over max_length: drop the sample (default, answers stay whole), cut it, or stop."
    )
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        "all_assistant", description="Which assistant turns carry loss."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_path_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("train", "eval"):
                if isinstance(values.get(key), (str, Path)):
                    values[key] = [values[key]]
        return values


class LoraConfig(_Section):
    rank: int = Field(16, gt=0, description="Higher: more capacity, more memory.")
    alpha: float = Field(32, gt=0, description="Scale of the update is alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear', a list of module names, or a regex string."
    )


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1: run the epochs.")
    batch_size: int = Field(8, gt=0, description="Samples per forward pass.")
    grad_accum: int = Field(1, gt=0, description="Forward passes per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0)
    warmup: float = Field(0.05, ge=0, description="Warm-up: a fraction of all steps if < 1, else steps.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 where the hardware computes it natively, else fp32."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less memory, ~30% slower.")
    progress_bar: bool = True
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"] = Field(
        "adamw", description="The 8-bit and paged variants need bitsandbytes."
    )
    save_steps: int | None = Field(
        100, gt=0, description="Checkpoint every N steps (None: never); a killed run resumes from the last one."
    )
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept (the best one is kept besides).")
    eval_steps: int | None = Field(
        None, gt=0, description="Eval loss every N steps when there is eval data (None: at each checkpoint)."
    )
    keep_best: bool = Field(True, description="With eval data: the saved adapter is the one with the best eval loss.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without a better eval loss."
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss or gradient: stop naming the step, or skip that optimizer step."
    )
    report_to: list[Literal["tensorboard", "wandb", "swanlab"]] = Field(
        default_factory=list, description="Experiment trackers; wandb and swanlab run in offline mode."
    )
    auto_batch_size: bool = Field(False, description="GPU only: halve batch_size until it fits in memory.")

    @model_validator(mode="after")
    def _eval_fits_checkpoints(self) -> TrainConfig:
        if self.keep_best and self.save_steps and self.eval_steps and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                "so the best adapter is in a checkpoint; or set keep_best: false"
            )
        return self


class GenerationConfig(_Section):
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0: no limit.")
    min_p: float = Field(0.0, ge=0, le=1, description="Drop tokens below min_p x the top probability; 0: off.")
    repetition_penalty: float = Field(1.0, gt=0, description="Above 1 discourages repeating tokens; 1: off.")
    seed: int | None = Field(None, description="Seed for sampling, so a sampled answer can be reproduced.")
    batch_size: int = Field(16, gt=0)
    context_length: int | None = Field(
        None, gt=8, description="Prompt plus answer, in tokens; None: the model's max_position_embeddings."
    )


class ServeConfig(_Section):
    """Settings of ``lorakit serve``, given on its command line (a training config has no use for them)."""

    host: str = Field("127.0.0.1", description="Loopback by default: nothing outside this machine can reach it.")
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="When set, requests need 'Authorization: Bearer <key>'.")
    max_pending: int = Field(
        16, gt=0, description="Requests running or waiting at once; more are refused with 429 rather than queued."
    )


class RunConfig(_Section):
    name: str = "run"
    output_dir: Path | None = Field(None, description="Default: runs/<name>.")
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    def resolved_output_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name


def _suggest(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Walk ``loc`` down the nested models and offer the closest real key."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        cls = field.annotation
    prefix = ".".join(str(p) for p in loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), list(cls.model_fields), n=1, cutoff=0.5)
    if close:
        return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)"
    return f" (known keys: {', '.join(cls.model_fields)})"


def _validate(raw: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                lines.append(f"  unknown key '{key}'{_suggest(RunConfig, tuple(e['loc']))}")
            else:
                lines.append(f"  {key}: {e['msg']}")
        raise ConfigError(f"invalid configuration in {source}:\n" + "\n".join(lines)) from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key=value, e.g. lora.rank=8")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Data files are relative to the config file, so a config folder can be moved whole."""

    def fix(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    cfg.data.train = [fix(p) for p in cfg.data.train]
    cfg.data.eval = [fix(p) for p in cfg.data.eval]
    cfg.model.cache_dir = cfg.model.cache_dir.expanduser()
    name_path = Path(cfg.model.name).expanduser()
    if not name_path.is_absolute() and (base / name_path).exists():
        cfg.model.name = str((base / name_path).resolve())
    if cfg.output_dir is None:
        cfg.output_dir = Path("runs") / cfg.name
    return cfg


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or start from defaults), apply overrides, validate, resolve paths."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings at the top level")
        raw = loaded or {}
        raw.setdefault("name", path.stem)
        base = path.resolve().parent
        source = str(path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return _resolve_paths(_validate(raw, source), base)


def save_config(cfg: RunConfig, path: Path) -> None:
    data = cfg.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def read_saved_config(path: Path) -> RunConfig:
    """Read a config written by :func:`save_config` (paths already resolved)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return _validate(raw, str(path))
