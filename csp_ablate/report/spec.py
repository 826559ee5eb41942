"""The report spec of a named sweep: the ``report:`` block of ``sweeps/<name>.yaml``.

The sweep file is the one place that says which rows a paper artefact has, in which order,
against which baseline, and which claims to judge; the report reads it by the records' ``sweep``
name. Read with PyYAML (Hydra's dependency), never through Hydra: no composition, no torch.

Keys of a ``report:`` block (sweeps/table1.yaml, figure4.yaml and table2.yaml are the examples)
    title, table          heading; ``<table>.csv|md`` file stem
    reference             reference.csv ``table`` whose rows become the ``paper_*`` columns
    match                 record columns that identify a row (also the reference lookup keys)
    rows                  the paper's order: ``{id, label, <match keys>, paper: {overrides}}``
    metrics               per-seed metrics with mean, CI and deltas (default ``[top1]``; Table 2:
                          ``[ap, ap50, fps]``); the first one is the figure's y axis
    extra_metrics         mean and CI only (default ``[val_top1]`` when ``top1`` is a metric)
    baseline | baselines  the row(s) every delta is computed against. One baseline names the
                          delta columns ``<m>_delta``; several name them ``<m>_delta_vs_<row>``
    reference_baseline    the ``delta_vs`` name reference.csv uses for the (single) baseline
    reference_names       ``{row id: delta_vs name}`` for several baselines and for any other row
                          a published delta is stated against (Table 2: ``efm_sam: efm+sam``)
    cost_basis            what the BFLOPs count (default ``224×224, 1000 classes``)
    figure                ``{name, rows, x: bflops|<metric>, legend}``
    claims                ``{id, row, vs, metric, paper: x | direction: increase|decrease,
                          margin: δ, ...}``; δ defaults by metric (verdicts.DEFAULT_MARGINS)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csp_ablate.report.verdicts import DEFAULT_MARGINS

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass
class Row:
    id: str
    label: str
    axes: dict[str, Any]  # record column -> value (None = not applicable)
    paper: dict[str, Any]  # reference.csv lookup keys (axes, with the row's `paper:` overrides)


# Per-seed metrics a spec may declare: column label, unit of a delta, digits in markdown, axis label.
METRIC_INFO: dict[str, dict[str, Any]] = {
    "top1": {"label": "top-1", "unit": "points", "digits": 2, "axis": "top-1 accuracy on the test set (%)",
             "value": "{:.2f} %"},
    "val_top1": {"label": "val top-1", "unit": "points", "digits": 2, "axis": "top-1 accuracy on the val set (%)",
                 "value": "{:.2f} %"},
    "ap": {"label": "AP", "unit": "points", "digits": 2, "axis": "AP on the val set (%, IoU 0.50:0.95)",
           "value": "AP {:.2f}"},
    "ap50": {"label": "AP50", "unit": "points", "digits": 2, "axis": "AP50 on the val set (%)",
             "value": "AP50 {:.2f}"},
    "fps": {"label": "fps", "unit": "frames/s", "digits": 1, "axis": "frames/s (fps.csv: measured quietly)",
            "value": "{:.1f} fps"},
}
# Metrics whose claims are judged on the sign of the change only: a CPU proxy's fps is not
# comparable with the paper's GPU fps (see the verdict rule in csp_ablate.report).
SIGN_ONLY_METRICS = frozenset({"fps"})
DEFAULT_COST_BASIS = "224×224, 1000 classes"


@dataclass
class Claim:
    id: str
    text: str
    row: str
    vs: str
    metric: str  # "bflops" (relative %) | a spec metric: top1, ap, ap50 (points), fps (sign only)
    paper: float | None = None  # a claimed effect size; None for a direction-only claim
    direction: str | None = None  # "increase" | "decrease" for a direction-only claim
    min_effect: float = 0.0  # direction claims on compute: smallest |effect| in % that counts
    source: str = ""
    # δ of a statistical claim, fixed in the spec before any run (default by metric,
    # csp_ablate.report.verdicts.DEFAULT_MARGINS); None for compute claims (one tolerance for all)
    margin: float | None = None


@dataclass
class ReportSpec:
    name: str
    title: str
    table: str
    reference: str | None
    baseline: str  # the first of ``baselines``: the figure's reference line
    reference_baseline: str | None
    match: list[str]
    rows: list[Row]
    figure: dict[str, Any] | None = None
    claims: list[Claim] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["top1"])
    extra_metrics: list[str] = field(default_factory=lambda: ["val_top1"])
    baselines: list[str] = field(default_factory=list)  # empty: [baseline]
    reference_names: dict[str, str] = field(default_factory=dict)  # row id -> reference.csv delta_vs name
    cost_basis: str = DEFAULT_COST_BASIS

    def __post_init__(self) -> None:
        if not self.baselines:
            self.baselines = [self.baseline]
        if self.reference_baseline is not None and self.baseline not in self.reference_names:
            self.reference_names = {self.baseline: str(self.reference_baseline), **self.reference_names}

    def suffix(self, baseline: str) -> str:
        """Delta column suffix: none for a single baseline (``top1_delta``), else ``_vs_<row>``."""
        return "" if len(self.baselines) == 1 else f"_vs_{baseline}"

    def reference_name(self, row_id: str) -> str | None:
        """How reference.csv's ``delta_vs`` names row ``row_id`` (None when it never does)."""
        return self.reference_names.get(row_id)

    def row_for_reference_name(self, name: Any) -> str | None:
        """Our row id for a reference.csv ``delta_vs`` name (None when no row is mapped to it)."""
        for row_id, ref_name in self.reference_names.items():
            if str(ref_name) == str(name):
                return row_id
        return None

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise KeyError(f"report spec '{self.name}' has no row '{row_id}'")


def spec_path(name: str, sweeps_dir: Path | None = None) -> Path:
    return Path(sweeps_dir or SWEEPS_DIR) / f"{name}.yaml"


def load_spec(name: str | None, sweeps_dir: Path | None = None, path: Path | None = None) -> ReportSpec | None:
    """The spec of sweep ``name`` (or of the file ``path``); None when it has no ``report:``."""
    if path is None:
        if not name:
            return None
        path = spec_path(name, sweeps_dir)
        if not path.exists():
            return None
    raw = yaml.safe_load(Path(path).read_text()) or {}
    block = raw.get("report")
    if not block:
        return None
    return parse_spec(name or Path(path).stem, block)


def parse_spec(name: str, block: dict[str, Any]) -> ReportSpec:
    match = list(block.get("match") or ["model", "gamma", "fusion", "activation"])
    rows = []
    for item in block["rows"]:
        axes = {key: item.get(key) for key in match}
        rows.append(Row(id=str(item["id"]), label=str(item.get("label", item["id"])), axes=axes,
                        paper={**axes, **(item.get("paper") or {})}))
    metrics = [str(m) for m in (block.get("metrics") or ["top1"])]
    default_extra = ["val_top1"] if "top1" in metrics else []
    extra = [str(m) for m in (block["extra_metrics"] if "extra_metrics" in block else default_extra) or []]
    for metric in [*metrics, *extra]:
        if metric not in METRIC_INFO:
            raise ValueError(f"report spec '{name}': unknown metric '{metric}' (known: {', '.join(METRIC_INFO)})")
    if "baselines" in block and "baseline" in block:
        raise ValueError(f"report spec '{name}': give `baseline` or `baselines`, not both")
    baselines = [str(b) for b in (block["baselines"] if "baselines" in block else [block["baseline"]])]
    if not baselines or len(set(baselines)) != len(baselines):
        raise ValueError(f"report spec '{name}': baselines must be distinct row ids, got {baselines}")
    claims = []
    for item in block.get("claims") or []:
        if (item.get("paper") is None) == (item.get("direction") is None):
            raise ValueError(f"claim {item.get('id')}: give exactly one of `paper` or `direction`")
        if item.get("direction") not in (None, "increase", "decrease"):
            raise ValueError(f"claim {item.get('id')}: direction must be increase or decrease")
        if item.get("metric") not in ("bflops", *metrics):
            raise ValueError(f"claim {item.get('id')}: metric must be bflops or one of the spec's metrics "
                             f"({', '.join(metrics)})")
        if item.get("metric") in SIGN_ONLY_METRICS and item.get("paper") is not None and float(item["paper"]) == 0:
            raise ValueError(f"claim {item.get('id')}: a {item['metric']} claim is judged on its sign; paper must not be 0")
        margin = item.get("margin")
        if item.get("metric") == "bflops":
            if margin is not None:
                raise ValueError(f"claim {item.get('id')}: compute claims share one tolerance "
                                 "(csp_ablate.report.verdicts.COMPUTE_TOL_PT); no per-claim margin")
        else:
            margin = float(DEFAULT_MARGINS[item["metric"]] if margin is None else margin)
            if not margin > 0:
                raise ValueError(f"claim {item.get('id')}: margin must be > 0, got {margin}")
        claims.append(Claim(
            id=str(item["id"]), text=str(item.get("text", "")), row=str(item["row"]), vs=str(item["vs"]),
            metric=str(item["metric"]), paper=None if item.get("paper") is None else float(item["paper"]),
            direction=item.get("direction"), min_effect=float(item.get("min_effect", 0.0)),
            source=str(item.get("source", "")), margin=margin,
        ))
    spec = ReportSpec(
        name=name, title=str(block.get("title", name)), table=str(block.get("table", name)),
        reference=block.get("reference"), baseline=baselines[0],
        reference_baseline=block.get("reference_baseline"), match=match, rows=rows,
        figure=block.get("figure"), claims=claims, metrics=metrics, extra_metrics=extra, baselines=baselines,
        reference_names={str(k): str(v) for k, v in (block.get("reference_names") or {}).items()},
        cost_basis=str(block.get("cost_basis", DEFAULT_COST_BASIS)),
    )
    x = (spec.figure or {}).get("x", "bflops")
    if x != "bflops" and x not in spec.metrics:
        raise ValueError(f"report spec '{name}': figure x must be bflops or one of the metrics, got '{x}'")
    ids = [r.id for r in rows]
    for ref in [*spec.baselines, *spec.reference_names, *(c.row for c in claims), *(c.vs for c in claims),
                *((spec.figure or {}).get("rows") or [])]:
        if ref not in ids:
            raise ValueError(f"report spec '{name}' refers to unknown row '{ref}' (rows: {', '.join(ids)})")
    return spec
