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

    The claims pool the variance across a sweep's rows instead (csp_ablate.report.verdicts);
    Welch stays for two rows on their own and for fps. The half-width is NaN when either side
    has fewer than 2 runs, 0 when both have no spread.
    """
    from csp_ablate.report.verdicts import welch_evidence

    ev = welch_evidence(list(values), list(baseline))
    lo, hi = ev.interval(confidence)
    return ev.delta, (hi - lo) / 2 if math.isfinite(lo) else math.nan
