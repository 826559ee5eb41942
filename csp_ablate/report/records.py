"""Records -> the tidy ``runs`` frame (one row per job, columns exactly ``RECORD_KEYS``).

A sweep dir holds one job dir per grid point (``<sweep dir>/<job>/record.json``). A job dir may
also hold ``record.<run_id>.json``: a finished record that a rerun with a different grid moved
aside instead of overwriting (see ``csp_ablate.__main__``). Every such file is read; a grid
point (``config_hash``, ``seed``) seen more than once keeps its completed record, the latest
one first, so a resumed or re-forced sweep is counted exactly once.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from csp_ablate.record import RECORD_KEYS

log = logging.getLogger("csp_ablate.report")

RECORD_GLOB = "record*.json"
_STATUS_RANK = {"completed": 0, "failed": 1, "skipped": 2}


def record_files(sweep_dir: Path) -> list[Path]:
    """``record*.json`` of every job dir directly under ``sweep_dir``, in job order."""
    sweep_dir = Path(sweep_dir)
    files = [p for p in sweep_dir.glob(f"*/{RECORD_GLOB}") if p.is_file()]
    return sorted(files, key=lambda p: (_job_key(p.parent.name), p.name != "record.json", p.name))


def _job_key(name: str) -> tuple:
    """Numeric job dirs sort as numbers (2 before 10), others after them by name."""
    return (0, int(name), "") if re.fullmatch(r"\d+", name) else (1, 0, name)


def read_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every readable record; an unreadable file is logged and skipped, never fatal."""
    out = []
    for path in record_files(sweep_dir):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable record %s: %s", path, err)
            continue
        if isinstance(rec, dict):
            rec["_path"] = str(path.relative_to(sweep_dir))
            out.append(rec)
    return out


def runs_frame(sweep_dir: Path) -> pd.DataFrame:
    """The tidy runs table of a sweep dir: ``RECORD_KEYS`` columns, one row per grid point."""
    records = read_records(sweep_dir)
    frame = pd.DataFrame.from_records(records, columns=[*RECORD_KEYS, "_path"])
    frame = deduplicate(frame)[RECORD_KEYS].reset_index(drop=True)
    for col in _INT_COLUMNS:  # nullable ints: a failed row must not turn seed 0 into "0.0"
        try:
            frame[col] = pd.to_numeric(frame[col]).astype("Int64")
        except (TypeError, ValueError):
            pass
    return frame


_INT_COLUMNS = ("seed", "img_size", "epochs", "fps_batch")


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one record per (config_hash, seed): completed before failed, latest first.

    Records without a config hash (a config too broken to hash) are all kept.
    """
    if frame.empty:
        return frame
    frame = frame.assign(
        _order=range(len(frame)),
        _rank=frame["status"].map(_STATUS_RANK).fillna(3),
        _finished=frame["finished_at"].fillna(""),
    )
    keyed = frame[frame["config_hash"].notna()]
    best = keyed.sort_values(["_rank", "_finished"], ascending=[True, False]).drop_duplicates(
        ["config_hash", "seed"], keep="first"
    )
    dropped = len(keyed) - len(best)
    if dropped:
        log.info("%d duplicate record(s) of the same grid point ignored", dropped)
    kept = pd.concat([best, frame[frame["config_hash"].isna()]]).sort_values("_order")
    return kept.drop(columns=["_order", "_rank", "_finished"])


def sweep_name(runs: pd.DataFrame) -> str | None:
    """The sweep the records belong to (most common non-null ``sweep``), None for ad-hoc."""
    names = runs["sweep"].dropna() if "sweep" in runs else pd.Series(dtype=object)
    if names.empty:
        return None
    counts = names.value_counts()
    if len(counts) > 1:
        log.warning("records of several sweeps in one dir: %s; reporting %s", dict(counts), counts.index[0])
    return str(counts.index[0])


def sweep_command(sweep_dir: Path) -> str | None:
    """The command of the sweep's last launch, from Hydra's ``multirun.yaml`` (if present)."""
    import shlex

    import yaml

    path = Path(sweep_dir) / "multirun.yaml"
    try:
        given = yaml.safe_load(path.read_text())["hydra"]["overrides"]
        overrides = [*given.get("task", []), *(o for o in given.get("hydra", []) if not str(o).startswith("hydra.mode="))]
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return "python -m csp_ablate -m " + " ".join(shlex.quote(str(o)) for o in overrides)
