"""One evaluation from files to reports, shared by ``lorakit eval`` and ``lorakit train`` (eval.at_end, after training)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lorakit.config import DataConfig, EvalConfig, GenerationConfig, RunConfig
from lorakit.data.pair_dataset import PAIRS, rows_to_read
from lorakit.data.pipeline import Rows, read_all
from lorakit.data.samples import SAMPLES
from lorakit.eval import preference
from lorakit.eval.compare import Comparison, EvalError, Scoring, compare
from lorakit.eval.results import write_reports
from lorakit.eval.scorer import UserScorer, load_scorer
from lorakit.infer.session import Session, open_session
from lorakit.run import RunFolder, RunSummary
from lorakit.train.rewards import RewardFunction, load_rewards

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
    reads: Rows = SAMPLES,
    scorer: UserScorer | None = None,
    rewards: list[RewardFunction] | None = None,
) -> Comparison:
    """Read ``files`` as the trainer reads them, score base and tuned, write eval.json and eval.md.

    ``reads``: the rows the run's method reads. Generations are scored against the rows' references
    (a pair's chosen answer, a desirable answer). Files of pairs (a dpo or orpo run's, or any with
    chosen/rejected) also get preference accuracy. ``scorer``: ``settings.scorer`` already loaded.
    ``rewards``: a GRPO run's reward functions, each averaged over the answers as a row of the table.
    """
    if not files:
        raise EvalError("no evaluation data: pass --data FILE or set data.eval")
    if scorer is None and settings.scorer:
        # The scorer loads first: a typo in its name should fail before minutes of generation.
        scorer = load_scorer(settings.scorer)
    kind = rows_to_read(files, data, reads)
    # Eval scores the answer before an unanswered last user turn, which is removed whatever train_on says.
    rows, unusable = read_all(files, data.model_copy(update={"train_on": "all_assistant"}), kind)
    pairs = rows if kind is PAIRS else None
    samples = kind.references(rows)
    if settings.limit is not None and settings.limit < len(samples):
        log.info("eval: scoring the first %d of %d samples (limit)", settings.limit, len(samples))
        samples = samples[: settings.limit]
        pairs = pairs[: settings.limit] if pairs is not None else None
    scoring = Scoring(data.max_length, data.train_on, scorer, settings.examples, rewards or [])
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


def run_rewards(cfg: RunConfig, extra: list[str] | None = None) -> list[RewardFunction] | None:
    """A run's reward functions (a GRPO run's grpo.rewards) and ``extra`` ones (``lorakit eval --reward``,
    which may score any run or model), to score its answers with; None when there are none."""
    specs = list(dict.fromkeys([*cfg.grpo.rewards, *(extra or [])]))  # each once, the run's first
    return load_rewards(specs, cfg.grpo.max_completion_length) if specs else None


def evaluate_at_end(run_dir: Path, summary: RunSummary, reads: Rows, show_progress: bool = True,
                    scorer: UserScorer | None = None) -> Comparison:
    """eval.at_end: score the finished run as ``lorakit eval RUN`` does, and add the table to its ``summary``."""
    run = RunFolder(run_dir)
    cfg = run.read_config()
    session = open_session(str(run_dir), cfg.model.cache_dir)
    result = evaluate(session, cfg.data.eval, cfg.data, cfg.generation, cfg.eval, run_dir, show_progress=show_progress,
                      reads=reads, scorer=scorer, rewards=run_rewards(cfg))
    summary.eval = {row.key: {"base": row.base, "tuned": row.tuned} for row in result.metrics}
    run.write_summary(summary)
    return result
