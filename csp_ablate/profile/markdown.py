"""The fidelity table on disk and as text: ``fidelity.csv`` / ``fidelity.md`` (main table, CIO,
computational bottleneck and throughput sections) and the CLI's key/value view of one model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from csp_ablate.atomic import write_text_atomic
from csp_ablate.profile.fidelity import (
    DELTA_TOLERANCE_PT,
    PAPER_CIO_M,
    ModelSpec,
    _join,
    evaluate,
    na_to_none,
    pd_isna,
)

FIDELITY_COLUMNS = [
    "table", "model", "gamma", "fusion", "activation", "input", "num_classes",
    "params_m", "paper_params_m", "params_diff_pct",
    "bflops", "paper_bflops", "bflops_diff_pct",
    "delta_vs", "bflops_delta_pct", "paper_bflops_delta_pct", "delta_residual_pt",
    "status", "checks", "note",
    "macs_g", "cio_m", "bflops_flopcounter", "counter_diff_pct", "bottleneck_layer", "bottleneck_bflops",
    "train_input", "bflops_train", "cio_m_train",
    "fps_b1", "fps_b32", "fps_device", "fps_threads", "fps_channels_last", "fps_loadavg", "paper_source",
]
KEY = ["model", "gamma", "fusion", "activation", "input", "num_classes"]
MEASURED = [c for c in FIDELITY_COLUMNS if c not in (
    "paper_params_m", "params_diff_pct", "paper_bflops", "bflops_diff_pct", "paper_bflops_delta_pct",
    "delta_residual_pt", "status", "checks", "note", "paper_source")]


def _columns(table) -> list[str]:
    fps = sorted((c for c in table.columns if c.startswith("fps_b")), key=lambda c: int(c[5:]))
    cols = [c for c in FIDELITY_COLUMNS if c in table.columns and not c.startswith("fps_b")]
    at = cols.index("fps_device") if "fps_device" in cols else len(cols)
    return cols[:at] + fps + cols[at:]


def upsert(existing, new):
    """Rows of ``new`` replace rows of ``existing`` with the same key; other rows are kept."""
    import pandas as pd

    if existing is None or existing.empty:
        return new.reset_index(drop=True)

    def keys(df) -> list[tuple]:
        return [tuple(None if pd_isna(v) else (float(v) if k in ("gamma",) else v) for k, v in zip(KEY, row))
                for row in na_to_none(df)[KEY].itertuples(index=False)]

    new_keys = set(keys(new))
    keep = existing[[k not in new_keys for k in keys(existing)]]
    return pd.concat([keep, new], ignore_index=True)


def write_fidelity(measured, out_dir: Path, merge: bool = True, command: str = ""):
    """Evaluate ``measured`` rows (merged into ``out_dir/fidelity.csv`` if ``merge``) and write
    ``fidelity.csv`` and ``fidelity.md``. Returns the evaluated table."""
    import pandas as pd

    out_dir = Path(out_dir)
    csv = out_dir / "fidelity.csv"
    if merge and csv.exists():
        old = pd.read_csv(csv)
        old = old[old["params_m"].notna()]  # measured rows only: reference-only rows are re-derived
        old = old[[c for c in old.columns if c in MEASURED or c.startswith("fps_b")]]
        measured = upsert(old, measured)
    table = evaluate(na_to_none(measured.reset_index(drop=True)))
    table = table[_columns(table)]
    write_text_atomic(csv, table.to_csv(index=False))
    write_text_atomic(out_dir / "fidelity.md", fidelity_markdown(table, out_dir, command))
    return table


def _fmt(v: Any, nd: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"
    return str(v)


def fidelity_markdown(table, out_dir: Path | None = None, command: str = "") -> str:
    """The fidelity table as the markdown researchers read (main table, CIO, bottleneck, fps)."""
    lines = [
        "# Paper fidelity: cost of every Table 1 / Table 3 model",
        "",
        "The full table: `python -m csp_ablate.profile fidelity=true`; one model's row: "
        "`python -m csp_ablate.profile save=true model=...` or a `-m` sweep (see `docs/fidelity.md` for the "
        "conventions and the investigation of every residual). BFLOPs = 2 x MACs / 1e9 per image "
        "(darknet's count); Table 1 at 224x224, Table 3 at 256x256, 1000 classes. Our hook counter is "
        "cross-checked against `torch.utils.flop_counter` (column `counter Δ`). Targets: PeleeNet ±2 %, "
        "CSPPeleeNet γ=0.5 CSP ±3 %, SPeleeNet ±5 %, Table 3 CSP/DarkNet models ±2 %; compute deltas "
        f"vs PeleeNet: the claims' rule (csp_ablate/report/verdicts.py `judge_compute`): same sign and "
        f"within ±{DELTA_TOLERANCE_PT:g} points.",
        "",
        *([f"Last written by: `{command}`", ""] if command else []),
        "| table | model | γ | fusion | act | input | params M (paper, Δ%) | BFLOPs (paper, Δ%) "
        "| Δ vs base % (paper) | CIO M | counter Δ % | status | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        params = f"{_fmt(r.get('params_m'))} ({_fmt(r.get('paper_params_m'), 2)}, {_fmt(r.get('params_diff_pct'), 1, True)})"
        bfl = f"{_fmt(r.get('bflops'))} ({_fmt(r.get('paper_bflops'))}, {_fmt(r.get('bflops_diff_pct'), 1, True)})"
        delta = f"{_fmt(r.get('bflops_delta_pct'), 1, True)} ({_fmt(r.get('paper_bflops_delta_pct'), 0, True)})"
        status = {"MISS": "**MISS**"}.get(r["status"], r["status"])
        notes = _join(str(r.get("checks") or ""), str(r.get("note") or "")).strip("; ")
        lines.append(
            f"| {r['table']} | {r['model']} | {_fmt(r.get('gamma'), 2)} | {_fmt(r.get('fusion'))} | {r['activation']} "
            f"| {int(r['input'])} | {params} | {bfl} | {delta} | {_fmt(r.get('cio_m'), 2)} "
            f"| {_fmt(r.get('counter_diff_pct'), 3, True)} | {status} | {notes} |"
        )
    n = table["status"].value_counts()
    lines += ["", f"Summary: {n.get('pass', 0)} pass, {n.get('MISS', 0)} MISS, {n.get('report', 0)} report only, "
              f"{n.get('not built', 0)} not built.", "",
              "Reading the table: every PeleeNet variant is built with one rule set (`csp_ablate.models.peleenet`); "
              "residuals are results, not tuned away. `report` rows have no published cost, or (timm's "
              "resnet50 / resnext50_32x4d, torchvision designs) a published cost for a different (darknet) "
              "model; their Table 3 deltas are shown, not judged. The paper's '−21 %' fusion-last claim does not "
              "state γ: it is attached to the grid γ nearest to it, with every candidate listed in the row's note. "
              "Why each residual is what it is: `docs/fidelity.md`.", ""]
    lines += _cio_section(table)
    if out_dir is not None and (Path(out_dir) / "bottleneck.csv").exists():
        lines += _bottleneck_section(Path(out_dir))
    lines += _fps_section(table)
    return "\n".join(lines) + "\n"


def _pick(table, model: str, input_: int, gamma=None, fusion=None, activation: str = "leaky"):
    sel = table[(table["model"] == model) & (table["input"] == input_) & (table["activation"] == activation)
                & table["params_m"].notna()]
    if gamma is not None:
        sel = sel[(sel["gamma"] == gamma) & (sel["fusion"] == fusion)]
    return None if sel.empty else sel.iloc[0]


def cio_pairs(table) -> list[dict[str, Any]]:
    """CIO of each CSP model beside its baseline (ours), with the paper's where published."""
    pairs = [("cspresnext50", "resnext50_32x4d", 256, None, None), ("cspresnet50", "resnet50", 256, None, None),
             ("cspdarknet53", "darknet53", 256, None, None), ("csppeleenet", "peleenet", 224, 0.5, "csp")]
    out = []
    for csp, base, size, gamma, fusion in pairs:
        a, b = _pick(table, csp, size, gamma, fusion), _pick(table, base, size)
        if a is None or b is None or pd_isna(a.get("cio_m")) or pd_isna(b.get("cio_m")):
            continue
        paper_a, paper_b = PAPER_CIO_M.get(csp), PAPER_CIO_M.get(base)
        out.append({
            "model": csp, "baseline": base, "input": size,
            "cio_m": float(a["cio_m"]), "baseline_cio_m": float(b["cio_m"]), "ratio": float(a["cio_m"] / b["cio_m"]),
            "paper_cio_m": paper_a, "paper_baseline_cio_m": paper_b,
            "paper_ratio": paper_a / paper_b if paper_a and paper_b else None,
        })
    return out


def _cio_section(table) -> list[str]:
    pairs = cio_pairs(table)
    if not pairs:
        return []
    lines = ["## CIO (memory traffic)", "",
             "Sum over conv layers of input + output activation sizes (c·h·w), per image, millions (FACTS.md).",
             "", "| model | baseline | input | CIO M | baseline CIO M | ratio | paper CIO M | paper baseline | paper ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(
            f"| {p['model']} | {p['baseline']} | {p['input']} | {p['cio_m']:.2f} | {p['baseline_cio_m']:.2f} "
            f"| {p['ratio']:.3f} | {_fmt(p['paper_cio_m'], 1)} | {_fmt(p['paper_baseline_cio_m'], 1)} "
            f"| {_fmt(p['paper_ratio'], 3)} |"
        )
    lower = [p["model"] for p in pairs if p["ratio"] < 1]
    higher = [p["model"] for p in pairs if p["ratio"] >= 1]
    lines += ["", f"CSP lowers CIO for {', '.join(lower) or 'none'}"
              + (f"; it raises it for {', '.join(higher)}" if higher else "") + ". "
              "The paper's pair (CSPResNeXt-50 vs ResNeXt-50) are darknet models: timm's CSPResNeXt-50 is a port of "
              "the authors' model (params within 0.3 %) and lands within 5 % of the published CIO, while timm's "
              "ResNeXt-50 is torchvision's (25.0M params vs darknet's 22.19M, +9 % BFLOPs), which moves more "
              "activations: hence the larger gap of the ratio. The paper states no CIO for DarkNet-53: timm's "
              "CSPDarkNet-53 adds three full-resolution 1x1 convs per stage (expand, two transitions) to a stage of "
              "only 1-8 residual blocks, so its CIO rises although its BFLOPs fall. "
              "Details in `docs/fidelity.md`.", ""]
    return lines


def _bottleneck_section(out_dir: Path) -> list[str]:
    import pandas as pd

    bn = pd.read_csv(out_dir / "bottleneck.csv")
    lines = ["## Computational bottleneck (paper Figure 7)", "",
             "Per-layer BFLOPs at 224x224: `per_layer_peleenet-leaky.csv`, `per_layer_csppeleenet-g0.5-csp-leaky.csv`, "
             "plot `figure7_per_layer.png`. The bottleneck is the largest single layer.", "",
             "| scope | PeleeNet layer | BFLOPs | CSPPeleeNet (γ=0.5, CSP) layer | BFLOPs | cut % | paper % |",
             "|---|---|---|---|---|---|---|"]
    for _, r in bn.iterrows():
        lines.append(f"| {r['scope']} | {r['base_layer']} | {r['base_bflops']:.4f} | {r['csp_layer']} "
                     f"| {r['csp_bflops']:.4f} | {r['cut_pct']:+.1f} | {_fmt(r['paper_cut_pct'], 0, True)} |")
    lines += ["", "The paper's −44 % matches the cut of the dominant transition layers of stages 2-3: (c_d + m·k)² / "
              "(c + m·k)² = (192/256)² = 0.5625. The largest layer overall (stage 1's transition) is cut less, "
              "−23.4 % = 1 − (112/128)², because the stem's 32 channels are small next to stage 1's 96 dense "
              "channels.", ""]
    return lines


def _fps_section(table) -> list[str]:
    cols = [c for c in table.columns if c.startswith("fps_b")]
    if not cols or table[cols].isna().all().all():
        return []
    sel = table[table[cols].notna().any(axis=1)]
    env = sel[["fps_device", "fps_threads", "fps_channels_last"]].drop_duplicates()
    env_txt = ", ".join(f"{r.fps_device}, {int(r.fps_threads)} thread(s), channels_last={bool(r.fps_channels_last)}"
                        for r in env.itertuples())
    lines = ["## Throughput (images/s, inference)", "",
             f"Measured at the row's input: {env_txt}; torch {torch.__version__}; warm-up, then the median of the timed "
             "passes, `torch.inference_mode`. A shared CPU: compare rows of one run, not across machines. "
             "`load` = 1-minute load average during the measurement.", "",
             "| model | γ | fusion | act | input | " + " | ".join(c.replace("fps_b", "batch ") for c in cols) + " | load |",
             "|---|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for _, r in sel.iterrows():
        vals = " | ".join(_fmt(r.get(c), 1) for c in cols)
        lines.append(f"| {r['model']} | {_fmt(r.get('gamma'), 2)} | {_fmt(r.get('fusion'))} | {r['activation']} "
                     f"| {int(r['input'])} | {vals} | {_fmt(r.get('fps_loadavg'), 2)} |")
    return lines + [""]


def format_row(row: dict[str, Any], evaluated: dict[str, Any] | None = None, top_layers=None) -> str:
    """A readable key/value table of one profiled model."""
    lines = [f"csp_ablate.profile: {ModelSpec(row['model'], row['gamma'], row['fusion'], row['activation']).label}"]

    def add(key: str, value: str) -> None:
        lines.append(f"  {key:<34} {value}")

    add("input", f"3x{row['input']}x{row['input']}, {row['num_classes']} classes (paper input)")
    add("params (M)", f"{row['params_m']:.4f}")
    add("MACs (G)", f"{row['macs_g']:.4f}")
    add("BFLOPs (2 x MACs / 1e9)", f"{row['bflops']:.4f}")
    add("  cross-check: FlopCounterMode", f"{row['bflops_flopcounter']:.4f} (diff {row['counter_diff_pct']:+.3f} %)")
    add("CIO (M activations, conv in+out)", f"{row['cio_m']:.3f}")
    if row.get("delta_vs"):
        add(f"BFLOPs vs {row['delta_vs']}", f"{row['bflops_delta_pct']:+.1f} %")
    if "train_input" in row:
        add(f"at the trained input ({row['train_input']}x{row['train_input']})",
            f"{row['bflops_train']:.5f} BFLOPs, CIO {row['cio_m_train']:.4f} M")
    add("bottleneck (largest layer)", f"{row['bottleneck_layer']} = {row['bottleneck_bflops']:.4f} BFLOPs")
    fps = {k: v for k, v in row.items() if k.startswith("fps_b")}
    if fps:
        add(f"fps ({row['fps_device']}, {row['fps_threads']} thread{'s' if row['fps_threads'] != 1 else ''})",
            ", ".join(f"batch {k[5:]}: {v:.1f} img/s" for k, v in fps.items())
            + (" [channels_last]" if row.get("fps_channels_last") else ""))
    if evaluated is not None and evaluated.get("paper_source"):
        paper = []
        if not pd_isna(evaluated.get("paper_params_m")):
            paper.append(f"{evaluated['paper_params_m']:.2f}M ({evaluated['params_diff_pct']:+.1f} %)")
        if not pd_isna(evaluated.get("paper_bflops")):
            paper.append(f"{evaluated['paper_bflops']:.3f} BFLOPs ({evaluated['bflops_diff_pct']:+.1f} %)")
        if not pd_isna(evaluated.get("paper_bflops_delta_pct")):
            paper.append(f"delta {evaluated['paper_bflops_delta_pct']:+.0f} %")
        add("paper", ", ".join(paper) + f"  [{evaluated['paper_source']}]")
        add("fidelity", f"{evaluated['status']}: {evaluated['checks'] or evaluated['note']}")
    if top_layers is not None:
        lines.append("  largest layers:")
        for _, r in top_layers.iterrows():
            lines.append(f"    {r['name']:<40} {r['type']:<10} {r['in_shape']:>12} -> {r['out_shape']:<12} "
                         f"{r['bflops']:.4f} BFLOPs ({r['share_pct']:.1f} %)")
    return "\n".join(lines)
