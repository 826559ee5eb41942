"""Sweep bookkeeping of a multirun job: skip a finished grid point, keep foreign records.

A multirun is restartable (README "Sweeps"):

* resume: a job whose grid point (``config_hash`` of the config without seed, plus ``seed``)
  already has a ``completed`` record anywhere in ``hydra.sweep.dir`` is skipped, so rerunning a
  sweep into the same dir runs only the missing and failed jobs; ``force=true`` reruns all.
* a finished record is never overwritten by a different grid point: when a rerun with another
  grid (or order) lands on a job dir that holds one, it is first renamed to
  ``record.<run_id>.json`` in the same dir (the report reads those too).
* ``force`` and ``report`` (the sweep's report spec) steer the sweep, not the experiment: they
  are removed from the job's config, so they never change a config hash or a W&B config.
* under ``hydra/launcher=joblib`` each job limits torch to ``cpu_count // n_jobs`` threads
  (:func:`csp_ablate.distributed.configure_threads`, applied by ``train.run``), so parallel
  jobs do not oversubscribe the cores.

What "the same grid point" means is :mod:`csp_ablate.identity`'s ``config_hash`` plus ``seed``;
this module only applies it to the records in a sweep dir. Imports no torch until a job is
about to train.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger("csp_ablate")
#: Top-level keys that steer a sweep rather than define the experiment.
JOB_CONTROL_KEYS = ("force", "report")


def pop_job_control(cfg: DictConfig) -> dict[str, Any]:
    """Remove :data:`JOB_CONTROL_KEYS` from ``cfg`` (in place) and return their values."""
    with open_dict(cfg):
        return {key: cfg.pop(key, None) for key in JOB_CONTROL_KEYS}


def find_completed(sweep_dir: Path, chash: str, seed: int) -> Path | None:
    """A ``completed`` record of this grid point in any job dir of ``sweep_dir``, else None."""
    for path in sorted(Path(sweep_dir).glob("*/record*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: not a finished record
        if not isinstance(rec, dict):
            continue  # `[]`, `null`, a number: not a record (warned once by the callback)
        if rec.get("status") == "completed" and rec.get("config_hash") == chash and rec.get("seed") == seed:
            return path
    return None


def displace_foreign_record(out_dir: Path, chash: str, seed: int) -> Path | None:
    """Rename a completed record of another grid point in ``out_dir`` out of this job's way."""
    path = Path(out_dir) / "record.json"
    try:
        rec = json.loads(path.read_text())
    except OSError:
        return None
    except ValueError:
        rec = None
    if not isinstance(rec, dict):  # malformed or not an object: out of the way, kept for a look
        target = path.with_name(path.name + ".malformed")
        os.replace(path, target)
        log.info("set aside %s as %s (not a record; warned by the launcher)", path, target.name)
        return target
    if rec.get("status") != "completed" or (rec.get("config_hash"), rec.get("seed")) == (chash, seed):
        return None
    name = rec.get("run_id") or f"{rec.get('config_hash')}-s{rec.get('seed')}"
    target = path.with_name(f"record.{name}.json")
    os.replace(path, target)
    log.warning("job dir %s held a finished record of another grid point: kept as %s", out_dir, target.name)
    return target


def skip_if_done(cfg: DictConfig, force: bool = False) -> dict[str, Any] | None:
    """In a multirun: the completed record of this grid point, if any and not ``force`` (then
    the job is skipped); else clear this job's dir of another grid point's finished record."""
    from hydra.core.hydra_config import HydraConfig

    from csp_ablate.record import config_hash, output_dir

    chash, seed = config_hash(cfg), int(cfg.seed)
    done = None if force else find_completed(Path(HydraConfig.get().sweep.dir), chash, seed)
    if done is None:
        displace_foreign_record(output_dir(cfg), chash, seed)
        from csp_ablate import checkpoint  # imports torch: only for a job that is about to train

        checkpoint.set_aside_other_runs_state(output_dir(cfg), checkpoint.fingerprint(cfg))
        return None
    rec = json.loads(done.read_text())
    line = (f"[csp_ablate] skipped: {rec.get('run_id')} already completed (top1={rec.get('top1')}) | "
            f"record: {done} (force=true reruns it)")
    log.info(line)
    print(line, flush=True)
    return rec
