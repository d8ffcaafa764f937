"""One evaluation from files to reports, shared by ``lorakit eval`` and ``lorakit train`` (eval.at_end)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import DataConfig, EvalConfig, GenerationConfig
from lorakit.data.dataset import read_conversations
from lorakit.data.pair_dataset import holds_pairs
from lorakit.data.templates import ChatTemplate
from lorakit.eval import preference
from lorakit.eval.compare import Comparison, Scoring, compare
from lorakit.eval.report import write_reports
from lorakit.eval.scorer import load_scorer
from lorakit.infer.session import Session

log = logging.getLogger(__name__)


def evaluate(
    session: Session,
    files: list[Path],
    data: DataConfig,
    gen: GenerationConfig,
    settings: EvalConfig,
    out_dir: Path,
    console: Console | None = None,
    show_progress: bool = True,
    method: str = "sft",
) -> Comparison:
    """Read ``files`` as the trainer reads them, score base and tuned, write eval.json and eval.md.

    Files of pairs (a dpo or orpo run's, or any with chosen/rejected) also get preference accuracy;
    their generations are scored against the chosen answer.
    """
    if not files:
        raise ValueError("no evaluation data: pass --data FILE or set data.eval")
    # The scorer loads first: a typo in its name should fail before minutes of generation.
    scorer = load_scorer(settings.scorer) if settings.scorer else None
    pairs = None
    if method != "sft" or holds_pairs(files, data):
        pairs, unusable = preference.read_eval_pairs(files, data)
        samples = preference.as_samples(pairs)
    else:
        samples = read_conversations(files, data.format, data.system_prompt, data.columns)
    if settings.limit is not None and settings.limit < len(samples):
        log.info("eval: scoring the first %d of %d samples (limit)", settings.limit, len(samples))
        samples = samples[: settings.limit]
        pairs = pairs[: settings.limit] if pairs is not None else None
    scoring = Scoring(data.max_length, data.train_on, scorer, settings.examples)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True,
                  disable=not show_progress) as progress:
        result = compare(session, samples, gen, scoring, progress)
    if pairs is not None:
        preference.add_preference(result, session, pairs, unusable, data, gen.batch_size)
    result.settings["data"] = [str(f) for f in files]
    result.settings["limit"] = settings.limit
    json_path, md_path = write_reports(out_dir, result)
    log.info("eval: wrote %s and %s", json_path, md_path)
    return result


def evaluate_after_training(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    data: DataConfig,
    gen: GenerationConfig,
    settings: EvalConfig,
    out_dir: Path,
    show_progress: bool = True,
    method: str = "sft",
) -> dict[str, dict[str, float | None]]:
    """Score the model still in memory on the validation split; return the table for summary.json."""
    session = Session(model, tokenizer, template, has_adapter=True)
    result = evaluate(session, data.eval, data, gen, settings, out_dir, show_progress=show_progress, method=method)
    return {row.key: {"base": row.base, "tuned": row.tuned} for row in result.metrics}
