"""A run folder: what ``lorakit train`` writes, and the one module that knows its layout.

Every other stage asks this module where a run keeps its config, adapter, tokenizer,
metrics, checkpoints, summary and evaluation, whether a folder is a run at all, and reads
them back through it (``summary.json`` as a typed :class:`RunSummary`). Every command that
takes a run opens it with :func:`open_run` (or :func:`run_or_model` where a model will do too),
so a folder that is not one is refused alike everywhere, as a :class:`NotARunError`::

    runs/demo/
      lorakit.yaml                 the resolved config (written first: a killed run has it)
      adapter_config.json          the adapter, in peft's layout
      adapter_model.safetensors
      tokenizer.json ...           the tokenizer, carrying the template it was trained with
      metrics.jsonl, loss.png      one line per logging step and evaluation; the curves
      checkpoints/                 resumable checkpoints, checkpoint-N (named in train/checkpoints.py)
      summary.json                 RunSummary: written last, so it means "finished"
      eval.json, eval.md           lorakit eval (or eval.at_end)
      verify.json                  lorakit verify: each hand-off check's verdict
      exports.json                 the GGUFs lorakit export gguf wrote from the run: what verify checks
      .lorakit.lock                held while a run trains (train/run_folder.py)

``RUN_WRITES`` names everything a run may put at the top of its folder: ``--overwrite``
deletes those and nothing else, so a file of the user's in the folder stops it instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lorakit.config import RunConfig
from lorakit.config_file import read_saved_config, save_config
from lorakit.errors import LorakitError
from lorakit.outputs import write_text

CONFIG = "lorakit.yaml"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
CHECKPOINTS = "checkpoints"
COMPLETIONS = "completions"  # GRPO's samples of completions, a file per logging step
SUMMARY = "summary.json"
EVAL_JSON = "eval.json"
EVAL_MARKDOWN = "eval.md"
VERIFY_JSON = "verify.json"
EXPORTS_JSON = "exports.json"
LOCK = ".lorakit.lock"
# What a run writes; any of them means the folder holds a run (finished, killed or failed).
RUN_FILES = (CONFIG, METRICS, SUMMARY, ADAPTER_WEIGHTS, CHECKPOINTS)
MODEL_CARD = "README.md"  # peft writes one beside the adapter
PLOT_PARTIAL = "loss.tmp.png"  # the plot is written under this name and renamed (train/plot.py)
TRACKER_FOLDERS = ("tensorboard", "wandb", "swanlab")  # one per train.report_to (train/tracking.py)
# What tokenizer.save_pretrained may write: the fast tokenizer's files and the vocabularies of
# the tokenizers that keep their own (sentencepiece, BPE and WordPiece files), and chat templates.
TOKENIZER_FILES = (
    TOKENIZER_CONFIG, "tokenizer.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "additional_chat_templates", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
    "spiece.model", "sentencepiece.bpe.model",
)
# Every name a run (and `lorakit eval` and `verify` on it) may write at the top of its folder.
RUN_WRITES = frozenset({
    CONFIG, ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CARD, METRICS, PLOT, PLOT_PARTIAL, CHECKPOINTS, COMPLETIONS, SUMMARY,
    EVAL_JSON, EVAL_MARKDOWN, VERIFY_JSON, EXPORTS_JSON, LOCK, *TRACKER_FOLDERS, *TOKENIZER_FILES,
})


SAVED_ADAPTER = (CONFIG, ADAPTER_CONFIG)  # a run that saved its adapter: what merge, export and model.adapter take
MODEL_CONFIG = "config.json"  # a transformers model folder's; a run folder has none
TRAINED_BY = "a folder written by `lorakit train`"


class NotARunError(LorakitError, FileNotFoundError):
    """A folder given as a run is not one, or lacks what the command needs; the message says what to give."""


@dataclass
class RunSummary:
    """What a finished run reports (``summary.json``); a worker rank of a multi-process run fills the first three."""

    steps: int
    train_loss: float | None
    eval_loss: float | None
    base_model: str | None = None
    method: str = "sft"  # the config's method: sft, dpo, orpo, simpo, kto
    template: str | None = None
    precision: str | None = None
    weights_dtype: str | None = None  # the frozen base's dtype as trained ("float32", "bfloat16")
    eval_perplexity: float | None = None
    best_checkpoint: str | None = None
    skipped_steps: list[int] = field(default_factory=list)
    resumed_from: str | None = None
    train_seconds: float | None = None
    tokens_seen: int = 0
    loss_tokens_seen: int = 0
    tokens_per_second: float | None = None  # this session's (since its start or resume)
    loss_tokens_per_second: float | None = None
    peak_rss_bytes: int | None = None
    cuda_peak_reserved_bytes: int | None = None
    cuda_training_reserved_bytes: int | None = None
    trainable_parameters: int = 0
    total_parameters: int = 0
    memory_footprint_bytes: int = 0
    data: list[dict[str, Any]] = field(default_factory=list)  # one DataReport.as_dict() per split
    compiled_from_step: int | None = None  # train.compile: steps after this one ran compiled (None: none did)
    compile_seconds: float | None = None  # what the compile added to the first compiled step
    compile_note: str = ""  # why the layers were compiled or not
    eval: dict[str, dict[str, float | None]] | None = None  # eval.at_end: metric -> {base, tuned}
    plan: dict[str, Any] | None = None  # train/plan.py: what each "auto" came to, {"value", "why"} per setting

    def __getitem__(self, key: str) -> Any:
        """``summary["steps"]``: read by the names summary.json uses, as code written against the file does."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        if raw["eval"] is None:
            del raw["eval"]  # present only when the run evaluated at its end
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSummary:
        """Keys this version does not know (or an older summary lacks) are left out or defaulted."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        return cls(**{"steps": 0, "train_loss": None, "eval_loss": None, **values})


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (none when it is not there yet)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


@dataclass(frozen=True)
class RunFolder:
    path: Path

    # Where each file of the run lives (see the module docstring for what each holds).
    config_file = property(lambda self: self.path / CONFIG)
    adapter_config = property(lambda self: self.path / ADAPTER_CONFIG)
    adapter_weights = property(lambda self: self.path / ADAPTER_WEIGHTS)
    metrics_file = property(lambda self: self.path / METRICS)
    plot_file = property(lambda self: self.path / PLOT)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    completions = property(lambda self: self.path / COMPLETIONS)
    summary_file = property(lambda self: self.path / SUMMARY)
    lock_file = property(lambda self: self.path / LOCK)

    def is_run(self) -> bool:
        """A run folder is one ``lorakit train`` wrote its config into."""
        return self.config_file.is_file()

    def has_adapter(self) -> bool:
        return self.adapter_config.is_file()

    def has_tokenizer(self) -> bool:
        return (self.path / TOKENIZER_CONFIG).is_file()

    def is_finished(self) -> bool:
        return self.summary_file.is_file()

    def others(self) -> list[Path]:
        """What is in the folder that no run writes (the user's own files), sorted by name."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name not in RUN_WRITES)

    def read_config(self) -> RunConfig:
        return read_saved_config(open_run(self.path).config_file)

    def read_config_as_saved(self) -> dict[str, Any]:
        """The config as the run wrote it, not validated: what a resume compares key by key."""
        return yaml.safe_load(open_run(self.path).config_file.read_text(encoding="utf-8")) or {}

    def write_config(self, cfg: RunConfig) -> None:
        save_config(cfg, self.config_file)

    def read_summary(self) -> RunSummary | None:
        """The summary of a finished run; None while it runs, or when it stopped before the end."""
        if not self.is_finished():
            return None
        return RunSummary.from_dict(json.loads(self.summary_file.read_text(encoding="utf-8")))

    def write_summary(self, summary: RunSummary) -> None:
        # whole or not at all: summary.json's presence means the run finished
        write_text(self.summary_file, json.dumps(summary.as_dict(), indent=2), "the run summary")

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics_file)

    def exports(self) -> list[Path]:
        """The GGUFs ``export gguf`` wrote from this run, oldest first; a file since deleted is still listed."""
        path = self.path / EXPORTS_JSON
        if not path.is_file():
            return []
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # a damaged record only means verify checks no GGUF unless given one
        return [Path(row["gguf"]) for row in rows if isinstance(row, dict) and isinstance(row.get("gguf"), str)]

    def record_export(self, gguf: Path) -> None:
        """Note a GGUF written from this run (an absolute path, once), so ``verify RUN`` finds it without --gguf."""
        where = gguf.resolve()
        kept = [p for p in self.exports() if p != where]
        rows = [{"gguf": str(p)} for p in [*kept, where]]
        write_text(self.path / EXPORTS_JSON, json.dumps(rows, indent=2), "the run's export record")


def of_checkpoint(checkpoint: Path) -> RunFolder:
    """The run a checkpoint folder belongs to (it holds the config the checkpoint was trained with)."""
    return RunFolder(checkpoint.parent.parent)


def _refuse(path: Path, missing: list[str], instead: str) -> NotARunError:
    what = f"no {' or '.join(missing)}" if path.is_dir() else "no such folder"
    if path.is_dir() and missing == [ADAPTER_CONFIG] and (path / CONFIG).is_file():
        what += ": the run did not finish saving its adapter"
    return NotARunError(f"{path} is not a lorakit run folder ({what}); give {instead}")


def open_run(target: str | Path, needs: tuple[str, ...] = (CONFIG,), instead: str = TRAINED_BY) -> RunFolder:
    """``target`` as a run folder holding the files ``needs`` names; refused, saying what is missing, when not.

    ``needs``: the config (any run, finished or not); with ``ADAPTER_CONFIG`` a run that saved its
    adapter; ``ADAPTER_CONFIG`` alone also takes an adapter folder peft saved. ``instead``: what to give.
    """
    run = RunFolder(Path(target))
    missing = [name for name in needs if not (run.path / name).is_file()]
    if missing:
        raise _refuse(run.path, missing, instead)
    return run


def run_or_model(target: str | Path, needs: tuple[str, ...] = (CONFIG,)) -> RunFolder | None:
    """The run ``target`` names (holding what ``needs`` names), or None where it names a model instead.

    A model is a transformers folder, a file or a name that is no folder (a hub id, the embedded
    model), for the model loader to resolve; a folder that is neither a run nor a model is refused.
    """
    path = Path(target)
    if (path / CONFIG).is_file():
        return open_run(path, needs)
    if path.is_dir() and not (path / MODEL_CONFIG).is_file():
        raise _refuse(path, [CONFIG, MODEL_CONFIG], f"{TRAINED_BY}, a transformers model folder or a hub id")
    return None
