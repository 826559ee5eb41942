"""``build_report(sweep_dir)``: every report file of a sweep dir, from its record.json files alone."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from csp_ablate.atomic import write_csv_atomic, write_text_atomic
from csp_ablate.report.markdown import LAUNCH_LOG, claims_md, paper_table_md, summary_md
from csp_ablate.report.provenance import launches_as_json, provenance_table
from csp_ablate.report.quiet_fps import (fps_note, fps_runs, load_quiet_fps, mark_unmeasured, with_fps_settings,
                                         without_sweep_fps)
from csp_ablate.report.records import runs_frame, sweep_command, sweep_name
from csp_ablate.report.spec import ReportSpec, load_spec
from csp_ablate.report.tables import assign_rows, claims_table, paper_table, summary_table, variance_checks

log = logging.getLogger("csp_ablate.report")

FLOAT_FORMAT = "%.6g"  # CSVs: enough digits for every metric, no float noise


@dataclass
class Report:
    sweep_dir: Path
    sweep: str | None
    spec: ReportSpec | None
    runs: pd.DataFrame
    summary: pd.DataFrame
    table: pd.DataFrame | None = None
    claims: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)

    def line(self) -> str:
        n_done = int((self.runs["status"] == "completed").sum())
        n_failed = int((self.runs["status"] == "failed").sum())
        verdicts = ""
        if self.claims is not None and not self.claims.empty:
            counts = self.claims["verdict"].value_counts()
            verdicts = " | claims: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        names = ", ".join(p.name for p in self.files)
        return (f"[csp_ablate.report] {self.sweep or 'adhoc'}: {n_done} completed, {n_failed} failed"
                f"{verdicts} | wrote {names} in {self.sweep_dir}")


def build_report(sweep_dir: Path, spec: ReportSpec | None = None, spec_name: str | None = None) -> Report:
    """Read the records under ``sweep_dir`` and write the report files at its root.

    Always: ``runs.csv`` (columns exactly ``RECORD_KEYS``, failed jobs included) and
    ``summary.csv``/``.md`` (one row per configuration). With a report spec (the ``report:``
    block of ``sweeps/<sweep>.yaml``, found by the records' ``sweep`` name, or given):
    ``<table>.csv``/``.md``, ``claims.csv``/``.md`` and, if the spec has a figure,
    ``<figure>.png``/``.svg``. Every file is written atomically. The table, claims and figure
    take fps from ``fps.csv`` (measured quietly) or show none: a job's own fps, measured inside
    the busy sweep, stays in ``runs.csv`` only (csp_ablate.report.quiet_fps).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist")
    runs = runs_frame(sweep_dir)
    if runs.empty:
        raise FileNotFoundError(f"no record.json under {sweep_dir}/*/ (is it a Hydra sweep dir?)")
    name = sweep_name(runs)
    command = sweep_command(sweep_dir)
    launch_log = (sweep_dir / LAUNCH_LOG).is_file()
    if spec is None:
        spec = load_spec(spec_name or name)
    report = Report(sweep_dir=sweep_dir, sweep=name, spec=spec, runs=runs, summary=summary_table(runs))
    out = report.files
    provenance = provenance_table(runs, spec)  # dirty/mixed-SHA rows; refuses a row mixing result keys
    out.append(write_csv_atomic(sweep_dir / "runs.csv", launches_as_json(runs), float_format=FLOAT_FORMAT))
    out.append(write_csv_atomic(sweep_dir / "provenance.csv", provenance))
    out.append(write_csv_atomic(sweep_dir / "summary.csv", report.summary, float_format=FLOAT_FORMAT))
    title = f"Summary of sweep {name}" if name else "Summary of an ad-hoc multirun"
    out.append(write_text_atomic(sweep_dir / "summary.md", summary_md(report.summary, runs, title, command, launch_log)))
    if spec is not None:
        from csp_ablate.reference import load_reference

        reference = load_reference(spec.reference) if spec.reference else None
        quiet = load_quiet_fps(sweep_dir)
        table_runs = without_sweep_fps(runs)
        frames = {"fps": fps_runs(runs, quiet)} if quiet is not None else {}
        report.table = paper_table(table_runs, spec, reference, frames)
        has_fps = "fps" in [*spec.metrics, *spec.extra_metrics]
        if has_fps:  # the CSV says how each row's fps was measured; the markdown says it once (fps_note)
            done = runs[runs["status"] == "completed"].drop_duplicates("config_hash")
            row_of_config = pd.Series(assign_rows(done, spec).to_numpy(), index=done["config_hash"].to_numpy())
            report.table = with_fps_settings(report.table, quiet, row_of_config)
        out.append(write_csv_atomic(sweep_dir / f"{spec.table}.csv", report.table, float_format=FLOAT_FORMAT))
        fps_text = fps_note(quiet, sweep_dir) if has_fps else None
        out.append(write_text_atomic(sweep_dir / f"{spec.table}.md",
                                     paper_table_md(report.table, spec, runs, command, fps_text, launch_log)))
        if spec.claims:
            report.claims = claims_table(table_runs, spec, metric_frames=frames)
            quiet_rows = frames.get("fps")
            measured = None if quiet_rows is None else set(assign_rows(quiet_rows, spec).dropna()) if len(quiet_rows) else set()
            report.claims = mark_unmeasured(report.claims, sweep_dir, measured)
            out.append(write_csv_atomic(sweep_dir / "claims.csv", report.claims, float_format=FLOAT_FORMAT))
            out.append(write_text_atomic(sweep_dir / "claims.md", claims_md(report.claims, spec, variance_checks(runs, spec))))
        if spec.figure:
            from csp_ablate.report.figure import plot_figure

            out.extend(plot_figure(report.table, spec, table_runs, sweep_dir))
    return report
