"""Atomic file writes: a temp file in the target's directory, fsync, then ``os.replace``.

A reader (or a sweep killed mid-write) never sees half a CSV: either the old file or the new
one. Temp files are dot-files (``.<name>.*.tmp``), removed on any error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: Path, frame, **kwargs) -> Path:
    """``frame.to_csv`` through a temp file (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def write_with(path: Path, writer: Callable[[Path], None]) -> Path:
    """Let ``writer(tmp_path)`` produce the file (e.g. ``fig.savefig``), then rename it in."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
