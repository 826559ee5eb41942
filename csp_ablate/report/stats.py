"""Student-t confidence intervals (scipy's t distribution; no torch, so the report runs anywhere)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy.stats import t as student_t

CONFIDENCE = 0.95


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t with ``df`` (> 0, may be fractional: Welch) degrees of freedom."""
    if not 0.0 < q < 1.0 or not df > 0:
        raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    return float(student_t.ppf(q, df))


def _clean(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """``(mean, half-width of the t-interval, n)``; the half-width is NaN when n < 2."""
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, n
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    return mean, t_ppf(0.5 + confidence / 2.0, n - 1) * sem, n


def welch_delta_ci(
    values: Iterable[float], baseline: Iterable[float], confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """``(mean(values) - mean(baseline), half-width)`` of Welch's t-interval.

    Unpaired on purpose: a seed fixes a run's initialisation and data order, but two different
    architectures draw different weights from it, so runs with the same seed are not pairs.
    The half-width is NaN when either side has fewer than 2 runs, 0 when both have no spread.
    """
    x, y = _clean(values), _clean(baseline)
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan
    delta = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return delta, math.nan
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = vx + vy
    if se2 == 0.0:
        return delta, 0.0
    df = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return delta, t_ppf(0.5 + confidence / 2.0, df) * math.sqrt(se2)
