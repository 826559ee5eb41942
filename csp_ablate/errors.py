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
