"""An exclusive lock on a sweep dir or a run dir: one launch writes into a dir at a time.

Two sweeps into one dir would run every job twice, clobber Lightning's ``metrics.csv`` and
record spurious failures. The lock is ``<dir>/.csp_ablate.lock``: an ``fcntl.flock`` held for
the life of the launch, plus the holder's pid, host, start time and command written inside, so
the refusal names who holds it. A lock whose holder died is free again by itself (the kernel
drops a dead process's flock), so a stale file is simply taken over and the takeover logged.
The descriptor is close-on-exec, so a relaunched or spawned child never keeps a dead launcher's
lock alive.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from csp_ablate.errors import ConfigError

log = logging.getLogger("csp_ablate")
LOCK_NAME = ".csp_ablate.lock"


class DirBusy(ConfigError):
    """Another live process holds the lock of this dir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read_holder(directory: Path) -> dict[str, Any]:
    """The holder recorded in ``directory``'s lock file ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(directory) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (no holder recorded)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started_at')}"
            f" ({holder.get('command', '?')})")


class DirLock:
    """``with DirLock(dir, what="sweep"):`` holds ``dir``'s lock or raises :class:`DirBusy` at once."""

    def __init__(self, directory: Path, what: str = "run") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    def acquire(self) -> DirLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = read_holder(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = read_holder(self.directory)
            raise DirBusy(
                f"The {self.what} dir {self.directory} is busy: it is locked by {_describe(holder)}. "
                f"Two launches into one dir would run the same jobs twice and overwrite each "
                f"other's logs. Wait for it to finish (or stop it), or use another dir "
                f"(hydra.sweep.dir=... / hydra.run.dir=...). Lock file: {self.path}."
            ) from None
        if previous and previous.get("pid") != os.getpid():
            state = "dead" if previous.get("host") == platform.node() and not _pid_alive(
                int(previous.get("pid") or 0)) else "gone"
            log.warning("took over the stale lock of %s (%s, %s)", self.directory, _describe(previous), state)
        holder = {"pid": os.getpid(), "host": platform.node(),
                  "started_at": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(["python", *sys.argv])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file: nobody holds it
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
