"""The paper's Figure 7: per-layer BFLOPs and the computational bottleneck (the largest layer).

* Classifiers (:func:`bottleneck_report`): PeleeNet vs CSPPeleeNet (γ=0.5, CSP) at 224x224; the
  paper says CSP cuts the backbone's bottleneck by 44 %.
* Detectors (:func:`detection_figure7`): PeleeNet-YOLO, PeleeNet-PRN and CSPPeleeNet-EFM at the
  paper's 320x320 and 80 classes; the paper says CSPNet cuts PeleeNet-YOLO's bottleneck by 80 %.
  PeleeNet-YOLO is PeleeNet with YOLOv3's own neck and head (``neck=yolov3``: 5-conv sets, head
  3x3 doubling the width); PeleeNet-PRN and CSPPeleeNet-EFM use the Table 2 necks at the default
  width (``detector.neck_channels=128``). The paper gives neither detector's widths, so the cut
  is a measurement of these designs, not a re-derivation of the paper's number.

Both run from the profiler CLI: ``python -m csp_ablate.profile figure7=classifier`` (into
``out_dir``) and ``figure7=detection`` (into ``detection.out_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csp_ablate.atomic import write_text_atomic, write_with
from csp_ablate.profile.counting import bottleneck, per_layer_table
from csp_ablate.profile.fidelity import PAPER_BOTTLENECK_CUT_PCT, ModelSpec, build

STAGES_2_3 = "largest layer in stages 2-3 (stages.1-2)"


def bottleneck_report(out_dir: Path, img_size: int = 224, activation: str = "leaky"):
    """Per-layer CSVs + Figure-7-style PNG for PeleeNet vs CSPPeleeNet (γ=0.5, CSP), and
    ``bottleneck.csv``: the largest layer overall and per stage, with the cut vs the paper's −44 %."""
    import pandas as pd

    out_dir = Path(out_dir)
    base_spec = ModelSpec("peleenet", activation=activation)
    csp_spec = ModelSpec("csppeleenet", 0.5, "csp", activation)
    tables = {}
    for spec in (base_spec, csp_spec):
        tables[spec] = per_layer_table(build(spec), img_size)
        write_text_atomic(out_dir / f"per_layer_{spec.slug}.csv", tables[spec].to_csv(index=False))
    base, csp = tables[base_spec], tables[csp_spec]
    rows = []
    scopes = [("largest layer", None), (STAGES_2_3, ("stages.1", "stages.2"))]
    scopes += [(f"largest layer in {s}", (s,)) for s in ("stem", "stages.0", "stages.1", "stages.2", "stages.3")]
    for scope, stages in scopes:
        b = base if stages is None else base[base["stage"].isin(stages)]
        c = csp if stages is None else csp[csp["stage"].isin(stages)]
        bb, cc = bottleneck(b), bottleneck(c)
        paper = PAPER_BOTTLENECK_CUT_PCT if scope in ("largest layer", STAGES_2_3) else None
        rows.append({"scope": scope, "base_layer": bb["layer"], "base_bflops": bb["bflops"], "csp_layer": cc["layer"],
                     "csp_bflops": cc["bflops"], "cut_pct": 100 * (cc["bflops"] / bb["bflops"] - 1),
                     "paper_cut_pct": paper})
    bn = pd.DataFrame(rows)
    write_text_atomic(out_dir / "bottleneck.csv", bn.to_csv(index=False))
    plot_per_layer({base_spec.label: base, csp_spec.label: csp}, out_dir / "figure7_per_layer.png",
                   title=f"Per-layer BFLOPs at {img_size}x{img_size} (paper Figure 7)")
    return bn, tables


def plot_per_layer(tables: dict[str, Any], path: Path, title: str = "") -> Path:
    """Bar plot of per-layer BFLOPs (one panel per model, shared y); the bottleneck in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tables)
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.8 * n + 0.6), sharey=True, squeeze=False)
    peak = max(float(t["bflops"].max()) for t in tables.values())
    for ax, (label, t) in zip(axes[:, 0], tables.items()):
        i_max = int(t["bflops"].idxmax())
        colors = ["#c0392b" if i == i_max else "#4c72b0" for i in range(len(t))]
        ax.bar(range(len(t)), t["bflops"], color=colors, width=0.85)
        ax.axhline(peak, color="grey", ls="--", lw=0.8)
        top = t.loc[i_max]
        ax.annotate(f"bottleneck: {top['name']} ({top['bflops']:.4f} BFLOPs)", (i_max, top["bflops"]),
                    xytext=(5, -12), textcoords="offset points", fontsize=8, color="#c0392b")
        ax.set_title(f"{label}: total {t['bflops'].sum():.3f} BFLOPs, {len(t)} layers", fontsize=10)
        ax.set_ylabel("BFLOPs")
        # stage boundaries
        stage = t["stage"].tolist()
        starts = [0] + [k for k in range(1, len(stage)) if stage[k] != stage[k - 1]]
        for a, b in zip(starts, starts[1:] + [len(stage)]):
            if a:
                ax.axvline(a - 0.5, color="black", lw=0.4, alpha=0.4)
            ax.text((a + b - 1) / 2, peak * 1.02, stage[a], ha="center", va="bottom", fontsize=7, color="dimgrey")
        ax.set_ylim(0, peak * 1.12)
    axes[-1, 0].set_xlabel("layer (conv / fc, execution order; thin lines = stage boundaries)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


# ---- detectors ----------------------------------------------------------------------------------
DETECTION_PAPER_CUT_PCT = -80.0  # "CSPNet cuts PeleeNet-YOLO's bottleneck by 80 %" (paper, Figure 7 text)
PELEE = {"name": "peleenet", "activation": "leaky"}
CSP_PELEE = {"name": "csppeleenet", "gamma": 0.5, "fusion": "csp", "activation": "leaky"}


@dataclass(frozen=True)
class DetectorSpec:
    label: str
    backbone: dict[str, Any]
    neck: str

    @property
    def slug(self) -> str:
        return self.label.lower().replace(" ", "_")


DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec("PeleeNet-YOLO", PELEE, "yolov3"),
    DetectorSpec("PeleeNet-PRN", PELEE, "prn"),
    DetectorSpec("CSPPeleeNet-EFM", CSP_PELEE, "efm"),
)


def build_detector_spec(spec: DetectorSpec, img_size: int, num_classes: int = 80):
    from csp_ablate.models.detector import build_detector
    from csp_ablate.models.heads import YOLOV3_ANCHORS

    anchors = [[(w * img_size / 416, h * img_size / 416) for w, h in scale] for scale in YOLOV3_ANCHORS]
    return build_detector(dict(spec.backbone), spec.neck, [], num_classes=num_classes, anchors=anchors)


def _part(name: str) -> str:
    return name.split(".")[0]  # backbone | spp | neck | sam | head


def detection_figure7(out_dir: Path, img_size: int = 320, num_classes: int = 80):
    """Write per-layer CSVs, ``figure7_detection.csv|md`` and the plot; return the summary table."""
    import pandas as pd


    out_dir.mkdir(parents=True, exist_ok=True)
    tables, rows = {}, []
    for spec in DETECTORS:
        table = per_layer_table(build_detector_spec(spec, img_size, num_classes), img_size)
        table["part"] = table["name"].map(_part)
        tables[spec.label] = table
        write_text_atomic(out_dir / f"per_layer_{spec.slug}-{img_size}.csv", table.to_csv(index=False))
        top = bottleneck(table)
        rows.append({
            "detector": spec.label, "neck": spec.neck, "img_size": img_size, "num_classes": num_classes,
            "bflops": float(table["bflops"].sum()), "layers": len(table),
            "bottleneck_layer": top["layer"], "bottleneck_part": _part(top["layer"]),
            "bottleneck_bflops": top["bflops"], "bottleneck_share_pct": top["share_pct"],
        })
    summary = pd.DataFrame(rows)
    base = summary.loc[summary["detector"] == "PeleeNet-YOLO", "bottleneck_bflops"].iloc[0]
    summary["bottleneck_cut_pct_vs_yolo"] = 100 * (summary["bottleneck_bflops"] / base - 1)
    summary["paper_cut_pct"] = [DETECTION_PAPER_CUT_PCT if d == "CSPPeleeNet-EFM" else None for d in summary["detector"]]
    summary["how"] = f"our hook counter (csp_ablate.profile) at {img_size}x{img_size}, batch 1, {num_classes} classes"
    write_text_atomic(out_dir / "figure7_detection.csv", summary.to_csv(index=False))
    plot_per_layer(tables, out_dir / "figure7_detection.png",
                   title=f"Per-layer BFLOPs of three detectors at {img_size}x{img_size} (paper Figure 7)")
    write_text_atomic(out_dir / "figure7_detection.md", detection_markdown(summary))
    return summary


def detection_markdown(summary) -> str:
    lines = ["# Computational bottleneck of the detectors (paper Figure 7)", "",
             f"How: {summary['how'].iloc[0]}; `python -m csp_ablate.profile figure7=detection`. Plot: "
             "`figure7_detection.png`; every layer: `per_layer_<detector>-<size>.csv`.", "",
             "| detector | BFLOPs | bottleneck layer | its BFLOPs | share % | cut vs PeleeNet-YOLO % | paper % |",
             "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        paper = "" if r["paper_cut_pct"] is None or r["paper_cut_pct"] != r["paper_cut_pct"] else f"{r['paper_cut_pct']:+.0f}"
        lines.append(f"| {r['detector']} | {r['bflops']:.3f} | `{r['bottleneck_layer']}` | {r['bottleneck_bflops']:.4f} "
                     f"| {r['bottleneck_share_pct']:.1f} | {r['bottleneck_cut_pct_vs_yolo']:+.1f} | {paper} |")
    lines += ["", "The paper does not publish the detectors' widths; PeleeNet-YOLO here is YOLOv3's neck and head "
              "on PeleeNet, the others use this project's Table 2 necks (width 128). The cut is what these "
              "designs give, next to the paper's claim.", ""]
    return "\n".join(lines)
