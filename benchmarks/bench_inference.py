"""Does less compute mean less time? CSPPeleeNet inference throughput relative to PeleeNet.

At the paper's input (224x224, 1000 classes), batch 1 and 32, every γ ∈ {0.25, 0.5, 0.75} x
fusion ∈ {csp, first, last}, next to the BFLOPs ratio. Writes inference.csv, inference.png and
a summary line; the README discusses the result. The paper gives no such figure for the
classifier. Models are timed interleaved (round-robin over repeats) so drift on a shared
machine spreads evenly over all of them.
"""

from __future__ import annotations

import statistics

from benchmarks.common import OUT_DIR, QUICK, write_result

VARIANTS = [("peleenet", None, None)] + [
    ("csppeleenet", g, f) for f in ("csp", "first", "last") for g in (0.25, 0.5, 0.75)
]


def main() -> None:
    import pandas as pd
    import torch

    from csp_ablate.models import create_backbone
    from csp_ablate.profile import count_bflops, measure_throughput

    batches = (1, 8) if QUICK else (1, 32)
    rounds = 1 if QUICK else 5
    img = 112 if QUICK else 224
    variants = VARIANTS if not QUICK else VARIANTS[:4]
    models = {}
    for name, g, f in variants:
        kw = {} if g is None else {"gamma": g, "fusion": f}
        m = create_backbone(name, activation="leaky", num_classes=1000, **kw).eval()
        models[(name, g, f)] = (m, count_bflops(m, img, 3))
    fps: dict[tuple, list[float]] = {(k, b): [] for k in models for b in batches}
    with torch.inference_mode():
        keys = list(models)
        for r in range(rounds):  # every round measures every model, the order rotated each round
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                model = models[key][0]
                for b in batches:
                    fps[(key, b)].append(measure_throughput(model, img, 3, batch=b, warmup=2, repeats=3)["fps"])
    rows = []
    for (key, b), vals in fps.items():
        name, g, f = key
        rows.append({"model": name, "gamma": g, "fusion": f, "batch": b, "img_size": img,
                     "bflops": round(models[key][1], 4), "fps": round(statistics.median(vals), 2),
                     "fps_min": round(min(vals), 2), "fps_max": round(max(vals), 2), "rounds": len(vals)})
    df = pd.DataFrame(rows)
    base = df[df.model == "peleenet"].set_index("batch")
    df["bflops_ratio"] = (df.bflops / df.batch.map(base.bflops)).round(3)
    df["fps_speedup"] = (df.fps / df.batch.map(base.fps)).round(3)
    df["time_ratio"] = (1 / df.fps_speedup).round(3)
    plot(df, OUT_DIR / "inference.png")
    csp = df[(df.model == "csppeleenet")]
    gaps = csp.assign(gap=csp.time_ratio - csp.bflops_ratio).groupby("batch").gap.median()
    summary = "; ".join(
        f"batch {b}: median time ratio − BFLOPs ratio = {gaps[b]:+.2f} "
        f"(γ=0.5 csp: {csp[(csp.batch == b) & (csp.gamma == 0.5) & (csp.fusion == 'csp')].time_ratio.iloc[0]:.2f}x time "
        f"for {csp[(csp.batch == b) & (csp.gamma == 0.5) & (csp.fusion == 'csp')].bflops_ratio.iloc[0]:.2f}x BFLOPs)"
        for b in batches if not csp[(csp.batch == b) & (csp.gamma == 0.5) & (csp.fusion == "csp")].empty
    ) or "quick mode"
    summary += f" (fps: median of {rounds} interleaved round(s), min-max in the CSV)"
    write_result("inference", df.to_dict("records"), summary)


def plot(df, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, df.batch.nunique(), figsize=(11, 4.5), sharey=True)
    for ax, (b, sub) in zip(list(axes), df.groupby("batch")):
        for fusion, marker in (("csp", "o"), ("first", "s"), ("last", "^")):
            s = sub[sub.fusion == fusion]
            ax.scatter(s.bflops_ratio, s.time_ratio, marker=marker, label=f"CSPPeleeNet fusion={fusion}")
            for _, r in s.iterrows():
                ax.annotate(f"γ={r.gamma}", (r.bflops_ratio, r.time_ratio), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.plot([0.5, 1.1], [0.5, 1.1], "k--", lw=0.8, label="time ∝ BFLOPs")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(f"batch {b}, {sub.img_size.iloc[0]}x{sub.img_size.iloc[0]}, CPU")
        ax.set_xlabel("BFLOPs relative to PeleeNet")
    axes[0].set_ylabel("inference time per image relative to PeleeNet")
    axes[0].legend(fontsize=7)
    fig.suptitle("Does less compute mean less time? (median of interleaved repeats)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
