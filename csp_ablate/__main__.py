"""`python -m csp_ablate`: the thin Hydra entry point.

Only Hydra/OmegaConf are imported at module level so that ``--help`` and ``--cfg job`` stay
fast; torch, Lightning, timm and W&B are imported inside the task function, i.e. only when a
job actually runs.

In a multirun the entry point also makes sweeps restartable (README "Sweeps"):

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
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from csp_ablate.errors import ConfigError

log = logging.getLogger("csp_ablate")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
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
        if rec.get("status") == "completed" and rec.get("config_hash") == chash and rec.get("seed") == seed:
            return path
    return None


def displace_foreign_record(out_dir: Path, chash: str, seed: int) -> Path | None:
    """Rename a completed record of another grid point in ``out_dir`` out of this job's way."""
    path = Path(out_dir) / "record.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
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


def _is_rank_zero() -> bool:
    """Only the first process of a DDP job writes records (ranks > 0 are relaunched copies)."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; a multirun calls this once per grid point."""
    from csp_ablate.record import is_multirun
    from csp_ablate.validate import validate_config

    control = pop_job_control(cfg)
    try:
        validate_config(cfg)
        if is_multirun():
            done = skip_if_done(cfg, force=bool(control["force"]))
            if done is not None:
                return done.get("top1")
        from csp_ablate.train import run  # heavy imports happen here, not at start-up

        record = run(cfg)
    except ConfigError as err:
        from csp_ablate.record import write_failed_record

        if _is_rank_zero():
            write_failed_record(cfg, err)
        print(f"csp_ablate: error: {err}", file=sys.stderr)
        if is_multirun():
            return None  # the sweep goes on; the record marks the gap
        sys.exit(2)
    except Exception as err:  # a crash (NaN loss, OOM, bug): keep the evidence, isolate the job
        from csp_ablate.record import write_failed_record

        if _is_rank_zero():
            write_failed_record(cfg, err)
        if is_multirun():
            log.exception("job failed; recorded as status=failed, the sweep goes on")
            return None
        raise
    return record.get("top1")


if __name__ == "__main__":
    if "seeds=auto" in sys.argv[1:]:  # seed planning (csp_ablate.plan) launches the multiruns itself
        from csp_ablate.plan import main as plan_main

        sys.exit(plan_main(sys.argv[1:]))
    main()
