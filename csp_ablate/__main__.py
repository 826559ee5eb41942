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


def _is_rank_zero() -> bool:
    """Only the first process of a DDP job writes records (ranks > 0 are relaunched copies)."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Run one job; a multirun calls this once per grid point.

    Returns the job's outcome (status, record path, error), which :mod:`csp_ablate.cli` reads
    after a multirun for the exit code. A bad config exits 2 in a single run; a run fault the
    user can fix (disk full, unwritable dir, corrupt checkpoint) exits 1 with one line; a bug
    keeps its traceback. In a multirun every failure is recorded and the sweep goes on.
    """
    from csp_ablate.record import RECORD_FILE, is_multirun, output_dir
    from csp_ablate.validate import validate_config

    control = pop_job_control(cfg)
    multirun = is_multirun()
    try:
        validate_config(cfg)
        if multirun:
            done = skip_if_done(cfg, force=bool(control["force"]))
            if done is not None:
                return {"status": "skipped", "top1": done.get("top1"), "record": None, "num": _job_num()}
        from csp_ablate.train import run  # heavy imports happen here, not at start-up

        record = run(cfg)
    except Exception as err:  # a bad config or a crash (NaN loss, OOM, bug): keep the evidence
        return _job_failed(cfg, err, multirun)
    return {"status": "completed", "top1": record.get("top1"), "record": str(output_dir(cfg) / RECORD_FILE),
            "num": _job_num()}


def _job_num() -> int | None:
    """The multirun job number (its dir's name), for the launcher's list of failed jobs."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), "job.num", default=None, throw_on_missing=False)


def _job_failed(cfg: DictConfig, err: Exception, multirun: bool) -> dict[str, Any]:
    """Record the failure (never over a completed record) and report it as :func:`main` says."""
    from csp_ablate.cli import full_error
    from csp_ablate.errors import describe_failure
    from csp_ablate.record import output_dir, write_failed_record

    config_error = isinstance(err, ConfigError)
    message = str(err) if config_error else describe_failure(err, output_dir(cfg))
    path = write_failed_record(cfg, err, message=message) if _is_rank_zero() else None
    where = (f"recorded as failed: {path}" if path else
             "no failed record written (a completed record there is kept, or no dir could take it)")
    if multirun:
        if config_error:
            log.error("job failed: %s (%s)", message, where)
        else:
            log.exception("job failed: %s; %s, the sweep goes on", message, where)
        return {"status": "failed", "error": message, "record": str(path) if path else None,
                "config_error": config_error, "num": _job_num()}
    if full_error():
        raise err
    user_fault = config_error or not message.startswith(f"{type(err).__name__}: ")
    if not user_fault:
        raise err  # a bug: the traceback is the evidence
    print(f"csp_ablate: error: {message}", file=sys.stderr)
    print(f"csp_ablate: {where}", file=sys.stderr, flush=True)
    sys.exit(2 if config_error else 1)


def cli_main() -> None:
    """``python -m csp_ablate`` and the ``csp-ablate`` script: :func:`main` behind
    :func:`csp_ablate.cli.run` (concise errors, exit codes, Ctrl-C)."""
    if "seeds=auto" in sys.argv[1:]:  # seed planning (csp_ablate.plan) launches the multiruns itself
        from csp_ablate.plan import main as plan_main

        sys.exit(plan_main(sys.argv[1:]))
    from csp_ablate.cli import run as run_cli

    run_cli(main)


if __name__ == "__main__":
    cli_main()
