"""How many CPU threads a training process uses: resolved without torch, because it is identity.

Several torch processes on one machine (a joblib sweep, CPU DDP ranks) each default to one
thread per core and slow each other down many times over, so ``threads=null`` gives each
process ``cores // (parallel jobs x local ranks)``. The count also changes results (the
reduction order of convolutions: threads=1 and threads=2 give different top-1 on the same
seed), so the *resolved* count is part of a run's identity (:mod:`csp_ablate.identity`) and
of its record (``threads``); it must be computable in the launcher before torch is imported.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from csp_ablate.errors import ConfigError

THREADS_ENV = "CSP_ABLATE_THREADS"  # a rank-0 process's thread count, inherited by its ranks > 0


def available_cpus() -> int:
    """Cores this process may run on (the affinity mask: what SLURM/cgroups/taskset allow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_relaunched_rank() -> bool:
    """True in a process Lightning started for local rank > 0."""
    return os.environ.get("LOCAL_RANK", "0") not in ("", "0")


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (1 outside a local multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return 1
        launcher = HydraConfig.get().launcher
    except Exception:
        return 1
    return launcher_jobs(launcher)


def launcher_jobs(launcher) -> int:
    """Jobs a Hydra launcher config (``hydra.launcher``) runs at once on this machine: joblib's
    ``n_jobs`` (-1: every core), every job for ``submitit_local``, else 1."""
    target = str(launcher.get("_target_", ""))
    cpus = available_cpus()
    if "joblib" in target:
        n = int(launcher.get("n_jobs", -1) or -1)
        return max(1, n if n > 0 else cpus + 1 + n)
    if "submitit" in target and "LocalLauncher" in target:
        return cpus  # submitit_local starts every job of the sweep at once
    return 1


def local_processes(cfg: DictConfig) -> int:
    """Training processes this job starts on this machine (DDP devices per node)."""
    trainer = cfg.get("trainer") or {}
    strategy = str(trainer.get("strategy", "auto") or "auto")
    devices = trainer.get("devices", 1)
    if "ddp" in strategy and isinstance(devices, int) and devices > 1:
        return devices
    return 1


def resolve_threads(cfg: DictConfig, jobs: int | None = None) -> int:
    """``threads`` if set; else the cores shared by the parallel jobs and local ranks (>= 1).

    Always a number (never "torch's default"): the count is part of the run's identity.
    ``jobs``: the sweep's parallel jobs, for a caller outside the multirun (the seed planner
    hashing the grid points it prices); default: this process's launcher.
    """
    if cfg.get("threads") is not None:
        threads = cfg.threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError.bad_value("threads", threads, "a positive integer, or null (automatic)")
        return threads
    if is_relaunched_rank() and os.environ.get(THREADS_ENV, "").isdigit():
        return int(os.environ[THREADS_ENV])
    return max(1, available_cpus() // ((parallel_jobs() if jobs is None else jobs) * local_processes(cfg)))
