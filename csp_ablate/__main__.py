"""`python -m csp_ablate`: the thin Hydra entry point.

Only Hydra/OmegaConf are imported at module level so that ``--help`` and ``--cfg job`` stay
fast; torch, Lightning, timm and W&B are imported inside the task function, i.e. only when a
job actually runs.

The sweep bookkeeping (skip a finished grid point, keep another grid point's record) lives in
:mod:`csp_ablate.sweep`; errors and exit codes in :mod:`csp_ablate.cli`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from csp_ablate.errors import ConfigError
from csp_ablate.sweep import (  # noqa: F401  (re-exported: tests and scripts import them from here)
    JOB_CONTROL_KEYS, displace_foreign_record, exit_if_launcher_gone, find_completed, pop_job_control, skip_if_done,
)

log = logging.getLogger("csp_ablate")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


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
    from csp_ablate.record import is_multirun

    control = pop_job_control(cfg)
    multirun = is_multirun()
    code = 1
    try:
        outcome = _run_job(cfg, control, multirun)
        code = 0
        return outcome
    except SystemExit as stop:  # 143: stopped by SIGTERM after saving last.ckpt
        code = stop.code if isinstance(stop.code, int) else 1
        raise
    finally:
        if multirun:  # a worker of a sweep whose launcher was killed: exit, do not idle
            exit_if_launcher_gone(code)


def _run_job(cfg: DictConfig, control: dict[str, Any], multirun: bool) -> dict[str, Any]:
    """Validate, skip or copy a finished grid point (multirun), else train; a failure is recorded."""
    from csp_ablate.record import RECORD_FILE, output_dir
    from csp_ablate.validate import validate_config

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
