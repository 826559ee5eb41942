"""The row's fps comes from ``<sweep dir>/fps.csv`` (measured quietly), never from a busy sweep.

A job's record keeps the fps it measured inside the sweep (``runs.csv`` shows it), but that
number is measured while the other job or CI uses the CPU, so it is noise between rows. The
paper table, its figure and the fps claims use ``fps.csv`` from
``python -m csp_ablate.profile sweep_dir=<dir>`` (:mod:`csp_ablate.profile.sweep_fps`): one
measurement per configuration and interleaved round. Each round is one sample of the row (the
fps claims are judged, sign only, on the rounds: n = rounds). Without ``fps.csv`` the fps cells
are empty and the table says how to measure them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

log = logging.getLogger("csp_ablate.report")

FPS_CSV = "fps.csv"  # = csp_ablate.profile.sweep_fps.FPS_CSV (the report must not import torch)


def load_quiet_fps(sweep_dir: Path) -> pd.DataFrame | None:
    """``<sweep_dir>/fps.csv`` as a frame, or None when absent, unreadable or empty."""
    path = Path(sweep_dir) / FPS_CSV
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"config_hash": str})
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return None
    needed = {"config_hash", "round", "fps", "fps_device", "fps_threads", "fps_batch", "img_size"}
    if frame.empty or not needed <= set(frame.columns):
        log.warning("ignoring %s: no rows or missing columns %s", path, sorted(needed - set(frame.columns)))
        return None
    return frame


def without_sweep_fps(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the busy-sweep fps blanked: what the tables and claims read for other metrics."""
    return runs.assign(fps=math.nan) if "fps" in runs else runs


def fps_runs(runs: pd.DataFrame, quiet: pd.DataFrame) -> pd.DataFrame:
    """A runs-shaped frame with one completed row per configuration x round of ``quiet``: the
    axes of that configuration's records, ``seed`` = the round, ``fps`` = the quiet measurement.
    Configurations of ``quiet`` that no completed record has are dropped (another sweep's file)."""
    done = runs[runs["status"] == "completed"].drop_duplicates("config_hash").set_index("config_hash")
    keep = quiet[quiet["config_hash"].isin(done.index)]
    dropped = set(quiet["config_hash"]) - set(done.index)
    if dropped:
        log.warning("fps.csv has %d config(s) with no completed record here: ignored", len(dropped))
    rows = done.loc[keep["config_hash"]].reset_index()
    rows["seed"] = keep["round"].to_numpy()
    rows["fps"] = pd.to_numeric(keep["fps"], errors="coerce").to_numpy()
    return rows[runs.columns]


#: how a row's quiet fps was measured, as table columns (``fps.csv`` column -> table column)
FPS_SETTINGS = {"fps_device": "fps_device", "fps_threads": "fps_threads", "fps_batch": "fps_batch",
                "img_size": "fps_img_size", "measured_at": "fps_measured_at", "host": "fps_host"}


def with_fps_settings(table: pd.DataFrame, quiet: pd.DataFrame | None, row_of_config: pd.Series) -> pd.DataFrame:
    """``table`` plus, per row, how its fps cells were measured, so the CSV alone says it (the
    markdown says it in ``fps_note``): ``fps_source``, the settings of ``FPS_SETTINGS`` (distinct
    values joined by ``/``; the first ``measured_at``) and ``fps_rounds``. ``row_of_config``: the
    table row of each configuration (index ``config_hash``). A row without quiet rounds gets
    ``fps_source`` = "not measured quietly" and empty settings."""
    out = table.copy()
    out["fps_source"] = "not measured quietly"
    for col in (*FPS_SETTINGS.values(), "fps_rounds"):
        out[col] = pd.NA
    if quiet is None:
        return out
    measured = quiet.assign(row=quiet["config_hash"].map(row_of_config)).dropna(subset=["row"])
    for row_id, rounds in measured.groupby("row"):
        at = out.index[out["row"] == row_id]
        out.loc[at, "fps_source"] = FPS_CSV
        for src, col in FPS_SETTINGS.items():
            if src not in rounds:
                continue
            values = rounds[src].dropna().astype(str)
            text = values.min() if src == "measured_at" else "/".join(sorted(set(values), key=_natural))
            out.loc[at, col] = text or pd.NA
        out.loc[at, "fps_rounds"] = int(rounds["round"].nunique())
    return out


def _natural(value: str) -> tuple[float, str]:
    """Sort "2" before "10"."""
    try:
        return float(value), value
    except ValueError:
        return math.inf, value


def fps_note(quiet: pd.DataFrame | None, sweep_dir: Path | str) -> str:
    """The sentence on how the table's fps was measured (or that it was not)."""
    if quiet is None:
        return (f"fps: not measured quietly, so not shown (the fps each job recorded inside the busy sweep "
                f"stays in runs.csv but is noise between rows): run `python -m csp_ablate.profile "
                f"sweep_dir={sweep_dir}` on an otherwise idle machine, then `python -m csp_ablate.report {sweep_dir}`")

    def one(col: str) -> str:
        values = sorted({str(v) for v in quiet[col].dropna()}) if col in quiet else []
        return "/".join(values) if values else "?"

    rounds = quiet.groupby("config_hash")["round"].nunique()
    what = f", {one('what')}" if "what" in quiet else ""
    when = ""
    if "measured_at" in quiet and quiet["measured_at"].notna().any():
        when = f" on {str(quiet['measured_at'].dropna().min())[:16].replace('T', ' ')} UTC"
    host = f" ({one('host')})" if "host" in quiet else ""
    n = f"{int(rounds.min())}–{int(rounds.max())}" if rounds.min() != rounds.max() else f"{int(rounds.max())}"
    return (f"fps = frames/s measured quietly after the sweep (`python -m csp_ablate.profile sweep_dir=...` "
            f"-> fps.csv{when}{host}): device {one('fps_device')}, {one('fps_threads')} thread(s), batch "
            f"{one('fps_batch')}, {one('img_size')} px{what}; mean ± 95 % interval over {n} interleaved "
            f"rounds (n = rounds for the fps deltas and claims)")


def mark_unmeasured(claims: pd.DataFrame, sweep_dir: Path | str, measured_rows: set[str] | None = None) -> pd.DataFrame:
    """An fps claim without a quiet measurement of both its rows is inconclusive for want of one:
    say so (instead of "no completed run"), with the command that measures it. ``measured_rows``:
    the rows fps.csv has rounds for (None: there is no fps.csv, or it cannot be read)."""
    command = f"python -m csp_ablate.profile sweep_dir={sweep_dir}"
    for i, claim in claims[claims["metric"] == "fps"].iterrows():
        if measured_rows is None:
            claims.loc[i, "reason"] = f"fps not measured quietly (no readable fps.csv; the sweep's own fps is noise): run {command}"
            continue
        unmeasured = [row for row in (claim["row"], claim["vs"]) if row not in measured_rows]
        if unmeasured:  # fps.csv was written before these rows had a completed record
            claims.loc[i, "reason"] = (f"fps.csv has no rounds for row(s) {', '.join(unmeasured)} (measured before they "
                                       f"completed?): run {command} again")
    return claims
