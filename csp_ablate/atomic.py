"""Atomic file writes: a temp file in the target's directory, fsync, then ``os.replace``.

Every record, report table, fidelity table and plot goes through here, so a reader (or a sweep
killed mid-write) never sees half a file: either the old one or the new one. Temp files are
dot-files (``.<name>.*.tmp``), removed on any error. The result gets the usual permissions
(0666 less the umask), not ``mkstemp``'s private 0600: results are shared files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp_path, 0o666 & ~_umask())
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


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> Path:
    """``payload`` as indented JSON (non-JSON values via ``str``), one line at the end."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
