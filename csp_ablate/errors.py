"""User-facing errors.

A :class:`ConfigError` carries a one-paragraph message that names the offending key, the bad
value and what is allowed (or how to fix it). The CLI prints it without a traceback and exits
non-zero; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input: unknown choice, out-of-range value, missing or corrupt data."""

    @classmethod
    def bad_value(cls, key: str, value: object, allowed: Iterable[object] | str, hint: str = "") -> "ConfigError":
        allowed_txt = allowed if isinstance(allowed, str) else ", ".join(str(a) for a in allowed)
        msg = f"Invalid value for '{key}': {value!r}. Allowed: {allowed_txt}."
        if hint:
            msg += f" {hint}"
        return cls(msg)


#: Messages of torch's zip writer when the disk fills mid-save (it raises RuntimeError, not OSError).
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed writing")


def describe_failure(err: BaseException, path: object = None) -> str:
    """One line for a failed job's record: the cause in words, naming the file when known.

    A full disk and an unwritable dir are the user's to fix, not bugs: they are named as such
    ("disk full at <path>"), whatever layer raised them (``OSError`` from Python, torch's
    ``RuntimeError("... unexpected pos ...")`` from a checkpoint save). ``path`` is where the
    job was writing, used when the exception does not say.
    """
    import errno
    import shutil

    where = getattr(err, "filename", None) or path
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"disk full at {where}: {err}"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "read-only file system" if err.errno == errno.EROFS else "permission denied"
        return f"cannot write {where} ({reason}): {err}"
    text = str(err)
    if isinstance(err, RuntimeError) and any(s in text for s in _TORCH_WRITE_FAILURES) and path is not None:
        from pathlib import Path

        probe = Path(str(path))
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(str(probe)).free
        except OSError:
            free = None
        if free is not None and free < 64 * 2**20:
            return f"disk full at {path} ({free // 2**20} MiB free): {type(err).__name__}: {text}"
        return f"write failed at {path}: {type(err).__name__}: {text}"
    return f"{type(err).__name__}: {text}"


def raised_by_checkpoint_load(err: BaseException) -> bool:
    """True when ``err`` was raised while loading a checkpoint (Lightning's restore or
    ``torch.load``): a corrupt file, named as such, not a bug."""
    tb = err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if name.endswith(("checkpoint_connector.py", "torch/serialization.py")):
            return True
        tb = tb.tb_next
    return False
