"""Markdown renderings of the report's frames (the CSVs hold the full-precision numbers)."""

from __future__ import annotations

import math

import pandas as pd

from csp_ablate.report.spec import ReportSpec

DASH = "–"


def to_md(view: pd.DataFrame) -> str:
    """A GitHub markdown table; ``|`` inside cells (e.g. in an error message) is escaped."""
    safe = view.apply(lambda col: col.map(lambda v: str(v).replace("|", "\\|").replace("\n", " ")))
    return safe.to_markdown(index=False, disable_numparse=True)


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


def num(x, digits: int = 2, signed: bool = False) -> str:
    if _isnan(x):
        return DASH
    return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"


def mean_pm(mean, ci, digits: int = 2, signed: bool = False) -> str:
    if _isnan(mean):
        return DASH
    text = num(mean, digits, signed)
    return text if _isnan(ci) else f"{text} ± {float(ci):.{digits}f}"


def axis(x) -> str:
    if _isnan(x) or x == "":
        return DASH
    return f"{float(x):g}" if isinstance(x, float) else str(x)


def describe_runs(runs: pd.DataFrame) -> str:
    """``proxy · fashionmnist 32×32 · 3 epochs · seeds 0 1 2`` from the completed runs."""
    done = runs[runs["status"] == "completed"]
    src = done if not done.empty else runs

    def values(col):
        return sorted({str(v) for v in src[col].dropna()}) if col in src else []

    parts = []
    for col, fmt in (("tier", "tier {}"), ("dataset", "{}"), ("img_size", "{}×{} px"), ("epochs", "{} epoch(s)")):
        vals = values(col)
        if vals:
            parts.append(fmt.format(*(["/".join(vals)] * fmt.count("{}"))))
    seeds = sorted({int(s) for s in src["seed"].dropna()})
    if seeds:
        parts.append("seeds " + " ".join(map(str, seeds)))
    n_failed = int((runs["status"] == "failed").sum())
    parts.append(f"{len(done)} completed, {n_failed} failed job(s)")
    return " · ".join(parts)


def command_lines(command: str | None) -> list[str]:
    return ["", f"Made by: `{command}` (then `python -m csp_ablate.report <sweep dir>` rebuilds it from the records)."] if command else []


def paper_table_md(table: pd.DataFrame, spec: ReportSpec, runs: pd.DataFrame, command: str | None = None) -> str:
    base_label = spec.row(spec.baseline).label
    view = pd.DataFrame({
        "model": table["label"],
        "γ": table["gamma"].map(axis) if "gamma" in table else DASH,
        "fusion": table["fusion"].map(axis) if "fusion" in table else DASH,
        "act.": table["activation"].map(axis) if "activation" in table else DASH,
        "#Param (M)": table["params_m"].map(lambda x: num(x, 3)),
        "BFLOPs (Δ %)": [f"{num(b, 3)} ({num(d, 1, True)})" if not _isnan(b) else DASH
                         for b, d in zip(table["bflops"], table["bflops_delta_pct"])],
        "top-1 % (n)": [f"{mean_pm(m, c)} (n={n})" if n else f"{DASH} ({'failed' if nf else 'not run'})"
                        for m, c, n, nf in zip(table["top1_mean"], table["top1_ci95"], table["n"], table["n_failed"])],
        f"Δ top-1 vs {base_label}": [mean_pm(d, c, signed=True) for d, c in zip(table["top1_delta"], table["top1_delta_ci95"])],
        "paper #Param": table["paper_params_m"].map(lambda x: num(x, 2)),
        "paper BFLOPs (Δ %)": [_paper_pair(b, d, 3, 0) for b, d in zip(table["paper_bflops"], table["paper_bflops_delta_pct"])],
        "paper top-1 (Δ)": [_paper_pair(t, d, 1, 1) for t, d in zip(table["paper_top1"], table["paper_top1_delta"])],
    })
    lines = [
        f"**{spec.title}** (ours beside the paper's)",
        "",
        f"Ours: {describe_runs(runs)}. top-1 = test top-1 in %, mean ± 95 % t-interval half-width "
        f"over seeds (n = completed seeds). #Param and BFLOPs are exact profiler counts at 224×224, "
        f"1000 classes. Deltas are against {base_label}: compute in relative %, top-1 in points "
        f"(Welch 95 % interval). Paper: csp_ablate/reference/reference.csv ({DASH} = not published).",
        *command_lines(command),
        "",
        to_md(view),
    ]
    notes = [(rid, note) for rid, note in zip(table["row"], table["note"]) if note and note != "baseline"]
    not_run = [rid for rid, note in notes if note == "not run"]
    others = [(rid, note) for rid, note in notes if note != "not run"]
    if notes:
        lines += ["", "Gaps and notes:"]
        lines += [f"- `{rid}`: {note}" for rid, note in others]
        if not_run:
            lines.append("- not run (no record in this sweep dir): " + ", ".join(f"`{r}`" for r in not_run))
    return "\n".join(lines) + "\n"


def _paper_pair(value, delta, digits: int, delta_digits: int) -> str:
    if _isnan(value) and _isnan(delta):
        return DASH
    d = f" ({num(delta, delta_digits, True)})" if not _isnan(delta) else ""
    return f"{num(value, digits)}{d}" if not _isnan(value) else f"{DASH}{d}"


def claims_md(claims: pd.DataFrame, spec: ReportSpec) -> str:
    def paper_cell(row):
        unit = " %" if row["metric"] == "bflops" else ""
        return f"{row['paper']:+g}{unit}" if not _isnan(row["paper"]) else str(row["direction"])

    def ours_cell(row):
        if row["metric"] == "bflops":
            return f"{num(row['measured'], 1, True)} %"
        return f"{mean_pm(row['measured'], row['ci95'], signed=True)} (n={row['n']} vs {row['n_vs']})"

    view = pd.DataFrame({
        "claim": claims["text"],
        "metric": claims["metric"].map({"bflops": "BFLOPs Δ", "top1": "top-1 Δ (points)"}),
        "paper": [paper_cell(r) for _, r in claims.iterrows()],
        "ours": [ours_cell(r) for _, r in claims.iterrows()],
        "verdict": claims["verdict"],
        "why": claims["reason"],
        "source": claims["source"],
    })
    counts = claims["verdict"].value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("reproduced", "contradicted", "inconclusive"))
    return "\n".join([
        f"**Claims: {spec.title}** ({tally})",
        "",
        "Verdict rule (csp_ablate/report/__init__.py): compute claims are judged on the exact "
        "profiler BFLOPs (same sign and within ±max(2 points, 25 %) of the stated change; "
        "direction-only claims: right sign and at least the stated minimum); top-1 claims on "
        "the 95 % Welch interval of our delta (reproduced: contains the paper's value and the "
        "mean has its sign; contradicted: excludes it; otherwise, or with < 2 seeds, inconclusive; "
        "direction-only claims: the interval lies on the claimed / the other side of 0).",
        "",
        to_md(view),
        "",
    ])


def summary_md(summary: pd.DataFrame, runs: pd.DataFrame, title: str, command: str | None = None) -> str:
    axes = [c for c in ("task", "dataset", "model", "gamma", "fusion", "neck", "extras", "activation",
                        "tier", "img_size", "epochs") if c in summary]
    varying = [c for c in axes if summary[c].astype("string").nunique(dropna=False) > 1] or ["model"]
    view = summary[["config_hash", *varying]].copy()
    for c in varying:
        view[c] = view[c].map(axis)
    view["n"] = summary["n"]
    view["#Param (M)"] = summary["params_m"].map(lambda x: num(x, 3))
    view["BFLOPs"] = summary["bflops"].map(lambda x: num(x, 3))
    view["top-1 %"] = [mean_pm(m, c) for m, c in zip(summary["top1_mean"], summary["top1_ci95"])]
    view["val top-1 %"] = [mean_pm(m, c) for m, c in zip(summary["val_top1_mean"], summary["val_top1_ci95"])]
    view["train s"] = summary["train_time_s_mean"].map(lambda x: num(x, 0))
    view["note"] = summary["note"].fillna("")
    const = [c for c in axes if c not in varying and summary[c].notna().any()]
    fixed = ", ".join(f"{c}={axis(summary[c].dropna().iloc[0])}" for c in const)
    return "\n".join([
        f"**{title}**: one row per configuration (config hash), {describe_runs(runs)}.",
        f"Same for every row: {fixed}." if fixed else "",
        "top-1: mean ± 95 % t-interval half-width over the completed seeds.",
        *command_lines(command),
        "",
        to_md(view),
        "",
    ])
