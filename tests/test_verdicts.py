"""Hand-worked cases of the verdict rule (csp_ablate.report.verdicts), each checked against an
independent computation: scipy's two-sample t-tests and intervals, statsmodels' OLS contrast
(the pooled within-row variance is one-way ANOVA's residual mean square), its TOST, its Holm
correction and its power solver. Plus the one compute tolerance and the spec's margins."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from csp_ablate.report.spec import parse_spec
from csp_ablate.report.verdicts import (
    COMPUTE_TOL_PT, DEFAULT_MARGINS, Evidence, claim_test, holm_adjust, judge, judge_compute, mde, p_values,
    pooled_evidence, pooled_variance, power_of, seeds_needed, welch_evidence,
)

# ---- Welch and the pooled variance against scipy / statsmodels ------------------------------
X = np.array([90.1, 91.7, 92.2, 90.9])
Y = np.array([89.0, 89.4, 89.2])


def test_welch_matches_scipy_with_unequal_variances():
    res = stats.ttest_ind(X, Y, equal_var=False)
    ev = welch_evidence(X, Y)
    lo, hi = ev.interval()
    ci = res.confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-10)
    assert ev.df == pytest.approx(res.df, abs=1e-10)
    p_rep, _ = p_values(claim_test(None, "increase", 0.5), ev.delta, ev.se, ev.df)
    assert float(p_rep) == pytest.approx(res.pvalue, abs=1e-12)  # d > 0: the two-sided p-value


def test_pooled_variance_is_the_anova_residual_and_the_contrast_matches_ols():
    import statsmodels.formula.api as smf

    rows = {"a": [70.2, 71.0, 70.5], "b": [71.4, 72.0], "c": [69.0, 70.1, 69.6, 70.0], "d": [70.3]}
    frame = pd.DataFrame([(r, v) for r, vals in rows.items() for v in vals], columns=["row", "y"])
    fit = smf.ols("y ~ C(row) - 1", data=frame).fit()
    var, df = pooled_variance([np.array(v) for v in rows.values()])
    assert df == fit.df_resid == 6 and var == pytest.approx(fit.mse_resid, abs=1e-12)
    ev = pooled_evidence(rows["b"], rows["a"], var, df)
    contrast = fit.t_test("C(row)[b] - C(row)[a] = 0")
    assert ev.delta == pytest.approx(float(contrast.effect[0]), abs=1e-12)
    assert ev.se == pytest.approx(float(contrast.sd[0, 0]), abs=1e-12)
    assert ev.interval() == pytest.approx(tuple(contrast.conf_int(alpha=0.05)[0]), abs=1e-10)
    p_rep, _ = p_values(claim_test(None, "increase", 0.5), ev.delta, ev.se, ev.df)
    assert float(p_rep) == pytest.approx(float(contrast.pvalue), abs=1e-12)


def test_two_rows_pooled_is_students_t():
    var, df = pooled_variance([X, Y])
    ev = pooled_evidence(X, Y, var, df)
    ci = stats.ttest_ind(X, Y, equal_var=True).confidence_interval(0.95)
    assert ev.interval() == pytest.approx((ci.low, ci.high), abs=1e-10)


@pytest.mark.parametrize("paper, margin", [(0.1, 0.5), (-0.3, 1.0), (1.5, 2.0)])
def test_equivalence_p_value_is_statsmodels_tost(paper, margin):
    from statsmodels.stats.weightstats import ttost_ind

    x, y = X - 1.9, Y  # difference about +0.6
    var, df = pooled_variance([x, y])
    ev = pooled_evidence(x, y, var, df)
    p_rep, _ = p_values(claim_test(paper, None, margin), ev.delta, ev.se, ev.df)
    assert float(p_rep) == pytest.approx(ttost_ind(x, y, paper - margin, paper + margin, usevar="pooled")[0], abs=1e-12)


# ---- every branch, against the definitions evaluated with scipy's intervals ---------------
def _by_scipy(x, y, paper, direction, margin) -> str:
    """The rule's definitions, on scipy's Student-t intervals of two rows (pooled = Student)."""
    res = stats.ttest_ind(x, y, equal_var=True)
    lo, hi = res.confidence_interval(0.95)
    if paper is None:
        up = direction == "increase"
        if (lo > 0) if up else (hi < 0):
            return "reproduced"
        return "contradicted" if ((hi < 0) if up else (lo > 0)) else "inconclusive"
    band = (paper - margin, paper + margin)
    if hi < band[0] or lo > band[1]:
        return "contradicted"
    if abs(paper) >= margin:
        return "reproduced" if (lo > 0 if paper > 0 else hi < 0) else "inconclusive"
    lo90, hi90 = res.confidence_interval(0.90)
    return "reproduced" if band[0] < lo90 and hi90 < band[1] else "inconclusive"


BASE = np.array([70.0, 70.4, 69.8, 70.2])
CASES = [  # (shift of the row vs BASE, spread, paper, direction, margin, expected)
    (0.9, 1.0, 0.8, None, 0.5, "reproduced"),      # effect: excludes 0, reaches 0.8 ± 0.5
    (0.2, 1.0, 0.8, None, 0.5, "inconclusive"),    # effect: holds 0 and the band
    (-0.9, 1.0, 0.8, None, 0.5, "contradicted"),   # effect: below the band
    (3.0, 1.0, 0.8, None, 0.5, "contradicted"),    # effect: far above the band (bigger than claimed)
    (0.05, 0.5, 0.1, None, 0.5, "reproduced"),     # "only 0.1": TOST within ±0.5
    (0.05, 2.5, 0.1, None, 0.5, "inconclusive"),   # "only 0.1" with wide spread
    (-1.5, 1.0, -0.1, None, 0.5, "contradicted"),  # "only 0.1" but a 1.5 drop
    (0.9, 1.0, None, "increase", 0.5, "reproduced"),
    (0.2, 1.0, None, "increase", 0.5, "inconclusive"),
    (-0.9, 1.0, None, "increase", 0.5, "contradicted"),
    (-0.9, 1.0, None, "decrease", 0.5, "reproduced"),
]


@pytest.mark.parametrize("shift, spread, paper, direction, margin, expected", CASES)
def test_each_branch_matches_the_definitions(shift, spread, paper, direction, margin, expected):
    x = BASE + shift + (BASE - BASE.mean()) * (spread - 1)  # same order, scaled spread
    var, df = pooled_variance([x, BASE])
    j = judge(claim_test(paper, direction, margin), pooled_evidence(x, BASE, var, df))
    assert j.verdict == expected == _by_scipy(x, BASE, paper, direction, margin)
    if expected == "inconclusive":
        assert "seeds per row" in j.reason  # says what it would take


def test_no_interval_is_inconclusive():
    var, df = pooled_variance([np.array([70.0]), np.array([71.0])])
    j = judge(claim_test(0.8, None, 0.5), pooled_evidence([71.0], [70.0], var, df))
    assert df == 0 and j.verdict == "inconclusive" and "2 seeds" in j.reason
    assert judge(claim_test(0.8, None, 0.5), pooled_evidence([], [70.0], 1.0, 4)).verdict == "inconclusive"


def test_the_issues_examples_now_get_consistent_verdicts():
    # +0.93 [-0.18, +2.03] and +1.16 [-0.81, +3.12]: both intervals hold 0, so neither a direction
    # claim nor a size claim is reproduced (they got opposite verdicts under the old rule)
    for delta, half in ((0.93, 1.105), (1.16, 1.965)):
        ev = Evidence(delta, half / stats.t.ppf(0.975, 4), 4, 1.0, 3, 3, "welch")
        assert judge(claim_test(None, "increase", 0.5), ev).verdict == "inconclusive"
        assert judge(claim_test(0.7, None, 0.5), ev).verdict == "inconclusive"
    # "costs only 0.1" with -0.60 [-1.18, -0.02]: not shown within -0.1 ± 0.5
    ev = Evidence(-0.60, 0.58 / stats.t.ppf(0.975, 4), 4, 1.0, 3, 3, "welch")
    assert judge(claim_test(-0.1, None, 0.5), ev).verdict == "inconclusive"


# ---- Holm and power -----------------------------------------------------------------------
def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04: 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def test_mde_and_seeds_needed_match_statsmodels_power_solver():
    from statsmodels.stats.power import TTestIndPower

    solver = TTestIndPower()
    ev = welch_evidence([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # s = 1, 3 vs 3, Welch df = 4 = n1 + n2 - 2
    d80 = solver.solve_power(nobs1=3, ratio=1, alpha=0.025, power=0.8, alternative="larger")
    assert mde(ev) == pytest.approx(d80 * 1.0, rel=1e-6)
    test = claim_test(0.8, None, 0.5)
    need = int(seeds_needed(test, ev))
    power = [solver.power(0.8, nobs1=m, ratio=1, alpha=0.025, alternative="larger") for m in (need - 1, need)]
    assert power[0] < 0.8 <= power[1]
    assert power_of(test, 1.0, need, need, 2 * need - 2) == pytest.approx(power[1], abs=1e-9)


def test_table1_power_numbers():
    # Table 1 on the proxy: pooled SD 0.395 with 26 df, 3 vs 3 seeds
    ev = Evidence(0.0, 0.395 * math.sqrt(2 / 3), 26, 0.395, 3, 3, "pooled")
    assert 0.9 < mde(ev) < 1.0  # the paper's 0.1-0.8 point effects are below it
    assert seeds_needed(claim_test(0.8, None, 0.5), ev) == 5
    assert seeds_needed(claim_test(0.1, None, 0.5), ev) > seeds_needed(claim_test(0.8, None, 0.5), ev)
    assert math.isnan(seeds_needed(claim_test(0.8, None, 0.5), Evidence(0.0, math.nan, 0, math.nan, 1, 1, "pooled")))


# ---- the one compute tolerance ------------------------------------------------------------
@pytest.mark.parametrize(
    "measured, paper, direction, min_effect, verdict",
    [
        (-24.5, -21, None, 0, "reproduced"),    # residual -3.5 points: within ±4, not exact
        (-0.4, -3, None, 0, "reproduced"),      # residual +2.6 points: within ±4, not exact
        (-12.1, -13, None, 0, "reproduced"),
        (-26.0, -21, None, 0, "contradicted"),  # residual -5
        (0.5, -3, None, 0, "contradicted"),     # opposite sign, though within 4 points
        (-24.5, None, "decrease", 5, "reproduced"),
        (-2.0, None, "decrease", 5, "contradicted"),
        (math.nan, -13, None, 0, "inconclusive"),
    ],
)
def test_compute_tolerance(measured, paper, direction, min_effect, verdict):
    assert COMPUTE_TOL_PT == 4.0
    got, reason = judge_compute(measured, paper, direction, min_effect)
    assert got == verdict
    if verdict == "reproduced" and paper is not None:
        assert "not an exact match" in reason and f"{measured - paper:+.1f} points" in reason


# ---- margins in the spec ------------------------------------------------------------------
def _spec(claims):
    block = {"rows": [{"id": "a", "model": "x"}, {"id": "b", "model": "y"}], "baseline": "a",
             "metrics": ["top1"], "claims": claims}
    return parse_spec("t", block)


def test_margins_default_by_metric_and_can_be_overridden():
    spec = _spec([{"id": "c1", "row": "b", "vs": "a", "metric": "top1", "paper": 0.8},
                  {"id": "c2", "row": "b", "vs": "a", "metric": "top1", "paper": 0.8, "margin": 0.3},
                  {"id": "c3", "row": "b", "vs": "a", "metric": "bflops", "paper": -10}])
    assert [c.margin for c in spec.claims] == [DEFAULT_MARGINS["top1"], 0.3, None]
    assert DEFAULT_MARGINS["ap"] == DEFAULT_MARGINS["ap50"] == 1.0 and DEFAULT_MARGINS["top1"] == 0.5
    with pytest.raises(ValueError, match="one tolerance"):
        _spec([{"id": "c", "row": "b", "vs": "a", "metric": "bflops", "paper": -10, "margin": 1}])
    with pytest.raises(ValueError, match="margin must be > 0"):
        _spec([{"id": "c", "row": "b", "vs": "a", "metric": "top1", "paper": 1, "margin": 0}])


# ---- Table 1's claims on the frozen n = 3 records: Holm beside the verdict, power columns -----
def test_table1_claims_have_holm_and_power_columns():
    from conftest import TABLE1_N3
    from csp_ablate.report import load_spec
    from csp_ablate.report.records import runs_frame
    from csp_ablate.report.tables import CLAIM_COLUMNS, claims_table

    claims = claims_table(runs_frame(TABLE1_N3), load_spec("table1")).set_index("claim")
    assert CLAIM_COLUMNS[-4:] == ["verdict_holm", "mde80", "seeds_needed", "reason"]
    stat = claims[claims["metric"] == "top1"]
    assert ((stat["verdict_holm"] == stat["verdict"]) | (stat["verdict_holm"] == "inconclusive")).all()
    # +0.93 [+0.26, +1.59]: p = 0.008 alone, but 8 top-1 claims: Holm's smallest step is 8 x 0.008 > 0.05
    assert tuple(claims.loc["first_vs_speleenet", ["verdict", "verdict_holm"]]) == ("reproduced", "inconclusive")
    assert stat["mde80"].between(0.9, 1.0).all() and (stat["seeds_needed"] >= 5).all()
    compute = claims[claims["metric"] == "bflops"]
    assert (compute["verdict"] == compute["verdict_holm"]).all() and compute["mde80"].isna().all()
