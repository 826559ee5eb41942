"""Hydra callbacks (registered in conf/config.yaml under ``hydra.callbacks``).

:class:`ReportCallback` builds the sweep's report at the end of every multirun, named or ad hoc,
from the records in ``hydra.sweep.dir`` (the same :func:`csp_ablate.report.build_report` as
``python -m csp_ablate.report``), then logs one W&B ``report`` run when the sweep logged to W&B.
It runs in the launching process, after every job, whatever the launcher (basic, joblib).
Importing this module is cheap: Hydra instantiates callbacks before ``--help`` is printed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("csp_ablate")


class ReportCallback(Callback):
    """Aggregate a multirun's records into runs.csv, tables, figure and claims."""

    def __init__(self, enabled: bool = True, wandb: str = "auto") -> None:
        """``wandb``: ``auto`` logs a report run when the jobs used ``logger=wandb``;
        ``always`` / ``never`` force it on / off."""
        self.enabled = enabled
        self.wandb = wandb

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from csp_ablate.report.records import record_files

        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        n = len(record_files(sweep_dir)) if sweep_dir.is_dir() else 0
        if n and config.get("force"):
            log.info("sweep dir %s holds %d record(s); force=true: every job runs again", sweep_dir, n)
        elif n:
            log.info("sweep dir %s holds %d record(s): grid points with a completed one are skipped "
                     "(force=true reruns them)", sweep_dir, n)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            from csp_ablate.report import build_report

            report = build_report(sweep_dir)
        except FileNotFoundError as err:  # no job got as far as writing a record
            log.warning("no report: %s", err)
            return
        except Exception:  # the records are safe on disk: say how to rebuild, never lose the sweep
            log.exception("report failed; rebuild it with: python -m csp_ablate.report %s", sweep_dir)
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
                    print(f"[csp_ablate.report] W&B report run {run_id} in group {report.sweep or 'adhoc'}", flush=True)
            except Exception:
                log.exception("W&B report run failed; the report files are written in %s", sweep_dir)
