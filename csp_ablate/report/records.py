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
import os
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


#: Record keys that must hold a number (or null): anything else would break the tables midway.
NUMERIC_KEYS = (
    "seed", "gamma", "img_size", "epochs", "params_m", "bflops", "bflops_train", "cio_m", "fps",
    "fps_batch", "train_time_s", "top1", "val_top1", "ap", "ap50", "steps", "resumed_from_step",
)
#: Keys that must hold a string (or null).
TEXT_KEYS = ("status", "config_hash", "run_id", "model", "fusion", "task")


def check_record(rec: object) -> str | None:
    """Why ``rec`` is not a usable record (one sentence naming key, value, expected), else None."""
    if not isinstance(rec, dict):
        return f"not a record object but {type(rec).__name__} {json.dumps(rec)[:60]}"
    for key in NUMERIC_KEYS:
        value = rec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"'{key}' is {value!r}; expected a number or null"
    for key in TEXT_KEYS:
        value = rec.get(key)
        if value is not None and not isinstance(value, str):
            return f"'{key}' is {value!r}; expected a string or null"
    return None


def read_records(sweep_dir: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every valid record. A file that is not one (bad JSON, ``[]``, ``null``, a value of the
    wrong type) is skipped with one warning, never fatal, and its message appended to
    ``problems``: the report covers the rest and never stops halfway through its files."""
    out = []
    for path, rec, why in scan_records(sweep_dir):
        if why is not None:
            line = f"skipping {path}: {why}"
            log.warning(line)
            if problems is not None:
                problems.append(line)
            continue
        rec["_path"] = str(path.relative_to(sweep_dir))
        out.append(rec)
    return out


def scan_records(sweep_dir: Path) -> list[tuple[Path, Any, str | None]]:
    """(path, parsed content, why it is not a usable record or None) for every record file."""
    found = []
    for path in record_files(sweep_dir):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            found.append((path, None, f"unreadable ({type(err).__name__}: {err})"))
            continue
        found.append((path, rec, check_record(rec)))
    return found


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


_OUTPUT_DIR_KEYS = ("hydra.sweep.dir", "hydra.run.dir")


def _portable_override(override: str, launch_dir: Path) -> str | None:
    """``override`` as a reader's clone can run it: an absolute output dir is made relative to
    the dir the sweep was launched from (``hydra.runtime.cwd``), or dropped when it lies outside.

    Why: the report is committed with its records, and a maintainer's scratch path
    (``hydra.sweep.dir=/work/sweeps/...``) names a machine, not the experiment; without it
    the command writes to the sweep's default dir, which is what a reader wants. Relative to the
    launch dir, not to where the report is rebuilt, so every rebuild writes the same line.
    """
    key, sep, value = override.partition("=")
    if not sep or key.lstrip("+~") not in _OUTPUT_DIR_KEYS or not os.path.isabs(value):
        return override
    relative = os.path.relpath(os.path.abspath(value), os.path.abspath(launch_dir))
    return None if relative == ".." or relative.startswith(".." + os.sep) else f"{key}={relative}"


def sweep_command(sweep_dir: Path) -> str | None:
    """The command of the sweep's last launch, from Hydra's ``multirun.yaml`` (if present),
    with no absolute output dir (see :func:`_portable_override`)."""
    import shlex

    import yaml

    path = Path(sweep_dir) / "multirun.yaml"
    try:
        hydra = yaml.safe_load(path.read_text())["hydra"]
        given = hydra["overrides"]
        overrides = [*given.get("task", []), *(o for o in given.get("hydra", []) if not str(o).startswith("hydra.mode="))]
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    launch_dir = Path(((hydra.get("runtime") or {}).get("cwd")) or Path.cwd())
    portable = (_portable_override(str(o), launch_dir) for o in overrides)
    return "python -m csp_ablate -m " + " ".join(shlex.quote(o) for o in portable if o is not None)
