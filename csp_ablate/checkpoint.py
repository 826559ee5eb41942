"""Checkpoints and resume: a relaunched run continues where it stopped, or says why it cannot.

Every run keeps two checkpoints in ``<output_dir>/checkpoints/``:

- ``last.ckpt``: every ``checkpoint.every_n_train_steps`` optimizer steps, at each epoch end,
  at the end of training, and when the run is stopped by SIGTERM (a preempted or cancelled
  job stops at the next step boundary and saves first). This is what a relaunch resumes from.
- ``best.ckpt``: the best ``checkpoint.monitor`` so far (``val/top1``), saved after validation.

Relaunching the same run (same output dir: ``hydra.run.dir=<dir>``, or the same sweep job dir,
which is what Hydra's submitit launcher reuses when it requeues a job) resumes from
``last.ckpt`` with Lightning's ``ckpt_path``: weights, optimizer, LR scheduler, step counters
and the best-checkpoint bookkeeping are restored, so the run ends at the same step count with
the LR schedule continuing. Resume is exact (bit-identical to an uninterrupted run): the train
order is a function of (seed, epoch) whose position the datamodule saves in the checkpoint, and
:class:`LastCheckpoint` saves and restores every RNG state (:mod:`csp_ablate.data.sampling`).
``checkpoint.resume``: ``auto`` (resume when ``last.ckpt``
exists), ``false`` (start over; the run's checkpoints are overwritten) or a path.

A checkpoint that cannot be read (truncated, corrupt, written by a different configuration) is
a :class:`ConfigError` naming the file and both ways out -- never a silent restart. Files are
written atomically (temp file + rename) so a kill during a save leaves the previous checkpoint,
and loaded with ``weights_only=True``. Each launch appends one line to
``checkpoints/launches.jsonl`` (the evidence that, and from where, a run resumed).

In a multirun, Hydra names job dirs by grid position, so a sweep extended into the same dir
with other seeds or rows puts a grid point into a dir holding another grid point's state. That
is a collision, not a user's mistake: :func:`set_aside_other_runs_state` moves the other run's
``checkpoints/`` and ``csv/`` to ``checkpoints.<its fingerprint>/`` and ``csv.<its fingerprint>/``
(kept, never resumed into the wrong experiment), as ``csp_ablate.__main__`` does with its
finished ``record.json``. A single run (``hydra.run.dir``) keeps the clear error above.

The same numbering moves a stopped run: relaunched with a narrower grid (only the missing
seeds or rows, as the seed planner launches them), it gets another job dir than the one
holding its ``last.ckpt``. :func:`adopt_own_state` brings that state home (the most advanced
``last.ckpt`` of this fingerprint in any job dir of the sweep, set aside or not, with its
``launches.jsonl`` and curves), so the run resumes instead of starting over. Before it did,
Table 2's fourth launch restarted two runs stopped at steps 637 and 426 from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from csp_ablate.data.sampling import rng_state, set_rng_state
from csp_ablate.errors import ConfigError
from csp_ablate.identity import fingerprint  # noqa: F401  (re-exported: one identity, with seed)
from csp_ablate.record import now_iso

log = logging.getLogger("csp_ablate")

CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"
HISTORY = "launches.jsonl"
STAMP_KEY = "csp_ablate"  # our entry in every checkpoint: which experiment wrote it
RESUME_MODES = ("auto", "true", "false", "<path to a .ckpt>")

def checkpoint_dir(out: Path) -> Path:
    return Path(out) / CKPT_DIR


def _restart_hint(path: Path) -> str:
    return (
        f"To start this run over, relaunch with checkpoint.resume=false (its checkpoints are "
        f"overwritten) or delete {path}; to resume from another checkpoint pass "
        f"checkpoint.resume=<path>. Other runs' records are not touched."
    )


def inspect_checkpoint(path: Path, expected_fingerprint: str | None) -> dict[str, Any]:
    """Open ``path`` as a resumable Lightning checkpoint; ConfigError if it is not one.

    ``mmap=True`` reads the archive's index and the small objects, not the tensor data, so
    this check costs milliseconds even for a large model.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint.resume={path}: no such checkpoint file. {_restart_hint(path)}")
    if not zipfile.is_zipfile(path):  # torch.save's format is a zip: a cut file loses its index
        raise ConfigError(
            f"Cannot resume from {path}: the checkpoint is corrupt or truncated (not a complete "
            f"checkpoint archive, {path.stat().st_size} bytes). {_restart_hint(path)}"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # zip/pickle errors come in many types
        raise ConfigError(
            f"Cannot resume from {path}: the checkpoint is corrupt or truncated "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). {_restart_hint(path)}"
        ) from err
    missing = [k for k in ("state_dict", "loops", "global_step", "optimizer_states") if k not in ckpt]
    if not isinstance(ckpt, dict) or missing:
        raise ConfigError(
            f"Cannot resume from {path}: not a full Lightning training checkpoint (missing "
            f"{missing}). {_restart_hint(path)}"
        )
    stamp = ckpt.get(STAMP_KEY) or {}
    written_by = stamp.get("fingerprint")
    if expected_fingerprint and written_by and written_by != expected_fingerprint:
        raise ConfigError(
            f"Cannot resume from {path}: it was written by a different experiment (fingerprint "
            f"{written_by}, run {stamp.get('run_id')}); this configuration is {expected_fingerprint}. "
            f"Use a new output dir (hydra.run.dir=...) for a changed configuration. {_restart_hint(path)}"
        )
    return {"global_step": int(ckpt["global_step"]), "epoch": int(ckpt.get("epoch", 0)), "stamp": stamp}


def resume_path(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint this launch resumes from, per ``checkpoint.resume``; None: start fresh."""
    ck = cfg.get("checkpoint") or {}
    mode = ck.get("resume", "auto")
    if mode is None or mode is False or str(mode).lower() in ("false", "no", "off", "never"):
        return None
    last = checkpoint_dir(out) / LAST
    if mode is True or str(mode).lower() in ("auto", "true", "yes", "on"):
        if last.exists():
            return last
        if mode is True or str(mode).lower() in ("true", "yes", "on"):
            log.info("checkpoint.resume=true but %s does not exist yet: starting fresh", last)
        return None
    path = Path(str(mode)).expanduser()
    if not path.suffix == ".ckpt" and not path.is_file():
        raise ConfigError.bad_value("checkpoint.resume", mode, RESUME_MODES)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves via a temp file + rename (a kill mid-save keeps the old file); loads weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)


class LastCheckpoint(L.Callback):
    """``last.ckpt`` every N steps, at epoch end, at the end of training, on SIGTERM and Ctrl-C.

    Also stamps every checkpoint the trainer writes (``best.ckpt`` too) with the experiment's
    fingerprint and run id, so a relaunch can refuse a checkpoint of another experiment, and
    with every global RNG state (python, numpy, torch, CUDA), which a resumed run restores
    just before its first step: together with the seeded, resumable train order
    (:mod:`csp_ablate.data.sampling`) the relaunch trains the same steps on the same batches
    with the same random draws, and ends bit-identical to an uninterrupted run.

    Ctrl-C (SIGINT) during training is turned into Lightning's graceful stop, as SIGTERM is:
    the run stops at the next step boundary, saves ``last.ckpt`` and then raises
    KeyboardInterrupt; a second Ctrl-C stops at once, without a checkpoint.
    """

    def __init__(self, path: Path, every_n_train_steps: int | None, stamp: dict[str, Any]) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = int(every_n_train_steps or 0)
        self.stamp = dict(stamp)
        self._prior_time = float(self.stamp.get("train_time_s") or 0.0)  # earlier launches
        self._t0 = time.perf_counter()
        self._saved_step = -1
        self._rng_to_restore: dict[str, Any] | None = None
        self._sigint_before = None
        self.stopped_by: str | None = None  # "SIGINT" when Ctrl-C asked for the stop

    def _save(self, trainer: L.Trainer, why: str) -> None:
        if trainer.global_step == self._saved_step or trainer.sanity_checking:
            return
        trainer.save_checkpoint(str(self.path), weights_only=False)  # the full training state
        self._saved_step = trainer.global_step
        log.debug("saved %s at step %d (%s)", self.path, trainer.global_step, why)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_step = trainer.global_step  # a resumed run does not re-save what it loaded
        self._install_sigint(trainer)

    # ---- Ctrl-C: a graceful stop, like SIGTERM ------------------------------------------
    def _install_sigint(self, trainer: L.Trainer) -> None:
        def on_sigint(signum, frame) -> None:
            if self.stopped_by is not None:  # second Ctrl-C: the user does not want to wait
                raise KeyboardInterrupt
            connector = getattr(trainer, "_signal_connector", None)  # private: guard an upgrade
            if connector is None:
                raise KeyboardInterrupt
            self.stopped_by = "SIGINT"
            # Lightning's own SIGTERM flag: it stops at the next step boundary (all DDP ranks)
            connector.received_sigterm = True
            log.warning("Ctrl-C: stopping at the next step boundary to save a checkpoint "
                        "(Ctrl-C again stops at once, without one)")

        try:
            self._sigint_before = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: keep Python's default (KeyboardInterrupt)
            self._sigint_before = None

    def _restore_sigint(self) -> None:
        if self._sigint_before is not None:
            try:
                signal.signal(signal.SIGINT, self._sigint_before)
            except ValueError:
                pass
            self._sigint_before = None

    # ---- saving ---------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:  # first step after a resume: the saved draws
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self._save(trainer, "interval")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, "epoch end")

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, "end of training")
        self._restore_sigint()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # SIGTERM (and Ctrl-C, see above) is honoured at a step boundary (Lightning raises it
        # between steps), so the state is consistent; any other exception may be mid-step:
        # keep the last good file.
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            why = self.stopped_by or "SIGTERM"
            self._save(trainer, why)
            log.warning(
                "stopped by %s at step %d; saved %s. Relaunch the same command (same output "
                "dir) to resume.", why, trainer.global_step, self.path,
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        elapsed = self._prior_time + time.perf_counter() - self._t0  # summed over launches
        checkpoint[STAMP_KEY] = {**self.stamp, "train_time_s": round(elapsed, 2), "saved_at": now_iso(),
                                 "rng": rng_state()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = (checkpoint.get(STAMP_KEY) or {}).get("rng")


class PreemptionSignal(L.Callback):
    """Under submitit, turn its preemption/timeout signal (USR2) into a graceful stop.

    submitit's own handler requeues the job and exits at once, possibly mid-step. This one
    remembers the signal and raises SIGTERM on the process instead, which Lightning honours at
    the next step boundary (all DDP ranks together); :class:`LastCheckpoint` saves, and the
    training code then calls submitit's handler (:meth:`requeue`) to requeue and exit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.signum = signal.SIGUSR2 if hasattr(signal, "SIGUSR2") else None
        self._original = None
        self.pending = False

    def _handler(self, signum, frame) -> None:
        log.warning("received %s (preemption/timeout): stopping at the next step boundary", signal.Signals(signum).name)
        self.pending = True
        signal.raise_signal(signal.SIGTERM)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.signum is not None:
            self._original = signal.getsignal(self.signum)
            signal.signal(self.signum, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore()

    def restore(self) -> None:
        if self.signum is not None and self._original is not None:
            signal.signal(self.signum, self._original)
            self._original = None

    def requeue(self) -> None:
        """Hand over to the handler that was installed before (submitit: checkpoint + requeue)."""
        original, self._original = self._original, None
        if self.signum is not None and original is not None:
            signal.signal(self.signum, original)
        if callable(original):
            original(self.signum, None)


def build_callbacks(cfg: DictConfig, out: Path, stamp: dict[str, Any]) -> list[L.Callback]:
    """The checkpoint callbacks of a run (``checkpoint.enabled=false``: none)."""
    ck = cfg.get("checkpoint") or {}
    if not ck.get("enabled", True):
        return []
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckdir = checkpoint_dir(out)
    callbacks: list[L.Callback] = [LastCheckpoint(ckdir / LAST, ck.get("every_n_train_steps"), stamp)]
    if ck.get("monitor"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckdir), filename=Path(BEST).stem, monitor=ck.monitor, mode=ck.get("mode", "max"),
                save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
            )
        )
    if os.environ.get("SUBMITIT_EXECUTOR"):
        callbacks.append(PreemptionSignal())
    return callbacks


def append_history(out: Path, entry: dict[str, Any]) -> None:
    """One JSON line per launch event in ``checkpoints/launches.jsonl`` (rank 0 only)."""
    path = checkpoint_dir(out) / HISTORY
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"at": now_iso(), "host": platform.node(), **entry}, default=str) + "\n")


def set_aside_other_runs_state(out: Path, expected_fingerprint: str) -> list[Path]:
    """Move ``checkpoints/`` and ``csv/`` of another experiment out of this job dir's way.

    "Another experiment" is what the last launch in ``checkpoints/launches.jsonl`` says; with no
    history (nothing to go by) nothing moves and the resume check decides. Returns the new paths.
    """
    out = Path(out)
    starts = [h for h in read_history(out) if h.get("event") == "start" and h.get("fingerprint")]
    if not starts or starts[-1]["fingerprint"] == expected_fingerprint:
        return []
    other = starts[-1]["fingerprint"]
    moved = []
    for name in (CKPT_DIR, "csv"):
        src = out / name
        if not src.exists():
            continue
        dst, n = out / f"{name}.{other}", 1
        while dst.exists():  # set aside before: never overwrite
            n += 1
            dst = out / f"{name}.{other}.{n}"
        os.replace(src, dst)
        moved.append(dst)
    log.warning("job dir %s held the checkpoints of another experiment (fingerprint %s; this one is %s): "
                "kept as %s", out, other, expected_fingerprint, ", ".join(p.name for p in moved))
    return moved


STATE_LOCK = ".csp_ablate.state.lock"


@contextmanager
def sweep_state_lock(sweep_dir: Path) -> Iterator[None]:
    """Serialise the moves of job state between a sweep's job dirs (two jobs start at once).

    A blocking ``flock`` on ``<sweep_dir>/.csp_ablate.state.lock``, held for the milliseconds
    of :func:`set_aside_other_runs_state` + :func:`adopt_own_state`: without it a job could
    adopt a dir that another job is setting aside at the same moment.
    """
    import fcntl

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / STATE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _last_fingerprint(ckdir: Path) -> str | None:
    """The fingerprint of the last launch that started in this checkpoint dir (None: no history)."""
    starts = [h for h in _read_history_file(ckdir / HISTORY) if h.get("event") == "start"]
    return starts[-1].get("fingerprint") if starts else None


def _free_name(path: Path) -> Path:
    """``path`` itself, or ``path.2``, ``path.3``...: the first name not taken (never overwrite)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def adopt_own_state(out: Path, sweep_dir: Path, expected_fingerprint: str) -> Path | None:
    """Move this run's most advanced ``last.ckpt`` from another job dir of the sweep into ``out``.

    Only when ``out`` has no ``last.ckpt`` of its own. Candidates are ``checkpoints/`` dirs whose
    last launch was this fingerprint and ``checkpoints.<this fingerprint>[.n]/`` dirs set aside
    by :func:`set_aside_other_runs_state`; each is checked with :func:`inspect_checkpoint` (a
    corrupt one is named and left where it is). The whole dir moves (``launches.jsonl`` with it,
    so the record's ``launches`` stay complete), with the matching ``csv`` dir; anything this
    run left in ``out`` without a checkpoint is kept beside as ``<name>.unsaved``. The W&B files
    of the earlier launches stay in their dir; the resumed launch continues the same W&B run.
    Returns the dir the state came from, or None. Call it under :func:`sweep_state_lock`.
    """
    out, sweep_dir = Path(out), Path(sweep_dir)
    if (checkpoint_dir(out) / LAST).exists():
        return None
    candidates: list[tuple[int, str, Path]] = []
    for ckdir in sorted(sweep_dir.glob(f"*/{CKPT_DIR}*")):
        if ckdir.parent == out or not (ckdir / LAST).is_file():
            continue
        if ckdir.name == CKPT_DIR:
            if _last_fingerprint(ckdir) != expected_fingerprint:
                continue
        elif not (ckdir.name == f"{CKPT_DIR}.{expected_fingerprint}"
                  or ckdir.name.startswith(f"{CKPT_DIR}.{expected_fingerprint}.")):
            continue
        try:
            info = inspect_checkpoint(ckdir / LAST, expected_fingerprint)
        except ConfigError as err:
            log.warning("not adopting %s: %s", ckdir / LAST, err)
            continue
        candidates.append((info["global_step"], str(ckdir), ckdir))
    if not candidates:
        return None
    step, _, src = max(candidates)
    csv_src = src.parent / ("csv" + src.name[len(CKPT_DIR):])
    for name in (CKPT_DIR, "csv"):  # what this run wrote here without saving a checkpoint
        if (out / name).exists():
            os.replace(out / name, _free_name(out / f"{name}.unsaved"))
    out.mkdir(parents=True, exist_ok=True)
    os.replace(src, checkpoint_dir(out))
    if csv_src.is_dir():
        os.replace(csv_src, out / "csv")
    append_history(out, {"event": "adopted", "from": os.path.relpath(src, out), "step": step})
    log.warning("this run's checkpoint (step %d) was in %s, another job dir of the sweep (a relaunch "
                "with another grid numbers its jobs differently): moved here to resume", step, src)
    return src


def _read_history_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for ln in path.read_text().splitlines():
        if not ln.strip():
            continue
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:  # a line cut by a kill: skip it, keep the rest
            continue
    return rows


def read_history(out: Path) -> list[dict[str, Any]]:
    return _read_history_file(checkpoint_dir(out) / HISTORY)


def launches_of_this_run(out: Path) -> list[dict[str, Any]]:
    """Every launch that trained this run's final weights (the record's ``launches``).

    Starts since the last fresh one (a start from step 0: ``checkpoint.resume=false``
    restarts the history of the weights), each with its git SHA, diff hash and resume step.
    """
    starts = [h for h in read_history(out) if h.get("event") == "start"]
    fresh = max((i for i, h in enumerate(starts) if not h.get("start_step")), default=0)
    return [
        {"git_sha": h.get("git_sha"), "diff_sha256": h.get("diff_sha256"),
         "resumed_from_step": h.get("start_step") or None, "threads": h.get("threads"),
         "started_at": h.get("at"), "host": h.get("host")}
        for h in starts[fresh:]
    ]

