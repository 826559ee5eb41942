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
holding its ``last.ckpt``. :func:`adopt_own_state` makes the run's own ``checkpoints/`` its most
advanced state anywhere in the sweep dir (set aside or not, with its ``launches.jsonl`` and
curves), so the run resumes instead of starting over. Before it did, Table 2's fourth launch
restarted two runs stopped at steps 637 and 426 from scratch. A run restarted on purpose in a
multirun (``force=true`` or ``checkpoint.resume=false``) renames its other states to
``discarded.checkpoints.<fingerprint>`` (:func:`discard_other_states`), so a later relaunch never
resumes what that launch threw away. All of these moves run under :func:`sweep_state_lock`.
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


def _free_suffix(parent: Path, names: tuple[str, ...], base: str) -> str:
    """``""``, ``".2"``, ``".3"``...: the first suffix for which ``<name><base><suffix>`` is free
    for every name, so a run's ``checkpoints.X.n`` and ``csv.X.n`` keep one number (never overwrite)."""
    n = 1
    while True:
        suffix = "" if n == 1 else f".{n}"
        if not any((parent / f"{name}{base}{suffix}").exists() for name in names):
            return suffix
        n += 1


def _move_state(src_parent: Path, src_suffix: str, dst_parent: Path, dst_suffix: str,
                dst_prefix: str = "") -> list[Path]:
    """Move ``checkpoints<src_suffix>`` and ``csv<src_suffix>`` (those present) as one pair, to
    ``<dst_prefix><name><dst_suffix>``."""
    moved = []
    for name in (CKPT_DIR, "csv"):
        src = src_parent / f"{name}{src_suffix}"
        if src.exists():
            dst = dst_parent / f"{dst_prefix}{name}{dst_suffix}"
            os.replace(src, dst)
            moved.append(dst)
    return moved


def set_aside_other_runs_state(out: Path, expected_fingerprint: str) -> list[Path]:
    """Move ``checkpoints/`` and ``csv/`` of another experiment out of this job dir's way.

    "Another experiment" is what the last launch in ``checkpoints/launches.jsonl`` says; with no
    history (nothing to go by) nothing moves and the resume check decides. Both go to
    ``<name>.<its fingerprint>[.n]`` with one shared ``n``. Returns the new paths.
    """
    out = Path(out)
    other = _last_fingerprint(checkpoint_dir(out))
    if other is None or other == expected_fingerprint:
        return []
    suffix = _free_suffix(out, (CKPT_DIR, "csv"), f".{other}")
    moved = _move_state(out, "", out, f".{other}{suffix}")
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
    starts = [h for h in _read_history_file(ckdir / HISTORY) if h.get("event") == "start" and h.get("fingerprint")]
    return starts[-1]["fingerprint"] if starts else None


def _states_of(sweep_dir: Path, fp: str) -> list[tuple[Path, str]]:
    """Every saved state of run ``fp`` in the sweep's job dirs: ``(job dir, suffix)`` of each
    ``checkpoints<suffix>/last.ckpt``, from ``checkpoints/`` (last launch was ``fp``) or set aside
    as ``checkpoints.<fp>[.n]/``. Discarded states (``discarded.checkpoints.*``) never match."""
    found = []
    for ckdir in sorted(Path(sweep_dir).glob(f"*/{CKPT_DIR}*")):
        if not (ckdir / LAST).is_file():
            continue
        suffix = ckdir.name[len(CKPT_DIR):]
        if suffix == "":
            if _last_fingerprint(ckdir) != fp:
                continue
        elif not (suffix == f".{fp}" or suffix.startswith(f".{fp}.")):
            continue
        found.append((ckdir.parent, suffix))
    return found


def adopt_own_state(out: Path, sweep_dir: Path, expected_fingerprint: str) -> Path | None:
    """Make ``out/checkpoints/`` this run's most advanced saved state in the whole sweep dir.

    Candidates (:func:`_states_of`): this run's ``checkpoints/`` in any job dir, and its states set
    aside by :func:`set_aside_other_runs_state` (``checkpoints.<fp>[.n]``, in ``out`` too), each
    checked with :func:`inspect_checkpoint` (a corrupt one is named and left where it is). The
    highest ``global_step`` wins; on a tie ``out``'s own ``checkpoints/`` stays. The winner moves
    in as a whole (``launches.jsonl`` with it, so the record's ``launches`` stay complete) with
    its ``csv`` dir of the same suffix; what ``out`` held before is kept beside, as
    ``<name>.<fp>[.n]`` when it had a ``last.ckpt`` (a less advanced state), else as
    ``<name>.unsaved[.n]``. The W&B files of the earlier launches stay in their dir; the resumed
    launch continues the same W&B run. Returns the dir the state came from, or None (nothing
    moved). Call it under :func:`sweep_state_lock`.
    """
    out, sweep_dir = Path(out), Path(sweep_dir)
    fp = expected_fingerprint
    candidates: list[tuple[int, int, Path, str]] = []
    home = checkpoint_dir(out) / LAST
    if home.is_file():
        try:
            candidates.append((inspect_checkpoint(home, fp)["global_step"], 1, out, ""))
        except ConfigError:
            return None  # the resume check stops the run naming this file and the ways out
    for job_dir, suffix in _states_of(sweep_dir, fp):
        if suffix == "" and job_dir.resolve() == out.resolve():
            continue  # home, above
        last = job_dir / f"{CKPT_DIR}{suffix}" / LAST
        try:
            step = inspect_checkpoint(last, fp)["global_step"]
        except ConfigError as err:
            log.warning("not adopting %s: %s", last, err)
            continue
        candidates.append((step, 0, job_dir, suffix))
    if not candidates:
        return None
    step, is_home, src_dir, src_suffix = max(candidates, key=lambda c: (c[0], c[1]))
    if is_home:
        return None
    if checkpoint_dir(out).exists() or (out / "csv").exists():  # this run's own: behind, or never saved
        own_saved = (checkpoint_dir(out) / LAST).is_file()
        base = f".{fp}" if own_saved else ".unsaved"
        _move_state(out, "", out, base + _free_suffix(out, (CKPT_DIR, "csv"), base))
    out.mkdir(parents=True, exist_ok=True)
    src = src_dir / f"{CKPT_DIR}{src_suffix}"
    _move_state(src_dir, src_suffix, out, "")
    append_history(out, {"event": "adopted", "from": os.path.relpath(src, out), "step": step})
    log.warning("this run's most advanced checkpoint (step %d) was %s (a relaunch with another grid "
                "numbers its jobs differently): moved into %s to resume", step, src, checkpoint_dir(out))
    return src


def discard_other_states(out: Path, sweep_dir: Path, expected_fingerprint: str) -> list[Path]:
    """A run restarted on purpose (``checkpoint.resume=false`` or ``force=true`` in a multirun):
    rename its saved states in other job dirs to ``discarded.checkpoints.<fp>[.n]`` (and the
    matching ``csv``), so a later relaunch never adopts what this launch chose to throw away.
    Kept on disk, never deleted. Call it under :func:`sweep_state_lock`."""
    out, fp, moved = Path(out), expected_fingerprint, []
    for job_dir, suffix in _states_of(sweep_dir, fp):
        if job_dir.resolve() == out.resolve() and suffix == "":
            continue  # the restarted run's own dir: overwritten by its fresh start
        dst_suffix = f".{fp}" + _free_suffix(job_dir, ("discarded." + CKPT_DIR, "discarded.csv"), f".{fp}")
        moved += _move_state(job_dir, suffix, job_dir, dst_suffix, dst_prefix="discarded.")
    if moved:
        log.warning("restarting this run from scratch: its earlier saved state elsewhere in the sweep "
                    "is kept as %s and will not be resumed", ", ".join(str(p) for p in moved))
    return moved


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

