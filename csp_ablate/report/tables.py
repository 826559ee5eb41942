"""Aggregation with pandas: the grouped summary, the paper-shaped table and the claim verdicts.

Every number here comes from the tidy ``runs`` frame (``csp_ablate.report.records``); the paper's
side comes from ``csp_ablate.reference``. Accuracy is aggregated over the completed runs of a
group (mean, 95 % t-interval, n); cost columns are exact profiler numbers, equal for every seed
of one configuration, so a group reports them once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from csp_ablate.record import AXES
from csp_ablate.report.spec import SIGN_ONLY_METRICS, Claim, ReportSpec, Row
from csp_ablate.report.stats import mean_ci
from csp_ablate.report.verdicts import (
    COMPUTE_TOL_PT, ClaimTest, Evidence, bartlett_p, claim_test, classify, holm_adjust, judge, judge_compute,
    pooled_evidence, pooled_variance, welch_evidence,
)

log = logging.getLogger("csp_ablate.report")

COST = ["params_m", "bflops", "bflops_train", "cio_m"]
METRICS = ["top1", "val_top1", "ap", "ap50"]


# ---- grouping ---------------------------------------------------------------------------
def aggregate(runs: pd.DataFrame, by: str, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per value of ``by``: axes, n, n_failed, cost, ``<m>_mean``/``<m>_ci95``."""
    metrics = list(metrics or METRICS)
    rows = [_aggregate_group(by, key, group, metrics) for key, group in runs.groupby(by, sort=False, dropna=False)]
    columns = [by, *AXES, "n", "n_failed", "seeds", *COST,
               *[f"{m}_{s}" for m in metrics for s in ("mean", "ci95")], "train_time_s_mean", "note"]
    return pd.DataFrame(rows, columns=columns)


def _aggregate_group(by: str, key: Any, group: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    done = group[group["status"] == "completed"]
    failed = group[group["status"] == "failed"]
    source = done if not done.empty else group
    out: dict[str, Any] = {by: key}
    out.update({axis: _first(source[axis]) for axis in AXES})
    out.update(n=len(done), n_failed=len(failed), seeds=" ".join(str(s) for s in sorted(done["seed"].dropna())))
    out.update({c: _first(group[c]) for c in COST})  # cost is known for failed runs that got that far
    for metric in metrics:
        mean, ci, _ = mean_ci(pd.to_numeric(done[metric], errors="coerce"))
        out[f"{metric}_mean"], out[f"{metric}_ci95"] = mean, ci
    out["train_time_s_mean"] = pd.to_numeric(done["train_time_s"], errors="coerce").mean()
    out["note"] = _note(group, done, failed)
    return out


def _first(series: pd.Series):
    values = series.dropna()
    return values.iloc[0] if not values.empty else None


def _note(group: pd.DataFrame, done: pd.DataFrame, failed: pd.DataFrame) -> str:
    notes = []
    if done.empty:
        notes.append("no completed run")
    if not failed.empty:
        first_error = _first(failed["error"])
        err = str(first_error).splitlines()[0][:120] if first_error else ""
        notes.append(f"{len(failed)} failed: {err}" if err else f"{len(failed)} failed")
    hashes = done["config_hash"].dropna().unique()
    if len(hashes) > 1:
        notes.append(f"mixes {len(hashes)} configs")
    return "; ".join(notes)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The grouped summary of any multirun: one row per configuration (config hash)."""
    frame = runs.assign(config_hash=runs["config_hash"].fillna("unknown"))
    return aggregate(frame, "config_hash")


# ---- paper-shaped tables ----------------------------------------------------------------
def _matches(values: pd.Series, want: Any) -> pd.Series:
    if want is None:
        return values.isna() | (values.astype("string") == "")
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        num = pd.to_numeric(values, errors="coerce")
        return pd.Series(np.isclose(num.astype(float), float(want), rtol=0, atol=1e-9), index=values.index)
    return values.astype("string") == str(want)


def assign_rows(runs: pd.DataFrame, spec: ReportSpec) -> pd.Series:
    """The spec row id of each run (NA for runs that are no row of the table)."""
    row_id = pd.Series(pd.NA, index=runs.index, dtype="string")
    for row in spec.rows:
        mask = pd.Series(True, index=runs.index)
        for key, want in row.axes.items():
            mask &= _matches(runs[key], want).fillna(False)
        row_id[mask & row_id.isna()] = row.id
    return row_id


def paper_table(runs: pd.DataFrame, spec: ReportSpec, reference: pd.DataFrame | None,
                metric_frames: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The spec's rows in order: ours (mean, CI, deltas vs each baseline) beside the paper's.

    Columns: row, label, the match keys, n, n_failed, params_m, bflops, ``bflops_delta_pct<sfx>``
    per baseline, per metric ``<m>_mean``, ``<m>_ci95`` and per baseline ``<m>_delta<sfx>``,
    ``<m>_delta<sfx>_ci95``; ``<m>_mean``/``_ci95`` of the extra metrics, train_time_s_mean, the
    paper columns, note. ``<sfx>`` is ``spec.suffix(baseline)``: empty for a single baseline.
    ``metric_frames``: a runs-shaped frame per metric whose values come from elsewhere (fps from
    ``fps.csv``, see csp_ablate.report.quiet_fps): that metric's means, CIs and deltas use it.
    """
    frame = runs.assign(row=assign_rows(runs, spec))
    by_metric = {m: f.assign(row=assign_rows(f, spec)) for m, f in (metric_frames or {}).items()}
    metrics = list(dict.fromkeys([*METRICS, *spec.metrics, *spec.extra_metrics]))
    agg = aggregate(frame[frame["row"].notna()], "row", metrics).set_index("row")
    ids = [r.id for r in spec.rows]
    agg = agg.reindex(ids)
    agg["n"] = agg["n"].fillna(0).astype(int)
    agg["n_failed"] = agg["n_failed"].fillna(0).astype(int)
    agg["note"] = agg["note"].fillna("not run")
    for row in spec.rows:  # axes of rows that never ran come from the spec
        for key, value in row.axes.items():
            if pd.isna(agg.at[row.id, key]) and value is not None:
                agg.at[row.id, key] = value
    out = pd.DataFrame({"row": ids, "label": [r.label for r in spec.rows]})
    for key in spec.match:
        out[key] = agg[key].to_numpy()
    out["n"] = agg["n"].to_numpy()
    out["n_failed"] = agg["n_failed"].to_numpy()
    out["params_m"] = agg["params_m"].to_numpy(dtype=float)
    out["bflops"] = agg["bflops"].to_numpy(dtype=float)
    for base in spec.baselines:
        base_bflops = agg.at[base, "bflops"]
        out[f"bflops_delta_pct{spec.suffix(base)}"] = [_pct(b, base_bflops) for b in out["bflops"]]
    for metric in spec.metrics:
        source = by_metric.get(metric, frame)
        evidence = evidence_for(source, spec, metric)
        means = _metric_agg(source, ids, metric) if metric in by_metric else agg
        out[f"{metric}_mean"] = means[f"{metric}_mean"].to_numpy(dtype=float)
        out[f"{metric}_ci95"] = means[f"{metric}_ci95"].to_numpy(dtype=float)
        for base in spec.baselines:
            col = f"{metric}_delta{spec.suffix(base)}"
            has_base = bool(np.isfinite(out.loc[ids.index(base), f"{metric}_mean"]))  # fps without fps.csv: none
            deltas = [_delta_ci(evidence(rid, base)) if rid != base else (0.0 if has_base else math.nan, math.nan)
                      for rid in ids]
            out[col] = [d for d, _ in deltas]
            out[f"{col}_ci95"] = [c for _, c in deltas]
    for metric in spec.extra_metrics:
        means = _metric_agg(by_metric[metric], ids, metric) if metric in by_metric else agg
        out[f"{metric}_mean"] = means[f"{metric}_mean"].to_numpy(dtype=float)
        out[f"{metric}_ci95"] = means[f"{metric}_ci95"].to_numpy(dtype=float)
    out["train_time_s_mean"] = agg["train_time_s_mean"].to_numpy(dtype=float)
    paper = _paper_columns(spec, reference)
    out = pd.concat([out, paper], axis=1)
    out["note"] = [("baseline" + ("; " + n if n else "")) if rid in spec.baselines else n
                   for rid, n in zip(ids, agg["note"])]
    return out


def _metric_agg(frame: pd.DataFrame, ids: list[str], metric: str) -> pd.DataFrame:
    """``<metric>_mean``/``_ci95`` per spec row (NaN for rows ``frame`` lacks); ``frame`` has ``row``."""
    agg = aggregate(frame[frame["row"].notna()], "row", [metric])
    return agg.set_index("row").reindex(ids)


def _values(frame: pd.DataFrame, row_id: str, metric: str) -> np.ndarray:
    sel = frame[(frame["row"] == row_id) & (frame["status"] == "completed")]
    return pd.to_numeric(sel[metric], errors="coerce").dropna().to_numpy(dtype=float)


def _pct(value: float, base: float) -> float:
    if value is None or base is None or pd.isna(value) or pd.isna(base) or base == 0:
        return math.nan
    return (float(value) / float(base) - 1.0) * 100.0


def paper_column_names(spec: ReportSpec) -> list[str]:
    """``paper_params_m``, ``paper_bflops``, ``paper_bflops_delta_pct<sfx>`` per baseline, per
    metric ``paper_<m>`` and ``paper_<m>_delta<sfx>`` per baseline; with several baselines also
    the deltas as published (``paper_<m>_delta_stated``) and the row they are stated against
    (``paper_delta_vs``), since a published delta may be against a row that is no baseline."""
    names = ["paper_params_m", "paper_bflops", *(f"paper_bflops_delta_pct{spec.suffix(b)}" for b in spec.baselines)]
    for metric in spec.metrics:
        names += [f"paper_{metric}", *(f"paper_{metric}_delta{spec.suffix(b)}" for b in spec.baselines)]
    if len(spec.baselines) > 1:
        names += ["paper_delta_vs", *(f"paper_{metric}_delta_stated" for metric in spec.metrics)]
    return names


def reference_row(reference: pd.DataFrame | None, row: Row) -> pd.Series | None:
    """The reference.csv row published for ``row`` (matched on the row's ``paper`` keys)."""
    if reference is None or reference.empty:
        return None
    mask = pd.Series(True, index=reference.index)
    for key, want in row.paper.items():
        if key in reference:
            mask &= _matches(reference[key], want).fillna(False)
    hits = reference[mask]
    if len(hits) > 1:
        log.warning("several reference rows match %s; using the first", row.id)
    return hits.iloc[0] if len(hits) else None


def _paper_columns(spec: ReportSpec, reference: pd.DataFrame | None) -> pd.DataFrame:
    """Published values; a delta vs a baseline is the stated one when stated against that
    baseline (reference.csv ``delta_vs`` = ``spec.reference_name(baseline)``), else computed from
    the published values of both rows when both exist."""
    refs = {row.id: reference_row(reference, row) for row in spec.rows}

    def get(ref, key):
        return float(ref[key]) if ref is not None and key in ref and pd.notna(ref[key]) else math.nan

    records = []
    for row in spec.rows:
        ref = refs[row.id]
        delta_vs = ref.get("delta_vs") if ref is not None else None
        rec = {"paper_params_m": get(ref, "params_m"), "paper_bflops": get(ref, "bflops")}
        for metric in spec.metrics:
            rec[f"paper_{metric}"] = get(ref, metric)
        for base in spec.baselines:
            stated = ref is not None and spec.reference_name(base) is not None and \
                str(delta_vs) == str(spec.reference_name(base))
            sfx = spec.suffix(base)
            bflops_delta = get(ref, "bflops_delta_pct") if stated else math.nan
            if math.isnan(bflops_delta):
                bflops_delta = _pct(rec["paper_bflops"], get(refs.get(base), "bflops"))
            rec[f"paper_bflops_delta_pct{sfx}"] = bflops_delta
            for metric in spec.metrics:
                delta = get(ref, f"{metric}_delta") if stated else math.nan
                if math.isnan(delta):
                    delta = rec[f"paper_{metric}"] - get(refs.get(base), metric)
                rec[f"paper_{metric}_delta{sfx}"] = delta
        if len(spec.baselines) > 1:
            has_vs = delta_vs is not None and pd.notna(delta_vs)
            rec["paper_delta_vs"] = (spec.row_for_reference_name(delta_vs) or str(delta_vs)) if has_vs else None
            for metric in spec.metrics:
                rec[f"paper_{metric}_delta_stated"] = get(ref, f"{metric}_delta")
        records.append(rec)
    return pd.DataFrame(records, columns=paper_column_names(spec))


# ---- evidence and claims ----------------------------------------------------------------
def evidence_for(frame: pd.DataFrame, spec: ReportSpec, metric: str) -> Callable[[str, str], Evidence]:
    """``(row, vs) -> Evidence`` on ``metric``: the within-row variance pooled across the spec's
    rows (sign-only metrics, fps: Welch), see csp_ablate.report.verdicts. ``frame`` has ``row``."""
    values = row_values(frame, spec, metric)
    if metric in SIGN_ONLY_METRICS:
        return lambda row, vs: welch_evidence(values[row], values[vs])
    var, df = pooled_variance(list(values.values()))
    return lambda row, vs: pooled_evidence(values[row], values[vs], var, df)


def row_values(frame: pd.DataFrame, spec: ReportSpec, metric: str) -> dict[str, np.ndarray]:
    """Completed values of ``metric`` per spec row (one groupby; empty arrays for rows not run)."""
    done = frame[frame["status"] == "completed"]
    grouped = {key: pd.to_numeric(g, errors="coerce").dropna().to_numpy(dtype=float)
               for key, g in done.groupby("row", sort=False)[metric]}
    return {r.id: grouped.get(r.id, np.empty(0)) for r in spec.rows}


def _delta_ci(ev: Evidence) -> tuple[float, float]:
    lo, hi = ev.interval()
    return ev.delta, (hi - lo) / 2 if math.isfinite(lo) else math.nan


def variance_checks(runs: pd.DataFrame, spec: ReportSpec) -> dict[str, tuple[float, int, float]]:
    """Per pooled metric of the claims: ``(pooled SD, df, Bartlett p)`` for the claims file."""
    frame = runs.assign(row=assign_rows(runs, spec))
    out = {}
    for metric in dict.fromkeys(c.metric for c in spec.claims):
        if metric == "bflops" or metric in SIGN_ONLY_METRICS:
            continue
        groups = [_values(frame, r.id, metric) for r in spec.rows]
        var, df = pooled_variance(groups)
        out[metric] = (math.sqrt(var) if df else math.nan, df, bartlett_p(groups))
    return out


def statistical_test(claim: Claim) -> tuple[ClaimTest, str]:
    """What a statistical claim asserts, and a prefix for its reason: a size claim on a sign-only
    metric (fps) is judged as the direction claim with the sign of its size."""
    if claim.metric in SIGN_ONLY_METRICS and claim.paper is not None:
        direction = "increase" if claim.paper > 0 else "decrease"
        return (claim_test(None, direction, claim.margin),
                f"sign only ({direction}; the paper's {claim.paper:+g} is not comparable): ")
    return claim_test(claim.paper, claim.direction, claim.margin), ""


CLAIM_COLUMNS = [
    "claim", "text", "source", "row", "vs", "metric", "paper", "direction", "margin", "measured",
    "ci95_low", "ci95_high", "n", "n_vs", "verdict", "verdict_holm", "mde80", "seeds_needed", "reason",
]


def claims_table(runs: pd.DataFrame, spec: ReportSpec, with_power: bool = True, with_holm: bool = True,
                 metric_frames: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per claim: the paper's effect, ours with its 95 % interval, the verdict (and
    Holm's across the statistical claims), power, and the reason (csp_ablate.report.verdicts).

    ``with_power`` / ``with_holm`` False leave ``mde80``/``seeds_needed`` / ``verdict_holm``
    empty: simulations that only need the verdicts run ~10x faster; so does a ``runs`` frame
    that already has its ``row`` column (:func:`assign_rows`). ``metric_frames`` as in
    :func:`paper_table` (the fps claims on the quiet fps rounds)."""
    frame = runs if "row" in runs else runs.assign(row=assign_rows(runs, spec))
    by_metric = {m: f if "row" in f else f.assign(row=assign_rows(f, spec)) for m, f in (metric_frames or {}).items()}
    evidence = {m: evidence_for(by_metric.get(m, frame), spec, m)
                for m in dict.fromkeys(c.metric for c in spec.claims) if m != "bflops"}
    cost = row_values(frame.assign(status="completed"), spec, "bflops")  # a failed run that got far has its cost
    n_done = frame[frame["status"] == "completed"].groupby("row").size().to_dict()
    records, p_rep, p_con = [], [], []
    for claim in spec.claims:
        rec: dict[str, Any] = {
            "claim": claim.id, "text": claim.text, "source": claim.source, "row": claim.row, "vs": claim.vs,
            "metric": claim.metric, "paper": claim.paper, "direction": claim.direction, "margin": claim.margin,
        }
        if claim.metric == "bflops":
            measured = _pct(*(cost[r][0] if cost[r].size else math.nan for r in (claim.row, claim.vs)))
            verdict, reason = judge_compute(measured, claim.paper, claim.direction, claim.min_effect)
            rec.update(margin=COMPUTE_TOL_PT if claim.paper is not None else math.nan, measured=measured,
                       ci95_low=math.nan, ci95_high=math.nan, n=int(n_done.get(claim.row, 0)),
                       n_vs=int(n_done.get(claim.vs, 0)), verdict=verdict, verdict_holm=verdict,
                       mde80=math.nan, seeds_needed=math.nan, reason=reason)
            p_rep.append(math.nan)
            p_con.append(math.nan)
        else:
            ev = evidence[claim.metric](claim.row, claim.vs)
            test, prefix = statistical_test(claim)
            j = judge(test, ev, with_power=with_power)
            rec.update(measured=ev.delta, ci95_low=j.lo, ci95_high=j.hi, n=ev.n, n_vs=ev.n_vs, verdict=j.verdict,
                       mde80=j.mde80, seeds_needed=j.seeds_needed, reason=prefix + j.reason)
            p_rep.append(j.p_reproduce)
            p_con.append(j.p_contradict)
        records.append(rec)
    out = pd.DataFrame(records, columns=CLAIM_COLUMNS)
    stat = out["metric"] != "bflops"
    out["verdict_holm"] = out["verdict_holm"].astype(object)
    if stat.any() and with_holm:
        holm = classify(holm_adjust(np.asarray(p_rep)[stat]), holm_adjust(np.asarray(p_con)[stat]))
        # adjusting can only withdraw a verdict: a claim contradicted (effect far beyond p + δ) whose
        # contradiction does not survive Holm is inconclusive, not reproduced
        holm[holm != out.loc[stat, "verdict"].to_numpy()] = "inconclusive"
        out.loc[stat, "verdict_holm"] = list(holm)
    return out
