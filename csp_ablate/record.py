"""The run record: one flat row per job, the contract between training and reporting.

``record.json`` in a job's output dir and a row of ``runs.csv`` carry exactly
:data:`RECORD_KEYS` (DESIGN.md, "Result contracts"). This module imports no torch, so the
report can rebuild everything from records on any machine.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from csp_ablate.atomic import write_json_atomic
from csp_ablate.axes import LABEL_AXES
from csp_ablate.identity import config_hash  # noqa: F401  (re-exported: the one identity)
from csp_ablate.threads import resolve_threads

IDENTITY = ["sweep", "run_id", "config_hash", "seed", "status", "error"]
AXES = [
    "task", "dataset", "model", "gamma", "fusion", "neck", "extras", "activation", "tier",
    "img_size", "epochs",
]
COST = ["params_m", "bflops", "bflops_train", "cio_m", "fps", "fps_device", "fps_batch", "train_time_s"]
QUALITY = ["top1", "val_top1", "ap", "ap50"]
PROVENANCE = [
    "git_sha", "started_at", "finished_at", "wandb_run_id", "wandb_dir", "torch_version", "host",
    # issue 14: results depend on the CPU thread count; every launch of a resumed run, each
    # with its git SHA, the hash of its uncommitted diff and the step it resumed from
    "threads", "launches",
]
# Extension of DESIGN.md's contract (issue 7): how far the run trained and whether it resumed.
# `epochs` says nothing for step-based paper runs; a relaunched run must say it resumed.
PROGRESS = ["steps", "resumed_from_step"]
# Issue 18: a record copied from another sweep of the same tier names the original run
# (``<sweep>/<job>/record.json``); None for a run trained in its own sweep.
REUSE = ["reused_from"]
RECORD_KEYS: list[str] = IDENTITY + AXES + COST + QUALITY + PROVENANCE + PROGRESS + REUSE
RECORD_FILE = "record.json"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def is_multirun() -> bool:
    """True inside a Hydra multirun job (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@functools.cache
def git_state() -> dict[str, str | None]:
    """:func:`git_state_of` this package's checkout (once per process)."""
    return git_state_of(Path(__file__).resolve().parent)


def git_state_of(here: Path) -> dict[str, str | None]:
    """The code that runs: ``git_sha`` (``+dirty`` when tracked files changed) and, when dirty,
    ``diff_sha256`` (hash of ``git diff HEAD``), so two dirty launches can be told apart.

    Changes under ``results/`` do not count: that is where sweeps and benchmarks write their
    (tracked) evidence, so a seed plan's second multirun, or every benchmark after the first,
    would otherwise call clean code dirty."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--binary", "--", ":(top)", ":(top,exclude)results"], cwd=here,
            capture_output=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "diff_sha256": None}
    if not diff:
        return {"git_sha": sha, "diff_sha256": None}
    return {"git_sha": f"{sha}+dirty", "diff_sha256": hashlib.sha256(diff).hexdigest()[:16]}


def git_sha() -> str | None:
    """Commit of the code that ran (``+dirty`` when the work tree has changes)."""
    return git_state()["git_sha"]


def launch_entry(resumed_from_step: int | None, threads: int | None) -> dict[str, Any]:
    """This launch's provenance, one element of the record's ``launches``."""
    return {**git_state(), "resumed_from_step": resumed_from_step, "threads": threads,
            "started_at": now_iso(), "host": platform.node()}


def output_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.output_dir))


def base_record(cfg: DictConfig) -> dict[str, Any]:
    """Identity, axes and provenance known before training starts; the rest is None."""
    rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    chash = config_hash(cfg)
    extras = cfg.get("extras") or []
    rec.update(
        sweep=cfg.get("sweep"),
        run_id=f"{cfg.model.name}-{chash[:8]}-s{cfg.seed}",
        config_hash=chash,
        seed=int(cfg.seed),
        status="running",
        error=None,
        task=cfg.task.name,
        dataset=_dataset_name(cfg),
        model=cfg.model.name,
        gamma=cfg.get("gamma"),
        fusion=cfg.get("fusion"),
        neck=cfg.get("neck"),
        extras="+".join(sorted(str(e) for e in extras)),
        activation=cfg.get("activation"),
        tier=cfg.get("tier"),
        img_size=cfg.data.get("img_size"),
        epochs=cfg.trainer.get("max_epochs"),
        git_sha=git_sha(),
        started_at=now_iso(),
        host=platform.node(),
        torch_version=_package_version("torch"),
        threads=resolve_threads(cfg),
    )
    rec["launches"] = [launch_entry(None, rec["threads"])]  # train.run replaces it with every launch
    return rec


def _package_version(name: str) -> str | None:
    """Installed version without importing the package (start-up stays torch-free)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _dataset_name(cfg: DictConfig) -> str:
    target = str(cfg.data.get("_target_", ""))
    return target.rsplit(".", 1)[-1].removesuffix("DataModule").lower() or "unknown"


def relative_to_record(path: str | None, record_dir: Path) -> str | None:
    """``path`` relative to the record's dir: a committed record names no machine's paths."""
    if not path or not Path(path).is_absolute():
        return path
    return os.path.relpath(path, Path(record_dir).resolve())


def write_record(cfg: DictConfig, record: Mapping[str, Any]) -> Path:
    """Write ``record.json`` (only the contract's keys, in contract order) into the run dir."""
    unknown = set(record) - set(RECORD_KEYS)
    if unknown:
        raise KeyError(f"record has keys outside the contract: {sorted(unknown)}")
    ordered = {key: record.get(key) for key in RECORD_KEYS}
    ordered["wandb_dir"] = relative_to_record(ordered["wandb_dir"], output_dir(cfg))
    return write_json_atomic(output_dir(cfg) / RECORD_FILE, ordered)


def _num(record: Mapping[str, Any], key: str, fmt: str) -> str:
    """A record's number as printed; a metric may be absent (e.g. trainer.limit_val_batches=0)."""
    return "n/a" if record.get(key) is None else format(record[key], fmt)


def quality_text(record: Mapping[str, Any]) -> str:
    """A record's quality as a line shows it: AP/AP50 for a detector, top-1 for a classifier."""
    if record.get("task") == "detection":
        return f"ap={_num(record, 'ap', '.2f')}% ap50={_num(record, 'ap50', '.2f')}%"
    return f"top1={_num(record, 'top1', '.2f')}% val_top1={_num(record, 'val_top1', '.2f')}%"


def summary_line(record: Mapping[str, Any], path: Any) -> str:
    """The one line a finished job prints: its axes, its quality and cost, and where its record is."""
    axes = " ".join(f"{k}={record[k]}" for k in LABEL_AXES if record.get(k) not in (None, ""))
    return (
        f"[csp_ablate] {record['status']}: {axes} | {quality_text(record)} params={_num(record, 'params_m', '.3f')}M "
        f"bflops={_num(record, 'bflops', '.3f')} train={_num(record, 'train_time_s', '.0f')}s | record: {path}"
    )


def read_record(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def write_failed_record(cfg: DictConfig, err: BaseException, message: str | None = None) -> Path | None:
    """Record a job that raised, so a sweep's report shows the gap instead of losing it.

    ``message`` (default ``"<type>: <err>"``) is the record's ``error``. A completed record in
    the run dir is never replaced (the caller holds the dir's lock, so nothing writes between
    the check and the write). When the run dir cannot take the record (unwritable, disk full),
    a multirun job records it at the sweep root, ``<sweep dir>/failed/record.<job>.json``, which
    the report reads like any job dir's record; the path written is returned, None if none.
    """
    try:
        rec = base_record(cfg)
    except Exception:  # the config itself may be what is broken: keep what we can
        rec = dict.fromkeys(RECORD_KEYS)
        rec.update(started_at=now_iso(), host=platform.node())
    msg = message or f"{type(err).__name__}: {err}"
    rec.update(status="failed", error=msg[:2000], finished_at=now_iso())
    try:
        existing = output_dir(cfg) / RECORD_FILE
        if existing.exists() and read_record(existing).get("status") == "completed":
            return None  # never replace a finished result with a later failure
    except Exception:
        pass
    try:
        return write_record(cfg, rec)
    except Exception as first:
        fallback = _sweep_root_failed_path()
        if fallback is None:
            print(f"csp_ablate: could not write the failed record into {output_dir(cfg)}: {first}",
                  file=sys.stderr, flush=True)
            return None
        try:
            ordered = {key: rec.get(key) for key in RECORD_KEYS}
            ordered["error"] = (f"{msg} [recorded at the sweep root: the job dir {output_dir(cfg)} "
                                f"could not take it: {first}]")[:2000]
            return write_json_atomic(fallback, ordered)
        except Exception:
            traceback.print_exc()
            return None


def _sweep_root_failed_path() -> Path | None:
    """``<sweep dir>/failed/record.<job num>.json`` inside a multirun job, else None."""
    if not is_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return Path(str(hc.sweep.dir)) / "failed" / f"record.{hc.job.num}.json"
