"""The paper's Figure 7 for detectors: per-layer cost of PeleeNet-YOLO, PeleeNet-PRN, CSPPeleeNet-EFM.

The paper plots the BFLOPs of every layer of the three detectors and states that CSPNet cuts
PeleeNet-YOLO's computational bottleneck (its largest layer) by 80 % (FACTS.md, "Other
published figures"). This module counts each detector with the profiler's hook counter
(:func:`csp_ablate.profile.per_layer_table`) at the paper's detector input (320×320, 80
classes), writes one CSV per detector, ``figure7_detection.csv`` (the bottleneck of each and
its cut against PeleeNet-YOLO), a bar plot and a markdown summary::

    python -m csp_ablate.detection_profile                 # -> results/fidelity/detection/
    python -m csp_ablate.detection_profile --img-size 416 --out /tmp/fig7

PeleeNet-YOLO is PeleeNet with YOLOv3's own neck and head (``neck=yolov3``: 5-conv sets,
head 3×3 doubling the width); PeleeNet-PRN and CSPPeleeNet-EFM use the Table 2 necks at the
default width (``detector.neck_channels=128``). The paper gives neither detector's widths, so
the cut is a measurement of these designs, not a re-derivation of the paper's number.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAPER_CUT_PCT = -80.0  # "CSPNet cuts PeleeNet-YOLO's bottleneck by 80 %" (paper, Figure 7 text)
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


def build(spec: DetectorSpec, img_size: int, num_classes: int = 80):
    from csp_ablate.models.detector import build_detector
    from csp_ablate.models.heads import YOLOV3_ANCHORS

    anchors = [[(w * img_size / 416, h * img_size / 416) for w, h in scale] for scale in YOLOV3_ANCHORS]
    return build_detector(dict(spec.backbone), spec.neck, [], num_classes=num_classes, anchors=anchors)


def _part(name: str) -> str:
    return name.split(".")[0]  # backbone | spp | neck | sam | head


def figure7(out_dir: Path, img_size: int = 320, num_classes: int = 80):
    """Write per-layer CSVs, ``figure7_detection.csv|md`` and the plot; return the summary table."""
    import pandas as pd

    from csp_ablate.atomic import write_text_atomic
    from csp_ablate.profile import bottleneck, per_layer_table, plot_per_layer

    out_dir.mkdir(parents=True, exist_ok=True)
    tables, rows = {}, []
    for spec in DETECTORS:
        table = per_layer_table(build(spec, img_size, num_classes), img_size)
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
    summary["paper_cut_pct"] = [PAPER_CUT_PCT if d == "CSPPeleeNet-EFM" else None for d in summary["detector"]]
    summary["how"] = f"our hook counter (csp_ablate.profile) at {img_size}x{img_size}, batch 1, {num_classes} classes"
    write_text_atomic(out_dir / "figure7_detection.csv", summary.to_csv(index=False))
    plot_per_layer(tables, out_dir / "figure7_detection.png",
                   title=f"Per-layer BFLOPs of three detectors at {img_size}x{img_size} (paper Figure 7)")
    write_text_atomic(out_dir / "figure7_detection.md", markdown(summary))
    return summary


def markdown(summary) -> str:
    lines = ["# Computational bottleneck of the detectors (paper Figure 7)", "",
             f"How: {summary['how'].iloc[0]}; `python -m csp_ablate.detection_profile`. Plot: "
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m csp_ablate.detection_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/fidelity/detection"), help="output directory")
    parser.add_argument("--img-size", type=int, default=320, help="square detector input (paper: 320)")
    parser.add_argument("--num-classes", type=int, default=80, help="classes of the head (COCO: 80)")
    args = parser.parse_args(argv)
    summary = figure7(args.out, args.img_size, args.num_classes)
    print(markdown(summary))
    print(f"wrote {args.out}/figure7_detection.csv|md|png")


if __name__ == "__main__":
    main()
