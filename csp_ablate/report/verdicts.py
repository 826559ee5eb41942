"""The claim verdict rule: one rule for every claims file, calibrated, with its power.

A claim compares row ``row`` with row ``vs`` on one metric and states either an effect ``p``
(top-1/AP/AP50 in points, BFLOPs in relative %) or only a direction (increase/decrease). Each
statistical claim carries a margin δ fixed in the sweep spec before any run (defaults
:data:`DEFAULT_MARGINS`: top-1 0.5 point, AP/AP50 1.0 point): the smallest difference that
matters, and the tolerance around the paper's value. All tests are at α = 0.05.

Variance model (why not Welch on 3 vs 3)
    Every row of a sweep trains with the same recipe, data and seeds, so the seed-to-seed
    variance is a property of the recipe more than of the row. We pool the within-row variance
    of the metric across all rows of the sweep (one-way ANOVA's residual mean square:
    ``s² = Σ_rows Σ_seeds (x - x̄_row)² / (N - k)``, df = N - k; 26 for Table 1 with 13 rows × 3
    seeds), and a difference of two rows has ``se = s · sqrt(1/n + 1/n_vs)``. Welch on 3 vs 3
    seeds has ~4 df, a t quantile of 2.78 instead of 2.06 and a variance estimate that is itself
    off by a factor of 2 or more. Pooling needs similar seed variance across rows; Bartlett's
    test on the committed proxy records does not reject it (Table 1 p = 0.48, Table 2 AP
    p = 0.39, AP50 p = 0.64); claims.md prints the test for every sweep. Runs that share a seed
    are not paired: a seed gives two architectures different initial weights, and nothing shows
    that their errors correlate, so the design is unpaired. fps is the exception: its n is the
    rounds of the quiet fps pass (csp_ablate.report.quiet_fps), its timing noise is each
    configuration's own and differs between rows (on the in-sweep fps of 2026-11-24's Table 2,
    Bartlett p = 0.007), and its claims are judged on the sign only, so fps uses Welch's interval
    (:func:`welch_evidence`, checked against scipy's ``ttest_ind``).

Rule (``d`` our difference, ``[lo, hi]`` its 95 % t-interval)
    * claim of an effect ``|p| >= δ``: **reproduced** if the interval excludes 0 on the paper's
      side and reaches ``[p - δ, p + δ]`` (not contradicted); **contradicted** if the interval
      lies outside ``[p - δ, p + δ]`` (the paper's value is excluded by more than δ, either way).
    * claim of "no loss / only 0.1", ``|p| < δ``: **reproduced** if the equivalence test (TOST,
      two one-sided t-tests at α = 0.05, i.e. the 90 % interval) puts the effect within
      ``p ± δ``; **contradicted** as above.
    * direction claim: **reproduced** if the interval lies on the claimed side of 0,
      **contradicted** if it lies on the other side.
    * otherwise, or with no interval (fewer than 2 seeds in the whole sweep), **inconclusive**,
      and the reason says how many seeds per row (fps: rounds of the quiet fps pass) would resolve
      the claim.
    Calibration (tests/test_calibration.py drives this code on synthetic records): with no true
    effect a claim of ``|p| >= δ`` is reproduced with probability <= 2.5 % (one side of a 95 %
    interval); with the true effect equal to the paper's, any claim is contradicted with
    probability <= 5 %.
    ``verdict_holm`` applies Holm's step-down correction (statsmodels ``multipletests``) to the
    p-values of reproduction and of contradiction across the statistical claims of one file; it
    can only turn a verdict into inconclusive.

Power
    ``mde80``: the smallest true difference that this n (and the pooled df) reproduces with 80 %
    power (the interval excludes 0 on its side; noncentral t, statsmodels ``ttest_power``).
    ``seeds_needed``: seeds per row (both rows) for 80 % power to reproduce the paper's effect
    (direction claims: an effect of δ; ``|p| < δ`` claims: the TOST power at the truth ``p``,
    by the Bonferroni lower bound ``2·P(one side) - 1``) at the observed pooled SD, the df
    growing with the added runs.

Compute (exact profiler counts, no noise): one tolerance for claims and the fidelity table,
    :func:`judge_compute`. A stated change ``p`` % is **reproduced** when the measured change has
    the same sign and lies within ``±COMPUTE_TOL_PT`` = 4 percentage points (absolute) of it,
    else **contradicted**. The counts are exact; the tolerance is for reading an architecture
    whose cfg is not public from the text (where a transition sits moves a delta by points, see
    FACTS), plus the paper's rounding to whole %. It is a fixed band in points, not a share of
    the claim, because the reading error is in BFLOPs of the baseline whatever the claim's size.
    So −24.5 % vs "−21 %" is reproduced with a residual of −3.5 points and −0.4 % vs "−3 %" with
    +2.6 points: "reproduced" means "the same kind of cut within the reading tolerance", NOT
    "the same number"; the reason prints the residual. A direction claim with ``min_effect``
    needs the sign and at least that size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize
from scipy.stats import t as student_t

ALPHA = 0.05
POWER = 0.80
COMPUTE_TOL_PT = 4.0  # percentage points: see "Compute" above
DEFAULT_MARGINS: dict[str, float] = {"top1": 0.5, "val_top1": 0.5, "ap": 1.0, "ap50": 1.0, "fps": 1.0}
MAX_SEEDS = 100  # seeds_needed beyond this is reported as out of reach (NaN)
VERDICTS = ("reproduced", "contradicted", "inconclusive")
RULE_TEXT = (
    "Verdict rule (csp_ablate/report/verdicts.py), α = 0.05, margin δ per claim fixed in the sweep spec: "
    "a claimed effect |p| ≥ δ is *reproduced* when the 95 % interval of our difference excludes 0 on the "
    "paper's side and reaches p ± δ; a claim |p| < δ (\"no loss / only 0.1\") when the equivalence test "
    "(TOST, 90 % interval) puts it within p ± δ; a direction claim when the interval lies on the claimed "
    "side of 0. *Contradicted*: the interval lies outside p ± δ (direction: on the other side of 0). "
    "Otherwise *inconclusive* (the reason says how many seeds per row, for fps rounds of the quiet fps "
    "pass, would resolve it). Intervals use "
    "the within-row variance pooled across all rows of the sweep (df = runs − rows){welch}. "
    "`verdict_holm`: Holm-adjusted across this file's statistical claims. `mde80`: the smallest true "
    "difference this n reproduces with 80 % power; `seeds_needed`: seeds per row for 80 % power at the "
    "paper's effect (direction claims: at δ). Compute claims are exact counts: reproduced when the sign "
    "matches and ours is within ±{tol:g} percentage points of the stated change (a reading tolerance, not "
    "an exact match), else contradicted; direction-only: the sign and at least the stated minimum."
)


# ---- evidence: a difference, its standard error and degrees of freedom -------------------
@dataclass(frozen=True)
class Evidence:
    delta: float  # mean(row) - mean(vs)
    se: float  # standard error of delta (NaN: no interval)
    df: float
    sigma: float  # per-run SD behind se (pooled, or Welch's rms of the two rows): for power
    n: int
    n_vs: int
    model: str  # "pooled" | "welch"

    def interval(self, level: float = 1 - ALPHA) -> tuple[float, float]:
        if not (self.se >= 0 and self.df > 0):
            return math.nan, math.nan
        half = float(student_t.ppf(0.5 + level / 2, self.df)) * self.se
        return self.delta - half, self.delta + half


def _clean(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)] if arr.ndim == 1 else arr


def pooled_variance(groups: Sequence[np.ndarray]) -> tuple[np.ndarray | float, int]:
    """Within-group variance pooled across ``groups`` and its df (N - k over groups of >= 2).

    Each group is an array of shape ``(..., n_i)`` (the last axis: seeds), so a batch of
    simulated sweeps is pooled in one call. Returns ``(nan, 0)`` when no group has 2 values.
    """
    sums, df = 0.0, 0
    for group in groups:
        g = np.asarray(group, dtype=float)
        if g.ndim == 1:
            g = g[np.isfinite(g)]
        n = g.shape[-1]
        if n < 2:
            continue
        sums = sums + ((g - g.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
        df += n - 1
    if df == 0:
        return math.nan, 0
    return sums / df, df


def pooled_evidence(x, y, var: float, df: int) -> Evidence:
    """The difference ``mean(x) - mean(y)`` with the sweep's pooled variance ``var`` (df ``df``)."""
    x, y = _clean(x), _clean(y)
    if x.size == 0 or y.size == 0:
        return Evidence(math.nan, math.nan, math.nan, math.nan, int(x.size), int(y.size), "pooled")
    se = math.sqrt(var * (1 / x.size + 1 / y.size)) if df > 0 else math.nan
    return Evidence(float(x.mean() - y.mean()), se, float(df), math.sqrt(var) if df > 0 else math.nan,
                    int(x.size), int(y.size), "pooled")


def welch_evidence(x, y) -> Evidence:
    """Welch's unequal-variance difference (Welch-Satterthwaite df); no interval below 2 per side."""
    x, y = _clean(x), _clean(y)
    if x.size == 0 or y.size == 0:
        return Evidence(math.nan, math.nan, math.nan, math.nan, int(x.size), int(y.size), "welch")
    delta = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Evidence(delta, math.nan, math.nan, math.nan, int(x.size), int(y.size), "welch")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = vx + vy
    sigma = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    if se2 == 0.0:
        return Evidence(delta, 0.0, float(x.size + y.size - 2), sigma, int(x.size), int(y.size), "welch")
    df = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return Evidence(delta, math.sqrt(se2), float(df), sigma, int(x.size), int(y.size), "welch")


# ---- what a claim asserts, and its two tests ----------------------------------------------
@dataclass(frozen=True)
class ClaimTest:
    kind: str  # "effect" (|p| >= δ) | "equivalence" (|p| < δ) | "direction"
    target: float  # p; for a direction claim +1 (increase) or -1 (decrease)
    margin: float  # δ

    @property
    def side(self) -> float:
        return math.copysign(1.0, self.target) if self.target != 0 else 1.0

    def describe(self) -> str:
        if self.kind == "direction":
            return "an increase" if self.side > 0 else "a decrease"
        return f"{self.target:+g} ± {self.margin:g}"


def claim_test(paper: float | None, direction: str | None, margin: float) -> ClaimTest:
    if paper is None:
        return ClaimTest("direction", 1.0 if direction == "increase" else -1.0, float(margin))
    kind = "effect" if abs(paper) >= margin else "equivalence"
    return ClaimTest(kind, float(paper), float(margin))


def p_values(test: ClaimTest, delta, se, df) -> tuple[np.ndarray, np.ndarray]:
    """``(p_reproduce, p_contradict)``, vectorised over arrays of ``delta``/``se``/``df``.

    Two-sided-equivalent p-values, each compared with α: reproduction of an effect or a direction
    is ``2·P(T >= side·d/se)`` (the 95 % interval excludes 0 on that side), of an equivalence
    claim the TOST p-value ``max`` of the two one-sided tests (the 90 % interval inside p ± δ);
    contradiction is ``2·min`` of the one-sided p-values against the band's edges (the 95 %
    interval outside the band). NaN where there is no interval.
    """
    delta, se, df = (np.asarray(a, dtype=float) for a in (delta, se, df))
    with np.errstate(divide="ignore", invalid="ignore"):
        if test.kind == "direction":
            p_rep = np.minimum(1.0, 2 * student_t.sf(test.side * delta / se, df))
            p_con = np.minimum(1.0, 2 * student_t.cdf(test.side * delta / se, df))
            return p_rep, p_con
        low, high = test.target - test.margin, test.target + test.margin
        p_below = student_t.cdf((delta - low) / se, df)  # evidence that the effect is < p - δ
        p_above = student_t.sf((delta - high) / se, df)  # evidence that the effect is > p + δ
        p_con = np.minimum(1.0, 2 * np.minimum(p_below, p_above))
        if test.kind == "effect":
            p_rep = np.minimum(1.0, 2 * student_t.sf(test.side * delta / se, df))
        else:  # TOST: both one-sided nulls (effect <= low, effect >= high) rejected
            p_rep = np.maximum(student_t.sf((delta - low) / se, df), student_t.cdf((delta - high) / se, df))
    return p_rep, p_con


def classify(p_rep, p_con, alpha: float = ALPHA) -> np.ndarray:
    """Verdict strings from the two p-values (contradiction first: they cannot both hold)."""
    p_rep, p_con = np.asarray(p_rep, dtype=float), np.asarray(p_con, dtype=float)
    out = np.full(p_rep.shape, "inconclusive", dtype=object)
    out[np.nan_to_num(p_rep, nan=1.0) < alpha] = "reproduced"
    out[np.nan_to_num(p_con, nan=1.0) < alpha] = "contradicted"
    return out


def holm_adjust(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values over the finite entries (NaN stays NaN)."""
    from statsmodels.stats.multitest import multipletests  # imported here: judge_compute stays light

    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


# ---- power --------------------------------------------------------------------------------
def _n_eff(n: float, n_vs: float) -> float:
    return 1.0 / (1.0 / n + 1.0 / n_vs)


def power_of(test: ClaimTest, sigma: float, n: float, n_vs: float, df: float) -> float:
    """Probability that ``test`` comes out reproduced when the truth is the claim (direction: δ)."""
    if not (sigma > 0 and df > 0 and n > 0 and n_vs > 0):
        return math.nan
    nobs = _n_eff(n, n_vs)
    if test.kind == "equivalence":
        return max(0.0, 2 * _one_sided_power(test.margin / sigma, nobs, ALPHA, df) - 1)
    effect = test.margin if test.kind == "direction" else abs(test.target)
    return _one_sided_power(effect / sigma, nobs, ALPHA / 2, df)


def _one_sided_power(d: float, nobs: float, alpha: float, df: float) -> float:
    """statsmodels' noncentral-t power; its nct returns NaN far in the tail, where power is 1."""
    from statsmodels.stats.power import ttest_power

    power = float(ttest_power(d, nobs, alpha, df=df, alternative="larger"))
    return 1.0 if math.isnan(power) and d * math.sqrt(nobs) > 10 else power


@lru_cache(maxsize=4096)
def _standardized_mde(n: int, n_vs: int, df: float, power: float) -> float:
    nobs = _n_eff(n, n_vs)
    return float(optimize.brentq(lambda d: _one_sided_power(d, nobs, ALPHA / 2, df) - power, 1e-6, 1e3))


def mde(ev: Evidence, power: float = POWER) -> float:
    """Smallest true difference reproduced with ``power`` at this n, df and SD (in metric units)."""
    if not (ev.sigma > 0 and ev.df > 0 and ev.n > 0 and ev.n_vs > 0):
        return math.nan
    return ev.sigma * _standardized_mde(ev.n, ev.n_vs, round(ev.df, 6), power)


def planned_df(ev: Evidence, m: int) -> float:
    """The df once both rows have at least ``m`` seeds (pooled: the added runs add df)."""
    if ev.model == "welch":
        return float(2 * m - 2)
    return ev.df + max(0, m - ev.n) + max(0, m - ev.n_vs)


def seeds_needed(test: ClaimTest, ev: Evidence, power: float = POWER, max_seeds: int = MAX_SEEDS) -> float:
    """Smallest seeds per row (both rows) with ``power`` to reproduce the claim at the observed SD.

    NaN when there is no SD yet or when even ``max_seeds`` is not enough (for a claimed effect of
    0 no n reproduces a direction). Monotone in the seeds, so a bisection.
    """
    if not (ev.sigma > 0 and ev.df > 0):
        return math.nan

    def ok(m: int) -> bool:
        return power_of(test, ev.sigma, max(m, ev.n), max(m, ev.n_vs), planned_df(ev, m)) >= power

    lo, hi = 2, max_seeds
    if not ok(hi):
        return math.nan
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return float(lo)


# ---- one claim ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Judgement:
    verdict: str
    reason: str
    lo: float
    hi: float
    p_reproduce: float
    p_contradict: float
    mde80: float
    seeds_needed: float


def judge(test: ClaimTest, ev: Evidence, with_power: bool = True) -> Judgement:
    """The verdict of one statistical claim on its evidence, with a reason a reader can check."""
    m80 = mde(ev) if with_power else math.nan
    need = seeds_needed(test, ev) if with_power else math.nan
    if math.isnan(ev.delta):
        return Judgement("inconclusive", "no completed run for one of the two rows", math.nan, math.nan,
                         math.nan, math.nan, m80, need)
    if not (ev.se >= 0 and ev.df > 0):
        return Judgement("inconclusive", "no interval: no row of the sweep has 2 seeds", math.nan, math.nan,
                         math.nan, math.nan, m80, need)
    lo, hi = ev.interval()
    p_rep, p_con = (float(v) for v in p_values(test, ev.delta, ev.se, ev.df))
    verdict = str(classify(p_rep, p_con)[()])
    span = f"{ev.delta:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    band = f"{test.target - test.margin:+.2f}..{test.target + test.margin:+.2f}"
    if verdict == "contradicted":
        what = "lies on the other side of 0" if test.kind == "direction" else f"excludes the paper's {band}"
        reason = f"{span} {what} (p = {p_con:.3f})"
    elif verdict == "reproduced":
        if test.kind == "equivalence":
            lo90, hi90 = ev.interval(1 - 2 * ALPHA)
            reason = f"90 % interval [{lo90:+.2f}, {hi90:+.2f}] lies within {band} (TOST p = {p_rep:.3f})"
        else:
            reason = f"{span} excludes 0 on the claimed side (p = {p_rep:.3f})"
            if test.kind == "effect":
                reason += f" and reaches {band}"
    else:
        if test.kind == "equivalence":
            reason = f"{span}: not shown within {band} (TOST p = {p_rep:.2f}) nor excluded"
        elif test.kind == "direction":
            reason = f"{span} contains 0"
        else:
            reason = f"{span} neither excludes 0 (p = {p_rep:.2f}) nor {band}"
        reason += "; " + _what_it_takes(test, ev, m80, need)
    return Judgement(verdict, reason, lo, hi, p_rep, p_con, m80, need)


def _what_it_takes(test: ClaimTest, ev: Evidence, m80: float, need: float) -> str:
    """How much more evidence would resolve the claim: seeds per row, or for fps (Welch, n = the
    quiet fps pass's rounds) rounds of that pass, which more training seeds cannot replace."""
    goal = {"effect": f"{test.target:+g}", "equivalence": f"{test.target:+g} ± {test.margin:g}",
            "direction": f"an effect of {test.margin:g}"}[test.kind]
    unit = "rounds of the quiet fps pass" if ev.model == "welch" else "seeds per row"
    text = f"n = {ev.n} vs {ev.n_vs} resolves effects ≥ {m80:.2f}" if m80 == m80 else f"n = {ev.n} vs {ev.n_vs}"
    if need == need:
        return f"{text}; {int(need)} {unit} would resolve {goal} (80 % power)"
    return f"{text}; more than {MAX_SEEDS} {unit} would be needed for {goal}"


# ---- compute claims: exact counts ---------------------------------------------------------
def judge_compute(measured_pct: float, paper_pct: float | None, direction: str | None = None,
                  min_effect: float = 0.0) -> tuple[str, str]:
    """Verdict and reason for an exact compute change (relative %) against the paper's.

    Size (``paper_pct``): reproduced iff same sign and ``|measured - paper| <= COMPUTE_TOL_PT``;
    the one tolerance for the claims files and the fidelity table. Direction only (``paper_pct``
    None): reproduced iff the claimed sign and ``|measured| >= min_effect``.
    """
    if measured_pct is None or not math.isfinite(measured_pct):
        return "inconclusive", "no cost for one of the two rows"
    if paper_pct is not None:
        residual = measured_pct - paper_pct
        same_sign = np.sign(measured_pct) == np.sign(paper_pct)
        if same_sign and abs(residual) <= COMPUTE_TOL_PT:
            return "reproduced", (f"{measured_pct:+.1f} % vs {paper_pct:+g} %: residual {residual:+.1f} points, "
                                  f"within ±{COMPUTE_TOL_PT:g} (exact counts; not an exact match)"
                                  if abs(residual) > 0.5 else
                                  f"{measured_pct:+.1f} % vs {paper_pct:+g} %: equal up to the paper's rounding")
        why = "opposite sign" if not same_sign else f"residual {residual:+.1f} points (tolerance ±{COMPUTE_TOL_PT:g})"
        return "contradicted", f"{measured_pct:+.1f} % vs {paper_pct:+g} %: {why}"
    want = 1.0 if direction == "increase" else -1.0
    if np.sign(measured_pct) == want and abs(measured_pct) >= min_effect:
        return "reproduced", f"{measured_pct:+.1f} % is a {direction} of at least {min_effect:g} %"
    return "contradicted", f"{measured_pct:+.1f} % is not a {direction} of at least {min_effect:g} %"


def bartlett_p(groups: Sequence[np.ndarray]) -> float:
    """Bartlett's test of equal variance across the rows with >= 2 seeds (NaN below 2 rows):
    printed beside the pooled intervals, the assumption pooling rests on."""
    from scipy.stats import bartlett

    usable = [g for g in (_clean(g) for g in groups) if g.size >= 2]
    if len(usable) < 2 or all(np.ptp(g) == 0 for g in usable):
        return math.nan
    return float(bartlett(*usable).pvalue)
