"""Hydra callbacks (registered in conf/config.yaml under ``hydra.callbacks``).

:class:`ReportCallback` builds the sweep's report at the end of every multirun, named or ad hoc,
from the records in ``hydra.sweep.dir`` (the same :func:`csp_ablate.report.build_report` as
``python -m csp_ablate.report``), then logs one W&B ``report`` run when the sweep logged to W&B.
It runs in the launching process, after every job, whatever the launcher (basic, joblib).

It also guards the dirs (:mod:`csp_ablate.lock`): a multirun holds its sweep dir's lock and a
single run its run dir's lock from before Hydra writes anything there until the end, so a second
launch into a busy dir is refused at once, naming the holder. Hydra swallows exceptions raised
by callbacks (it only warns), so a refusal exits with ``SystemExit(2)``. Whether the report
failed is kept in :data:`REPORT_FAILED` for the exit code (:mod:`csp_ablate.cli`).
Importing this module is cheap: Hydra instantiates callbacks before ``--help`` is printed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("csp_ablate")
#: ``{"failed": bool}`` after a multirun's report, read by :func:`csp_ablate.cli.run`.
REPORT_FAILED: dict[str, bool] = {}
_LOCKS: dict[str, Any] = {}


def _is_rank_zero() -> bool:
    """DDP ranks > 0 are relaunched copies of the command in the same dir: they take no lock."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _lock_dir(kind: str, directory: str) -> None:
    """Hold ``directory``'s lock for this launch, or exit 2 naming the holder."""
    from csp_ablate.errors import ConfigError
    from csp_ablate.lock import DirLock

    if not directory.strip() or Path(directory).resolve() == Path.cwd().resolve():
        print(f"csp_ablate: error: Invalid value for 'hydra.{kind}.dir': {directory!r}. Allowed: a "
              f"directory of its own, e.g. hydra.{kind}.dir=results/mine (else the run writes into the "
              "current directory).", file=sys.stderr, flush=True)
        raise SystemExit(2)
    if not _is_rank_zero():
        return
    try:
        _LOCKS[kind] = DirLock(Path(directory), what=kind).acquire()
    except ConfigError as err:
        print(f"csp_ablate: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _unlock(kind: str) -> None:
    lock = _LOCKS.pop(kind, None)
    if lock is not None:
        lock.release()


def warn_foreign_records(sweep_dir: Path) -> list[Path]:
    """One warning per ``record*.json`` that is not a record object (``[]``, ``null``, bad JSON):
    ignored by resume and report; the job whose dir holds it reruns and sets it aside."""
    from csp_ablate.report.records import record_files

    bad = []
    for path in record_files(sweep_dir):
        try:
            ok = isinstance(json.loads(path.read_text()), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            bad.append(path)
            log.warning("%s is not a record (malformed JSON or not an object): ignored; its job reruns "
                        "and sets it aside as %s.malformed", path, path.name)
    return bad


class ReportCallback(Callback):
    """Aggregate a multirun's records into runs.csv, tables, figure and claims."""

    def __init__(self, enabled: bool = True, wandb: str = "auto") -> None:
        """``wandb``: ``auto`` logs a report run when the jobs used ``logger=wandb``;
        ``always`` / ``never`` force it on / off."""
        self.enabled = enabled
        self.wandb = wandb

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _lock_dir("run", str(config.hydra.run.dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        _unlock("run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from csp_ablate.report.records import record_files

        REPORT_FAILED.clear()
        _lock_dir("sweep", str(config.hydra.sweep.dir))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            warn_foreign_records(sweep_dir)
        if not self.enabled:
            return
        n = len(record_files(sweep_dir)) if sweep_dir.is_dir() else 0
        if n and config.get("force"):
            log.info("sweep dir %s holds %d record(s); force=true: every job runs again", sweep_dir, n)
        elif n:
            log.info("sweep dir %s holds %d record(s): grid points with a completed one are skipped "
                     "(force=true reruns them)", sweep_dir, n)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._report(config)
        finally:
            _unlock("sweep")

    def _report(self, config: DictConfig) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        from csp_ablate.report.provenance import PoolingError

        try:
            from csp_ablate.report import build_report

            report = build_report(sweep_dir)
        except FileNotFoundError as err:  # no job got as far as writing a record
            log.warning("no report: %s", err)
            return
        except PoolingError as err:  # records of one row disagree on a result key: a user's choice
            log.error("report refused: %s", err)
            REPORT_FAILED["failed"] = True
            return
        except Exception:  # the records are safe on disk: say how to rebuild, never lose the sweep
            log.exception("report failed; rebuild it with: python -m csp_ablate.report %s", sweep_dir)
            REPORT_FAILED["failed"] = True
            return
        print(report.line(), flush=True)
        logger_name = str(config.get("logger", {}).get("name", ""))
        if self.wandb == "always" or (self.wandb == "auto" and logger_name == "wandb"):
            try:
                from csp_ablate.report.wandb_report import log_report_run

                logger_cfg = config.get("logger", {})
                run_id = log_report_run(
                    report, project=str(logger_cfg.get("project", "csp_ablate")),
                    entity=logger_cfg.get("entity"), mode=str(logger_cfg.get("mode", "auto")),
                )
                if run_id:
                    from csp_ablate.tracking import wandb_group

                    group = wandb_group(report.sweep, report.sweep_dir)
                    print(f"[csp_ablate.report] W&B report run {run_id} in group {group}", flush=True)
            except Exception:
                log.exception("W&B report run failed; the report files are written in %s", sweep_dir)
