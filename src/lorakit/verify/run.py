"""``lorakit verify``: every check on one run, timed, written to the run's ``verify.json``.

A check that meets a refusal (a template that cannot render a held-out conversation, a GGUF
llama.cpp cannot load) fails with that message rather than stopping the others; a bug still
raises. Checks run in the order a hand-off goes: the adapter, its merge, the exports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.infer.session import open_session
from lorakit.model.setup import training_setup
from lorakit.run import SAVED_ADAPTER, RunFolder, open_run
from lorakit.verify.merge import check_merge
from lorakit.verify.prompt_ids import check_prompt_ids
from lorakit.verify.prompts import held_out
from lorakit.verify.gguf import check_gguf
from lorakit.verify.ollama import check_ollama
from lorakit.verify.server import check_server
from lorakit.verify.report import FAIL, WARN, Check, VerifyReport, read_report, write_report
from lorakit.verify.stops import check_stops
from lorakit.verify.subject import Subject

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 8
CheckFn = Callable[[Subject], Check | list[Check]]


def open_subject(run_dir: Path, data: Sequence[Path] | None = None, limit: int = DEFAULT_LIMIT) -> Subject:
    run = open_run(run_dir, SAVED_ADAPTER)
    cfg = run.read_config()
    held = held_out(cfg, data, limit)
    session = open_session(str(run_dir), cfg.model.cache_dir)
    return Subject(run.path, cfg, held, session, training_setup(cfg.model, cfg.data))


def run_check(name: str, check: CheckFn, subject: Subject) -> list[Check]:
    """One check, timed; a LorakitError inside it is that check's failure, with its message."""
    started = time.perf_counter()
    try:
        found = check(subject)
    except LorakitError as e:
        found = Check(name, FAIL, str(e))
    rows = found if isinstance(found, list) else [found]
    seconds = time.perf_counter() - started
    for row in rows:
        row.seconds = seconds / len(rows)
    log.info("verify: %s took %.1f s", name, seconds)
    return rows


def adapter_checks() -> list[tuple[str, CheckFn]]:
    return [("it stops", check_stops), ("prompt ids", check_prompt_ids), ("merge", check_merge)]


def verify_run(run_dir: Path, data: Sequence[Path] | None = None, limit: int = DEFAULT_LIMIT,
               ggufs: Sequence[Path] | None = None, server: bool = True, exports_only: bool = False,
               progress: Callable[[Check], None] | None = None) -> VerifyReport:
    """Run every check on ``run_dir`` and write ``verify.json`` there; ``progress`` sees each row as it lands.

    ``ggufs``: the GGUFs to check; None means those ``export gguf`` wrote from the run (its exports.json).
    ``exports_only``: just the GGUF and Modelfile rows (``export gguf --verify``); the run's earlier
    rows in verify.json are kept, those of the same name replaced.
    """
    subject = open_subject(run_dir, data, limit)
    report = VerifyReport(str(run_dir), subject.held.source)
    recorded = ggufs is None
    if recorded:
        ggufs = RunFolder(subject.run).exports()
        log.info("verify: the run's exports: %s", ", ".join(map(str, ggufs)) or "none recorded")
    exports = export_checks(ggufs, recorded)
    checks = exports if exports_only else adapter_checks() + exports + (server_checks() if server else [])
    for name, check in checks:
        for row in run_check(name, check, subject):
            report.checks.append(row)
            if progress is not None:
                progress(row)
    earlier = read_report(subject.run) if exports_only else None
    if earlier is not None:
        fresh = {c.name for c in report.checks}
        report.checks = [c for c in earlier.checks if c.name not in fresh] + report.checks
    write_report(subject.run, report)
    return report


def gone(path: Path) -> Check:
    return Check(f"gguf {path.name}", WARN, f"{path} was exported from this run (exports.json) but is no longer "
                 "there: nothing to check; export it again, or pass the GGUFs to check with --gguf")


def export_checks(ggufs: Sequence[Path], recorded: bool = False) -> list[tuple[str, CheckFn]]:
    """For each GGUF, llama.cpp's rows and its Modelfile's; with none, the Modelfile export would write.

    ``recorded``: the GGUFs are the run's export record, where one since deleted is a warning, not a check.
    """
    if not ggufs:
        return [("ollama template", lambda s: check_ollama(s, None))]
    checks: list[tuple[str, CheckFn]] = []
    for path in ggufs:
        if recorded and not path.is_file():
            checks.append((f"gguf {path.name}", lambda s, p=path: gone(p)))
            continue
        checks.append((f"gguf {path.name}", lambda s, p=path: check_gguf(s, p)))
        checks.append((f"ollama {path.stem}.Modelfile", lambda s, p=path: check_ollama(s, p)))
    return checks


def server_checks() -> list[tuple[str, CheckFn]]:
    return [("server", check_server)]
