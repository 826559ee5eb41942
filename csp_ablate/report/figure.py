"""Figure 4: top-1 (mean ± 95 % CI) against BFLOPs for the four partial-transition structures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from csp_ablate.report.io import write_with
from csp_ablate.report.markdown import describe_runs
from csp_ablate.report.spec import ReportSpec

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

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    gaps = []
    for i, row in rows.iterrows():
        if row["n"] == 0 or pd.isna(row["top1_mean"]) or pd.isna(row["bflops"]):
            gaps.append(row["label"])
            continue
        ci = row["top1_ci95"] if pd.notna(row["top1_ci95"]) else 0.0
        delta = "" if row["row"] == spec.baseline else f", Δ {row['top1_delta']:+.2f}"
        bars = ax.errorbar(
            row["bflops"], row["top1_mean"], yerr=ci, fmt=MARKERS[i % len(MARKERS)], ms=8, capsize=4,
            label=f"{row['label']}: {row['bflops']:.3f} BFLOPs, {row['top1_mean']:.2f} % (n={row['n']}{delta})",
        )
        tag = str(row["label"]).split()[0] if str(row["label"]).startswith("(") else str(row["label"])
        ax.annotate(tag, (row["bflops"], row["top1_mean"]), xytext=(7, 5), textcoords="offset points",
                    fontsize=8, color=bars[0].get_color())
    if not base.empty and pd.notna(base["top1_mean"].iloc[0]):
        ax.axhline(base["top1_mean"].iloc[0], color="grey", lw=0.8, ls=":", zorder=0)
    ax.set_xlabel("computation (BFLOPs at 224×224, 1000 classes)")
    ax.set_ylabel("top-1 accuracy on the test set (%)")
    subtitle = textwrap.fill(f"ours: {describe_runs(runs)}", 80)
    ax.set_title(f"{spec.title}\n{subtitle}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best", title="structure (Fig. 3); error bars: 95 % CI", title_fontsize=7)
    if gaps:
        ax.text(0.01, 0.01, "no completed run: " + ", ".join(gaps), transform=ax.transAxes, fontsize=7,
                color="firebrick", va="bottom")
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
