"""Markdown renderings of the report's frames (the CSVs hold the full-precision numbers)."""

from __future__ import annotations

import math

import pandas as pd

from csp_ablate.report.spec import METRIC_INFO, SIGN_ONLY_METRICS, ReportSpec

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


#: a sweep dir's hand-written launch log (committed sweeps have one): every launch, its commit, wall
#: time and what it resumed; a multi-launch sweep's last command alone does not say how it was made
LAUNCH_LOG = "COMMAND.md"
REBUILD = "`python -m csp_ablate.report <sweep dir>` rebuilds it from the records"


def command_lines(command: str | None, launch_log: bool = False) -> list[str]:
    """The "Made by" line: the launch log when the sweep dir has one (then the last launch's
    command, from Hydra's multirun.yaml, if that is there too), else that command, else nothing."""
    if launch_log:
        last = f"; the last launch was `{command}`" if command else ""
        return ["", f"Made by: the launches in {LAUNCH_LOG} (each with its commit, wall time and what it resumed)"
                    f"{last}; {REBUILD}."]
    return ["", f"Made by: `{command}` (then {REBUILD})."] if command else []


AXIS_HEADERS = {"gamma": "γ", "fusion": "fusion", "activation": "act.", "neck": "neck", "extras": "extras"}
METRIC_TEXT = {  # what a metric is, for the sentence above a table
    "top1": "top-1 = test top-1 in %",
    "val_top1": "val top-1 = top-1 on the validation split in %",
    "ap": "AP = box AP (IoU 0.50:0.95) on the val split in % (COCO has no labelled test split)",
    "ap50": "AP50 = box AP at IoU 0.50 in %",
    "fps": "fps = frames/s measured at batch 1 on the run's own device",
}
SIGN_ONLY_NOTE = ("fps is measured on this project's device (a CPU for the proxy tiers), so only the sign of an "
                  "fps change is comparable with the paper's GPU fps")


def _metric_label(metric: str) -> str:
    return METRIC_INFO[metric]["label"]


def paper_table_md(table: pd.DataFrame, spec: ReportSpec, runs: pd.DataFrame, command: str | None = None,
                   fps_text: str | None = None, launch_log: bool = False) -> str:
    """The paper-shaped table; ``fps_text`` (csp_ablate.report.quiet_fps.fps_note) says how the
    fps column was measured, or that it was not."""
    labels = {r.id: r.label for r in spec.rows}
    base_labels = [labels[b] for b in spec.baselines]
    single = len(spec.baselines) == 1
    cols: dict[str, object] = {"model": table["label"]}
    for key in [k for k in spec.match if k != "model"] or ["gamma", "fusion", "activation"]:
        cols[AXIS_HEADERS.get(key, key)] = table[key].map(axis) if key in table else DASH
    cols["#Param (M)"] = table["params_m"].map(lambda x: num(x, 3))
    deltas = [table[f"bflops_delta_pct{spec.suffix(b)}"] for b in spec.baselines]
    bflops_head = "BFLOPs (Δ %)" if single else f"BFLOPs (Δ % vs {' / '.join(base_labels)})"
    cols[bflops_head] = [f"{num(b, 3)} ({' / '.join(num(d, 1, True) for d in ds)})" if not _isnan(b) else DASH
                         for b, *ds in zip(table["bflops"], *deltas)]
    for i, metric in enumerate(spec.metrics):
        info = METRIC_INFO[metric]
        digits = info["digits"]
        means, cis = table[f"{metric}_mean"], table[f"{metric}_ci95"]
        if i == 0:
            head = f"{info['label']}{' %' if metric == 'top1' else ''} (n)"
            cols[head] = [f"{mean_pm(m, c, digits)} (n={n})" if n else f"{DASH} ({'failed' if nf else 'not run'})"
                          for m, c, n, nf in zip(means, cis, table["n"], table["n_failed"])]
        else:
            cols[info["label"]] = [mean_pm(m, c, digits) for m, c in zip(means, cis)]
        for base, base_label in zip(spec.baselines, base_labels):
            col = f"{metric}_delta{spec.suffix(base)}"
            cols[f"Δ {info['label']} vs {base_label}"] = [mean_pm(d, c, digits, signed=True)
                                                        for d, c in zip(table[col], table[f"{col}_ci95"])]
    if single:
        cols["paper #Param"] = table["paper_params_m"].map(lambda x: num(x, 2))
        cols["paper BFLOPs (Δ %)"] = [_paper_pair(b, d, 3, 0)
                                      for b, d in zip(table["paper_bflops"], table["paper_bflops_delta_pct"])]
        for metric in spec.metrics:
            cols[f"paper {_metric_label(metric)} (Δ)"] = [
                _paper_pair(t, d, 1, 1) for t, d in zip(table[f"paper_{metric}"], table[f"paper_{metric}_delta"])]
    else:  # several baselines: the published values where there are any, then each delta as stated
        for key, head, digits in (("paper_params_m", "paper #Param", 2), ("paper_bflops", "paper BFLOPs", 3),
                                  *((f"paper_{m}", f"paper {_metric_label(m)}", 1) for m in spec.metrics)):
            if table[key].notna().any():
                cols[head] = table[key].map(lambda x, d=digits: num(x, d))
        vs = [labels.get(v, v) if isinstance(v, str) else None for v in table["paper_delta_vs"]]
        for metric in spec.metrics:
            cols[f"paper Δ {_metric_label(metric)}"] = [
                f"{num(d, 1, True)} vs {v}" if not _isnan(d) else DASH
                for d, v in zip(table[f"paper_{metric}_delta_stated"], vs)]
    view = pd.DataFrame(cols)
    lines = [
        f"**{spec.title}** (ours beside the paper's)",
        "",
        _table_intro(spec, runs, base_labels, fps_text),
        *command_lines(command, launch_log),
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


def _table_intro(spec: ReportSpec, runs: pd.DataFrame, base_labels: list[str], fps_text: str | None = None) -> str:
    what = ", ".join(METRIC_TEXT[m] for m in spec.metrics if not (m == "fps" and fps_text))
    units = ", ".join(f"{_metric_label(m)} in {METRIC_INFO[m]['unit']}" for m in spec.metrics)
    sign_only = [m for m in spec.metrics if m in SIGN_ONLY_METRICS]
    return (
        f"Ours: {describe_runs(runs)}. {what}, mean ± 95 % t-interval half-width "
        f"over seeds (n = completed seeds). #Param and BFLOPs are exact profiler counts at {spec.cost_basis}. "
        f"Deltas are against {' and '.join(base_labels)}: compute in relative %, {units} "
        f"(95 % interval with the within-row variance pooled across the rows{'; fps: Welch' if sign_only else ''}; "
        f"csp_ablate/report/verdicts.py).{' ' + SIGN_ONLY_NOTE + '.' if sign_only else ''} "
        f"{fps_text + '. ' if fps_text and 'fps' in spec.metrics else ''}"
        f"Paper: csp_ablate/reference/reference.csv ({DASH} = not published)."
    )


def _paper_pair(value, delta, digits: int, delta_digits: int) -> str:
    if _isnan(value) and _isnan(delta):
        return DASH
    d = f" ({num(delta, delta_digits, True)})" if not _isnan(delta) else ""
    return f"{num(value, digits)}{d}" if not _isnan(value) else f"{DASH}{d}"


CLAIM_METRIC_HEADS = {"bflops": "BFLOPs Δ", "top1": "top-1 Δ (points)", "val_top1": "val top-1 Δ (points)",
                      "ap": "AP Δ (points)", "ap50": "AP50 Δ (points)", "fps": "fps Δ (sign only)"}


def claims_md(claims: pd.DataFrame, spec: ReportSpec,
              variance: dict[str, tuple[float, int, float]] | None = None) -> str:
    """The claims file: the rule (stated once, in csp_ablate.report.verdicts), the pooled SD it
    used with its equal-variance check, and one row per claim with both verdicts and the power."""
    from csp_ablate.report.verdicts import COMPUTE_TOL_PT, RULE_TEXT

    def paper_cell(row):
        unit = {"bflops": " %", "fps": " fps"}.get(row["metric"], "")
        if _isnan(row["paper"]):
            return str(row["direction"])
        margin = "" if row["metric"] in ("bflops", *SIGN_ONLY_METRICS) else f" ± {row['margin']:g}"
        return f"{row['paper']:+g}{unit}{margin}"

    def ours_cell(row):
        if row["metric"] == "bflops":
            return f"{num(row['measured'], 1, True)} %"
        digits = METRIC_INFO[row["metric"]]["digits"]
        span = f" [{num(row['ci95_low'], digits, True)}, {num(row['ci95_high'], digits, True)}]" \
            if not _isnan(row["ci95_low"]) else ""
        return f"{num(row['measured'], digits, True)}{span} (n={row['n']} vs {row['n_vs']})"

    view = pd.DataFrame({
        "claim": claims["text"],
        "metric": claims["metric"].map(CLAIM_METRIC_HEADS),
        "paper": [paper_cell(r) for _, r in claims.iterrows()],
        "ours (95 % interval)": [ours_cell(r) for _, r in claims.iterrows()],
        "verdict": claims["verdict"],
        "Holm": claims["verdict_holm"],
        "mde80": claims["mde80"].map(lambda x: num(x, 2)),
        "seeds needed": claims["seeds_needed"].map(lambda x: DASH if _isnan(x) else f"{int(x)}"),
        "why": claims["reason"],
        "source": claims["source"],
    })

    def tally(col):
        counts = claims[col].value_counts()
        return ", ".join(f"{counts.get(v, 0)} {v}" for v in ("reproduced", "contradicted", "inconclusive"))

    sign_only = [m for m in spec.metrics if m in SIGN_ONLY_METRICS and (claims["metric"] == m).any()]
    welch = (f"; {' / '.join(map(_metric_label, sign_only))}: Welch's interval, judged on the direction (sign) "
             f"only: {SIGN_ONLY_NOTE}") if sign_only else ""
    lines = [f"**Claims: {spec.title}** ({tally('verdict')}; Holm-adjusted: {tally('verdict_holm')})", "",
             RULE_TEXT.format(welch=welch, tol=COMPUTE_TOL_PT)]
    for metric, (sd, df, p) in (variance or {}).items():
        check = f"Bartlett's test of equal variance across rows p = {p:.2f}" if not _isnan(p) else "no variance check"
        lines.append(f"\nPooled seed SD of {_metric_label(metric)}: {num(sd, 3)} points (df = {df}; {check}).")
    return "\n".join([*lines, "", to_md(view), ""])


def summary_md(summary: pd.DataFrame, runs: pd.DataFrame, title: str, command: str | None = None,
               launch_log: bool = False) -> str:
    axes = [c for c in ("task", "dataset", "model", "gamma", "fusion", "neck", "extras", "activation",
                        "tier", "img_size", "epochs") if c in summary]
    varying = [c for c in axes if summary[c].astype("string").nunique(dropna=False) > 1] or ["model"]
    view = summary[["config_hash", *varying]].copy()
    for c in varying:
        view[c] = view[c].map(axis)
    view["n"] = summary["n"]
    view["#Param (M)"] = summary["params_m"].map(lambda x: num(x, 3))
    view["BFLOPs"] = summary["bflops"].map(lambda x: num(x, 3))
    has_top1 = summary["top1_mean"].notna().any() or summary["val_top1_mean"].notna().any()
    has_ap = summary["ap_mean"].notna().any()  # detection runs
    if has_top1 or not has_ap:
        view["top-1 %"] = [mean_pm(m, c) for m, c in zip(summary["top1_mean"], summary["top1_ci95"])]
        view["val top-1 %"] = [mean_pm(m, c) for m, c in zip(summary["val_top1_mean"], summary["val_top1_ci95"])]
    if has_ap:
        view["AP"] = [mean_pm(m, c) for m, c in zip(summary["ap_mean"], summary["ap_ci95"])]
        view["AP50"] = [mean_pm(m, c) for m, c in zip(summary["ap50_mean"], summary["ap50_ci95"])]
    view["train s"] = summary["train_time_s_mean"].map(lambda x: num(x, 0))
    view["note"] = summary["note"].fillna("")
    const = [c for c in axes if c not in varying and summary[c].notna().any()]
    fixed = ", ".join(f"{c}={axis(summary[c].dropna().iloc[0])}" for c in const)
    return "\n".join([
        f"**{title}**: one row per configuration (config hash), {describe_runs(runs)}.",
        f"Same for every row: {fixed}." if fixed else "",
        f"{'AP, AP50' if has_ap and not has_top1 else 'top-1'}: mean ± 95 % t-interval half-width over the completed seeds.",
        *command_lines(command, launch_log),
        "",
        to_md(view),
        "",
    ])
