"""One W&B ``report`` run per sweep: the tables as ``wandb.Table``, the figure as ``wandb.Image``
and every report file as an artifact, in the sweep's group (offline unless an API key is set)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from csp_ablate.report.build import Report

log = logging.getLogger("csp_ablate.report")


def _table(frame: pd.DataFrame):
    """``frame`` as a ``wandb.Table``. Nested cells (a record's ``launches``: a list of dicts
    whose ``resumed_from_step`` is None in one launch and a number in the next) are written as
    JSON text, as in runs.csv: wandb types each column from its first row and rejects the rest."""
    import wandb

    clean = frame.astype(object).where(frame.notna(), None)
    for col in clean.columns:
        nested = clean[col].map(lambda v: isinstance(v, (list, dict, tuple)))
        if nested.any():
            clean[col] = [json.dumps(v, default=str) if n else v for v, n in zip(clean[col], nested)]
    return wandb.Table(dataframe=clean)


def log_report_run(report: Report, project: str = "csp_ablate", entity: str | None = None, mode: str = "auto") -> str | None:
    """Log ``report`` as one run with job_type ``report``; returns its id (None if disabled)."""
    import wandb

    from csp_ablate.tracking import resolve_wandb_mode, wandb_group

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    group = wandb_group(report.sweep, report.sweep_dir)  # the group its jobs logged into
    runs = report.runs
    counts = runs["status"].value_counts()
    run = wandb.init(
        project=project, entity=entity, group=group, job_type="report", name=f"report-{group}",
        tags=[f"sweep:{group}", "report"], dir=str(report.sweep_dir), mode=mode,
        config={"sweep": group, "sweep_dir": str(report.sweep_dir), "n_records": len(runs)},
        settings=wandb.Settings(silent=True),
    )
    try:
        data = {"runs": _table(runs), "summary": _table(report.summary)}
        if report.table is not None and report.spec is not None:
            data[report.spec.table] = _table(report.table)
        if report.claims is not None:
            data["claims"] = _table(report.claims)
        for path in report.files:
            if path.suffix == ".png":
                data[f"plot/{path.stem}"] = wandb.Image(str(path), caption=report.spec.title if report.spec else path.stem)
        run.log(data)
        summary = {"n_completed": int(counts.get("completed", 0)), "n_failed": int(counts.get("failed", 0))}
        if report.claims is not None:
            summary.update({f"claims_{k}": int(v) for k, v in report.claims["verdict"].value_counts().items()})
        run.summary.update(summary)
        artifact = wandb.Artifact(name=f"report-{group}", type="report",
                                  description=f"csp_ablate report files of sweep {group}")
        for path in report.files:
            artifact.add_file(str(path), name=Path(path).name)
        run.log_artifact(artifact)
        run_id = run.id
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run_id
