"""Sweep bookkeeping of a multirun job: skip a finished grid point, keep foreign records.

A multirun is restartable (README "Sweeps"):

* resume: a job whose grid point (``config_hash`` of the config without seed, plus ``seed``)
  already has a ``completed`` record anywhere in ``hydra.sweep.dir`` is skipped, so rerunning a
  sweep into the same dir runs only the missing and failed jobs; ``force=true`` reruns all.
* one set of runs per tier: a grid point that has a ``completed`` record in *another* sweep dir
  of the same tier (a sibling of ``hydra.sweep.dir`` when that is ``<...>/<tier>/<sweep>``, as
  the named sweeps' ``results/<tier>/<sweep>``) is not trained
  again; its record is copied into this job's dir with ``reused_from`` naming the original
  (``<sweep>/<job>/record.json``; the copy keeps the original's ``run_id``), so Figure 4 reads
  Table 1's runs of its four shared rows. The config hash contains ``tier``, ``threads`` (set
  by the launcher's parallel jobs) and every result-changing key, so only the same experiment
  matches; ``force=true`` retrains. Sweeps of a tier that run at the same time do not wait for
  each other: a point both lack is trained by both.
* a finished record is never overwritten by a different grid point: when a rerun with another
  grid (or order) lands on a job dir that holds one, it is first renamed to
  ``record.<run_id>.json`` in the same dir (the report reads those too).
* a stopped run resumes whatever its job number: a relaunch with a narrower grid (the seed
  planner launches only the missing points) numbers its jobs anew, so a run's ``last.ckpt``
  can sit in another job dir; it is moved into the run's new dir before training
  (:func:`csp_ablate.checkpoint.adopt_own_state`: its most advanced state anywhere in the
  sweep dir), so the run resumes instead of restarting. ``force=true`` (and
  ``checkpoint.resume=false``) starts the run fresh and renames its other saved states to
  ``discarded.checkpoints.<fingerprint>``, so no later relaunch resumes them.
* ``force`` and ``report`` (the sweep's report spec) steer the sweep, not the experiment: they
  are removed from the job's config, so they never change a config hash or a W&B config.
* a stopped sweep ends: ``kill -TERM -- -<pgid>`` kills the launcher at once, and each
  joblib worker, after its job has saved ``last.ckpt`` (or finished), exits instead of
  waiting for a launcher that is gone (:func:`exit_if_launcher_gone`).
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
from collections.abc import Iterator
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


def all_completed(sweep_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every ``completed`` record in the job dirs of ``sweep_dir`` (displaced ones included), parsed once."""
    for path in sorted(Path(sweep_dir).glob("*/record*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: not a finished record
        if not isinstance(rec, dict):
            continue  # `[]`, `null`, a number: not a record (warned once by the callback)
        if rec.get("status") == "completed":
            yield path, rec


def completed_records(sweep_dir: Path, chash: str, seed: int) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every ``completed`` record of this grid point in the job dirs of ``sweep_dir``, parsed once."""
    for path, rec in all_completed(sweep_dir):
        if rec.get("config_hash") == chash and rec.get("seed") == seed:
            yield path, rec


def tier_siblings(sweep_dir: Path, tier: str) -> list[Path]:
    """The other sweep dirs of the tier whose records a job of ``sweep_dir`` may copy: only
    under the tier layout ``<...>/<tier>/<sweep>`` (see :func:`find_in_tier`), else none."""
    here = Path(sweep_dir).absolute()
    if here.parent.name != str(tier) or not here.parent.is_dir():
        return []
    return [other for other in sorted(here.parent.iterdir()) if other.is_dir() and other.resolve() != here.resolve()]


def find_completed(sweep_dir: Path, chash: str, seed: int) -> Path | None:
    """A ``completed`` record of this grid point in any job dir of ``sweep_dir``, else None."""
    return next((path for path, _ in completed_records(sweep_dir, chash, seed)), None)


def find_in_tier(sweep_dir: Path, chash: str, seed: int, tier: str) -> tuple[Path, dict[str, Any]] | None:
    """A ``completed`` record of this grid point in a sibling sweep dir of the tier (its path and
    contents, read once: a sibling sweep may rename its files meanwhile), else None.

    Only the tier layout counts (``<...>/<tier>/<sweep>``, as ``results/proxy/table1``), read
    from the path as given (a sweep dir that is a symlink keeps its name); an ad-hoc
    ``hydra.sweep.dir`` (``multirun/<date>/<time>``, a test's tmp dir) has no siblings that are
    sweeps of its tier, so nothing is reused there. An original is preferred over a copy (a
    record with ``reused_from``), so a copy never points at another copy."""
    hits = [hit for other in tier_siblings(sweep_dir, tier) for hit in completed_records(other, chash, seed)]
    return next((hit for hit in hits if not hit[1].get("reused_from")), hits[0] if hits else None)


def reuse_record(source: Path, rec: dict[str, Any], out_dir: Path, sweep: str | None) -> dict[str, Any]:
    """Copy the completed record ``rec`` (read from ``source``) into ``out_dir`` as this sweep's record.

    The copy keeps every result and provenance field of the run (its W&B run stays in the
    original sweep's group; ``wandb_dir`` is rebased to point at it from the copy); ``sweep``
    becomes this sweep and ``reused_from`` says where the run lives, relative to the tier dir, so
    the copy holds no machine path. The copy has the original's ``run_id``: that, not the path
    (a sweep extended later may rename its record files), is what identifies the original."""
    from csp_ablate.atomic import write_json_atomic
    from csp_ablate.record import RECORD_FILE

    source, out_dir = Path(source), Path(out_dir)
    rec = dict(rec)
    origin = rec.get("reused_from")
    if not origin or str(origin).startswith(f"{out_dir.parent.name}/"):
        # an original, or a copy whose original was in this very sweep dir (deleted since): the
        # copy becomes the origin, so the note never points back into the sweep it is written to
        origin = f"{source.parent.parent.name}/{source.parent.name}/{source.name}"
    rec.update(sweep=sweep, reused_from=origin)
    wandb_dir = rec.get("wandb_dir")
    if isinstance(wandb_dir, str) and wandb_dir and not Path(wandb_dir).is_absolute():
        rec["wandb_dir"] = os.path.relpath((source.parent / wandb_dir).resolve(), out_dir.resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RECORD_FILE, rec)
    return rec


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


def exit_if_launcher_gone(code: int) -> None:
    """End this process now when it is a sweep worker whose launcher has died.

    Why: ``kill -TERM -- -<pgid>`` stops a joblib sweep by signalling the launcher and its
    workers together. The launcher dies at once; each worker's job stops at the next training
    step and saves ``last.ckpt`` (or, signalled during its final evaluation, finishes and writes
    its record), and then loky's worker loop, which caught the job's ``SystemExit``, waits for
    the next task from a launcher that is gone: an idle process and its ``wandb-core``
    lingering for minutes in the sweep's process group. :func:`csp_ablate.__main__.main` calls
    this after every multirun job. A process with no parent process (a plain run, a SLURM job,
    a DDP rank Lightning started) or a live parent (the launcher gets the job's outcome)
    returns.
    """
    import multiprocessing
    import sys

    parent = multiprocessing.parent_process()
    if parent is None or os.getppid() == parent.pid:
        return
    log.warning("the sweep launcher (pid %d) is gone: this worker exits (code %d) instead of waiting for it",
                parent.pid, code)
    if "wandb" in sys.modules:  # the W&B run is finished; end wandb's service as its atexit hook would
        try:
            sys.modules["wandb"].teardown()
        except Exception:  # noqa: BLE001  (exiting anyway; the service also watches its parent)
            pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def skip_if_done(cfg: DictConfig, force: bool = False) -> dict[str, Any] | None:
    """In a multirun: the completed record of this grid point, if any and not ``force`` (then
    the job is skipped): in this sweep dir, else copied from another sweep dir of the tier.
    Otherwise clear this job's dir of another grid point's finished record."""
    from hydra.core.hydra_config import HydraConfig

    from csp_ablate.record import config_hash, output_dir, quality_text

    chash, seed = config_hash(cfg), int(cfg.seed)
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    done = None if force else find_completed(sweep_dir, chash, seed)
    if done is None and not force:
        found = find_in_tier(sweep_dir, chash, seed, str(cfg.tier))
        if found is not None:
            displace_foreign_record(output_dir(cfg), chash, seed)
            rec = reuse_record(*found, output_dir(cfg), cfg.get("sweep"))
            line = (f"[csp_ablate] reused: {rec.get('run_id')} ({quality_text(rec)}) completed in "
                    f"{rec['reused_from']}, same config hash and seed | force=true retrains it")
            log.info(line)
            print(line, flush=True)
            return rec
    if done is None:
        displace_foreign_record(output_dir(cfg), chash, seed)
        from csp_ablate import checkpoint  # imports torch: only for a job that is about to train

        out, fp = output_dir(cfg), checkpoint.fingerprint(cfg)
        if force and cfg.get("checkpoint") is not None:  # retrain: never resume a saved state
            with open_dict(cfg):
                cfg.checkpoint.resume = False
        ck = cfg.get("checkpoint") or {}
        mode = str(ck.get("resume", "auto")).lower()
        with checkpoint.sweep_state_lock(sweep_dir):
            checkpoint.set_aside_other_runs_state(out, fp)
            if ck.get("enabled", True) and mode in ("auto", "true", "yes", "on"):
                checkpoint.adopt_own_state(out, sweep_dir, fp)  # a narrower relaunch renumbers jobs
            elif ck.get("enabled", True) and mode in ("false", "no", "off", "never"):
                checkpoint.discard_other_states(out, sweep_dir, fp)  # restarted on purpose
        return None
    rec = json.loads(done.read_text())
    line = (f"[csp_ablate] skipped: {rec.get('run_id')} already completed ({quality_text(rec)}) | "
            f"record: {done} (force=true reruns it)")
    log.info(line)
    print(line, flush=True)
    return rec
