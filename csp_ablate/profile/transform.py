"""Fidelity of the CSP transform, counted independently of :mod:`csp_ablate.profile`.

``python -m csp_ablate.profile transform=true [out_dir=results/fidelity]`` (or the older spelling
``python -m csp_ablate.transform_fidelity [--out results/fidelity/transform]``) writes into
``<out_dir>/transform``

* ``darknet53.csv|md``: timm's ``darknet53`` transformed at γ=0.5, fusion=csp against timm's
  ``cspdarknet53`` and the authors' README CSPDarkNet-53 (27.61M / 13.07 BFLOPs at 256×256),
  plus the variants that remove each structural difference, stage by stage;
* ``deltas.csv|md|png``: params and BFLOPs of every γ ∈ {0.25, 0.5, 0.75} × fusion for each
  base in :data:`~csp_ablate.models.csp_transform.CSP_BASES`, as deltas against the base.

Counting: ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only, no
arithmetic, so a count takes a second); BFLOPs = 2 × MACs / 1e9 (the counter's FLOPs), 1000
classes, at each model's ``profile.paper_img_size`` (256 for the Table 3 families, 224 else).

Why the plain transform is not timm's cspdarknet53 (measured by :func:`darknet_fidelity`)
    Same stem, same block counts (1, 2, 8, 8, 4), same blocks (c/2 in and out, c/2 inside) and
    the same two transitions. Two differences remain, both of the authors' darknet cfg: (1) the
    split is a 1x1 conv-BN-act of the base map (timm's ``conv_exp``; darknet's two route convs)
    instead of a channel slice, in every stage; (2) stage 1 expands 64 -> 128 channels before the
    split (expansion ratio 2), so its blocks run at the full 64 channels. ``split='conv'`` removes
    (1), ``expand=(2, 1, 1, 1, 1)`` removes (2): the result is cspdarknet53 parameter for
    parameter and FLOP for FLOP.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from csp_ablate.models.csp_transform import CSP_BASES, csp_name

OUT_DIR = Path("results/fidelity/transform")
GAMMAS: tuple[float, ...] = (0.25, 0.5, 0.75)
FUSIONS: tuple[str, ...] = ("csp", "first", "last")
#: profile.paper_img_size of each base's conf/model file (the Table 3 families count at 256).
IMG_SIZE: dict[str, int] = {"densenet121": 224, "resnet50": 256, "resnext50_32x4d": 256, "darknet53": 256}
#: The authors' README (FACTS.md, Table 3): CSPDarkNet-53 at 256×256.
README_CSPDARKNET53 = {"params_m": 27.61, "bflops": 13.07}
TOLERANCE_PCT = 3.0
#: darknet53 variants: (label, timm name, kwargs, structural difference left to cspdarknet53)
DARKNET_VARIANTS: tuple[tuple[str, str, dict, str], ...] = (
    ("transform (slice split)", "csp_darknet53", {}, "split by channel slice; stage 1 not expanded"),
    ("transform, split='conv'", "csp_darknet53", {"split": "conv"}, "stage 1 not expanded (ratio 1 vs 2)"),
    ("transform, split='conv', expand=(2,1,1,1,1)", "csp_darknet53",
     {"split": "conv", "expand": (2, 1, 1, 1, 1)}, "none"),
    ("timm cspdarknet53", "cspdarknet53", {}, "reference"),
    ("timm darknet53 (untransformed)", "darknet53", {}, "baseline"),
)


def count(name: str, img_size: int, num_classes: int = 1000, **kwargs) -> dict:
    """Params (M), BFLOPs and per-stage params/BFLOPs of a timm model, counted on the meta device."""
    import timm

    import csp_ablate.models  # noqa: F401  (registers csp_* in timm)

    with torch.device("meta"):
        model = timm.create_model(name, num_classes=num_classes, **kwargs).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, img_size, img_size))
    flops = counter.get_flop_counts()
    out = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "bflops": counter.get_total_flops() / 1e9}
    stages = getattr(model, "stages", None)
    for i, stage in enumerate(stages or []):
        key = f"{type(model).__name__}.stages.{i}"
        out[f"stage{i}_params_m"] = sum(p.numel() for p in stage.parameters()) / 1e6
        out[f"stage{i}_bflops"] = sum(flops.get(key, {}).values()) / 1e9
    return out


def pct(value: float, ref: float) -> float:
    return 100.0 * (value / ref - 1.0)


def darknet_fidelity(img_size: int = 256) -> pd.DataFrame:
    """One row per :data:`DARKNET_VARIANTS` entry with % differences to timm's and the README's CSPDarkNet-53."""
    rows = [dict(variant=label, model=name, kwargs=repr(kw) if kw else "", difference_left=diff,
                 **count(name, img_size, **({"gamma": 0.5, "fusion": "csp", **kw} if name.startswith("csp_") else kw)))
            for label, name, kw, diff in DARKNET_VARIANTS]
    table = pd.DataFrame(rows)
    ref = table.set_index("variant").loc["timm cspdarknet53"]
    for metric in ("params_m", "bflops"):
        table[f"{metric}_vs_timm_pct"] = pct(table[metric], ref[metric])
        table[f"{metric}_vs_readme_pct"] = pct(table[metric], README_CSPDARKNET53[metric])
    table["within_3pct"] = table[[f"{m}_vs_{r}_pct" for m in ("params_m", "bflops") for r in ("timm", "readme")]
                                 ].abs().le(TOLERANCE_PCT).all(axis=1)
    return table.round(4)


def delta_table(bases: Sequence[str] = CSP_BASES, gammas: Sequence[float] = GAMMAS,
                fusions: Sequence[str] = FUSIONS) -> pd.DataFrame:
    """Params/BFLOPs of every γ × fusion per base, with % deltas against the untransformed base."""
    rows = []
    for base in bases:
        size = IMG_SIZE.get(base, 224)
        ref = count(base, size)
        rows.append(dict(base=base, gamma=None, fusion="none", img_size=size, params_m=ref["params_m"],
                         bflops=ref["bflops"]))
        for fusion in fusions:
            for gamma in gammas:
                got = count(csp_name(base), size, gamma=gamma, fusion=fusion)
                rows.append(dict(base=base, gamma=gamma, fusion=fusion, img_size=size, params_m=got["params_m"],
                                 bflops=got["bflops"]))
    table = pd.DataFrame(rows)
    base_rows = table[table["fusion"] == "none"].set_index("base")
    for metric in ("params_m", "bflops"):
        table[f"{metric}_delta_pct"] = pct(table[metric], table["base"].map(base_rows[metric]))
    return table.round(4)


def plot_deltas(table: pd.DataFrame, path: Path) -> None:
    """One panel per base: BFLOPs delta (solid) and params delta (dashed) against γ, one colour per fusion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(dict.fromkeys(table["base"]))
    fig, axes = plt.subplots(1, len(bases), figsize=(4 * len(bases), 3.6), sharey=True)
    for ax, base in zip(list(getattr(axes, "flat", [axes])), bases):
        part = table[(table["base"] == base) & (table["fusion"] != "none")]
        for (fusion, grp), colour in zip(part.groupby("fusion", sort=False), ("C0", "C1", "C2")):
            ax.plot(grp["gamma"], grp["bflops_delta_pct"], "o-", color=colour, label=f"{fusion} BFLOPs")
            ax.plot(grp["gamma"], grp["params_m_delta_pct"], "s--", color=colour, alpha=0.6, label=f"{fusion} params")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{base} ({int(part['img_size'].iloc[0])}²)")
        ax.set_xlabel("γ (bypass share)")
        ax.set_xticks(list(GAMMAS))
    axes_list = list(getattr(axes, "flat", [axes]))
    axes_list[0].set_ylabel("Δ vs untransformed base (%)")
    axes_list[-1].legend(fontsize=7)
    fig.suptitle("CSP transform: cost of γ × fusion (FlopCounterMode, 1000 classes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".3f")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m csp_ablate.transform_fidelity [--out DIR]``: argparse front of :func:`write_transform_fidelity`."""
    parser = argparse.ArgumentParser(prog="python -m csp_ablate.transform_fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output directory (default {OUT_DIR})")
    args = parser.parse_args(argv)
    write_transform_fidelity(args.out)


def write_transform_fidelity(out: Path = OUT_DIR) -> pd.DataFrame:
    """Write ``darknet53.csv|md`` and ``deltas.csv|md|png`` into ``out``; return the delta table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dark = darknet_fidelity()
    dark.to_csv(out / "darknet53.csv", index=False)
    cols = ["variant", "params_m", "bflops", "params_m_vs_timm_pct", "bflops_vs_timm_pct", "params_m_vs_readme_pct",
            "bflops_vs_readme_pct", "within_3pct", "difference_left"]
    stage_cols = ["variant"] + [c for c in dark.columns if c.startswith("stage")]
    (out / "darknet53.md").write_text(
        "# darknet53 -> CSP (γ=0.5, fusion=csp) vs CSPDarkNet-53, 256×256\n\n"
        f"README CSPDarkNet-53: {README_CSPDARKNET53['params_m']}M / {README_CSPDARKNET53['bflops']} BFLOPs; "
        f"tolerance {TOLERANCE_PCT} %.\n\n" + _markdown(dark[cols]) + "\n\n## Per stage\n\n"
        + _markdown(dark[stage_cols]) + "\n")
    deltas = delta_table()
    deltas.to_csv(out / "deltas.csv", index=False)
    (out / "deltas.md").write_text("# CSP transform: params / BFLOPs of γ × fusion per base\n\n"
                                        "Deltas in % against the untransformed base (fusion none).\n\n"
                                        + _markdown(deltas) + "\n")
    plot_deltas(deltas, out / "deltas.png")
    print(_markdown(dark[cols]))
    print(f"wrote {out}/darknet53.csv|md, deltas.csv|md|png ({len(deltas)} rows)")
    return deltas


if __name__ == "__main__":
    main()
