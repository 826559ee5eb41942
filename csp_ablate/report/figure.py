"""A spec's figure: its first metric (mean ± 95 % CI) against BFLOPs or another metric, one point per row.

Figure 4: top-1 against BFLOPs for the four partial-transition structures; Table 2: AP against
fps (both with their CIs) for the eight necks/extras. The figure spec's keys: ``name`` (file
stem), ``rows`` (default: all), ``x`` (``bflops`` or a spec metric), ``legend`` (legend title).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from csp_ablate.atomic import write_with
from csp_ablate.report.markdown import describe_runs
from csp_ablate.report.spec import METRIC_INFO, ReportSpec

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def plot_figure(table: pd.DataFrame, spec: ReportSpec, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.svg``; rows without a completed run are listed as gaps."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig_spec = spec.figure or {}
    name = str(fig_spec.get("name", spec.table))
    ids = list(fig_spec.get("rows") or table["row"])
    rows = table.set_index("row").loc[ids].reset_index()
    base = rows[rows["row"] == spec.baseline]

    y = spec.metrics[0]
    x = str(fig_spec.get("x", "bflops"))
    y_info = METRIC_INFO[y]
    x_col = "bflops" if x == "bflops" else f"{x}_mean"
    x_value = "{:.3f} BFLOPs" if x == "bflops" else METRIC_INFO[x]["value"]
    delta_col = f"{y}_delta{spec.suffix(spec.baseline)}"
    many = len(rows) > 4  # the legend goes below the axes, where it hides no point
    fig, ax = plt.subplots(figsize=(6.4, 4.6 + 0.22 * len(rows) if many else 4.6), dpi=150)
    gaps, no_x = [], []
    for i, row in rows.iterrows():
        if row["n"] == 0 or pd.isna(row[f"{y}_mean"]):
            gaps.append(row["label"])
            continue
        if pd.isna(row[x_col]):  # fps without fps.csv: the busy sweep's fps is never plotted
            no_x.append(row["label"])
            continue
        ci = row[f"{y}_ci95"] if pd.notna(row[f"{y}_ci95"]) else 0.0
        xerr = None
        if x != "bflops":
            xerr = row[f"{x}_ci95"] if pd.notna(row[f"{x}_ci95"]) else 0.0
        delta = "" if row["row"] == spec.baseline else f", Δ {row[delta_col]:+.2f}"
        bars = ax.errorbar(
            row[x_col], row[f"{y}_mean"], yerr=ci, xerr=xerr, fmt=MARKERS[i % len(MARKERS)], ms=8, capsize=4,
            label=f"{row['label']}: {x_value.format(row[x_col])}, {y_info['value'].format(row[f'{y}_mean'])} "
                  f"(n={row['n']}{delta})",
        )
        tag = str(row["label"]).split()[0] if str(row["label"]).startswith("(") else str(row["label"])
        ax.annotate(tag, (row[x_col], row[f"{y}_mean"]), xytext=(7, 5), textcoords="offset points",
                    fontsize=8, color=bars[0].get_color())
    if not base.empty and pd.notna(base[f"{y}_mean"].iloc[0]):
        ax.axhline(base[f"{y}_mean"].iloc[0], color="grey", lw=0.8, ls=":", zorder=0)
    ax.set_xlabel(f"computation (BFLOPs at {spec.cost_basis})" if x == "bflops" else METRIC_INFO[x]["axis"])
    ax.set_ylabel(y_info["axis"])
    subtitle = textwrap.fill(f"ours: {describe_runs(runs)}", 80)
    ax.set_title(f"{spec.title}\n{subtitle}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        legend = str(fig_spec.get("legend", "row"))
        title = f"{legend}; error bars: 95 % CI"
        if many:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), title=title, title_fontsize=7)
        else:
            ax.legend(fontsize=7, loc="best", title=title, title_fontsize=7)
    notes = ["no completed run: " + ", ".join(gaps)] if gaps else []
    if no_x:
        how = " (python -m csp_ablate.profile sweep_dir=<sweep dir>)" if x == "fps" else ""
        notes.append(textwrap.fill(f"{x} not measured{' quietly' if x == 'fps' else ''}{how}: " + ", ".join(no_x), 100))
    if notes:
        ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=7, color="firebrick", va="bottom")
    fig.tight_layout()
    paths = []
    for suffix in ("png", "svg"):
        path = Path(out_dir) / f"{name}.{suffix}"
        # no timestamps in the files: the same records always give the same bytes
        meta = {"Date": None} if suffix == "svg" else {}
        with matplotlib.rc_context({"svg.hashsalt": "csp_ablate"}):  # stable SVG element ids
            write_with(path, lambda tmp, s=suffix, m=meta: fig.savefig(tmp, format=s, metadata=m))
        paths.append(path)
    plt.close(fig)
    return paths
