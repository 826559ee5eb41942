"""The report spec of a named sweep: the ``report:`` block of ``sweeps/<name>.yaml``.

The sweep file is the one place that says which rows a paper artefact has, in which order,
against which baseline, and which claims to judge; the report reads it by the records' ``sweep``
name. Read with PyYAML (Hydra's dependency), never through Hydra: no composition, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass
class Row:
    id: str
    label: str
    axes: dict[str, Any]  # record column -> value (None = not applicable)
    paper: dict[str, Any]  # reference.csv lookup keys (axes, with the row's `paper:` overrides)


@dataclass
class Claim:
    id: str
    text: str
    row: str
    vs: str
    metric: str  # "top1" (points) | "bflops" (relative %)
    paper: float | None = None  # a claimed effect size; None for a direction-only claim
    direction: str | None = None  # "increase" | "decrease" for a direction-only claim
    min_effect: float = 0.0  # direction claims on compute: smallest |effect| in % that counts
    source: str = ""


@dataclass
class ReportSpec:
    name: str
    title: str
    table: str
    reference: str | None
    baseline: str
    reference_baseline: str | None
    match: list[str]
    rows: list[Row]
    figure: dict[str, Any] | None = None
    claims: list[Claim] = field(default_factory=list)

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
    claims = []
    for item in block.get("claims") or []:
        if (item.get("paper") is None) == (item.get("direction") is None):
            raise ValueError(f"claim {item.get('id')}: give exactly one of `paper` or `direction`")
        if item.get("direction") not in (None, "increase", "decrease"):
            raise ValueError(f"claim {item.get('id')}: direction must be increase or decrease")
        if item.get("metric") not in ("top1", "bflops"):
            raise ValueError(f"claim {item.get('id')}: metric must be top1 or bflops")
        claims.append(Claim(
            id=str(item["id"]), text=str(item.get("text", "")), row=str(item["row"]), vs=str(item["vs"]),
            metric=str(item["metric"]), paper=None if item.get("paper") is None else float(item["paper"]),
            direction=item.get("direction"), min_effect=float(item.get("min_effect", 0.0)),
            source=str(item.get("source", "")),
        ))
    spec = ReportSpec(
        name=name, title=str(block.get("title", name)), table=str(block.get("table", name)),
        reference=block.get("reference"), baseline=str(block["baseline"]),
        reference_baseline=block.get("reference_baseline"), match=match, rows=rows,
        figure=block.get("figure"), claims=claims,
    )
    ids = [r.id for r in rows]
    for ref in [spec.baseline, *(c.row for c in claims), *(c.vs for c in claims), *((spec.figure or {}).get("rows") or [])]:
        if ref not in ids:
            raise ValueError(f"report spec '{name}' refers to unknown row '{ref}' (rows: {', '.join(ids)})")
    return spec
