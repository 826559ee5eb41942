"""The report from synthetic records (no training, no torch): statistics against hand-computed
numbers, the paper table and claim verdicts, gaps, deduplication, atomic writes, and that the
sweep specs agree with the variant configs, the Hydra grid and reference.csv."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CONF_DIR, REPO
from csp_ablate.atomic import write_csv_atomic, write_text_atomic
from csp_ablate.record import RECORD_KEYS
from csp_ablate.report import build_report, load_spec
from csp_ablate.report.stats import mean_ci, t_ppf, welch_delta_ci

# t quantiles from printed tables (e.g. NIST/SEMATECH e-Handbook, Table of t-distribution)
T975 = {1: 12.706204736174707, 2: 4.302652729911275, 4: 2.7764451051977987, 30: 2.0422724563012373}


# ---- statistics -------------------------------------------------------------------------
@pytest.mark.parametrize("df, expected", sorted(T975.items()))
def test_t_quantile_matches_tables(df, expected):
    assert t_ppf(0.975, df) == pytest.approx(expected, abs=1e-9)
    assert t_ppf(0.025, df) == pytest.approx(-expected, abs=1e-9)


def test_mean_ci_hand_computed():
    # mean 91, s = 1, n = 3: half-width = t(0.975, 2) * 1 / sqrt(3) = 4.30265 / 1.73205 = 2.48414
    mean, ci, n = mean_ci([90.0, 91.0, 92.0])
    assert (mean, n) == (91.0, 3)
    assert ci == pytest.approx(2.484137711750, abs=1e-9)
    one = mean_ci([90.0])
    assert one[0] == 90.0 and math.isnan(one[1]) and one[2] == 1
    assert math.isnan(mean_ci([])[0])


def test_welch_delta_ci_hand_computed():
    # d = 1; se^2 = 1/3 + 1/3; Welch df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4;
    # half-width = t(0.975, 4) * sqrt(2/3) = 2.77645 * 0.81650 = 2.26696
    delta, ci = welch_delta_ci([91.0, 92.0, 93.0], [90.0, 91.0, 92.0])
    assert delta == pytest.approx(1.0)
    assert ci == pytest.approx(2.266957935528, abs=1e-9)
    assert welch_delta_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 0.0)
    assert math.isnan(welch_delta_ci([1.0], [0.0, 1.0])[1])


# ---- verdict rule: tests/test_verdicts.py (hand-worked cases), tests/test_calibration.py --------
# ---- synthetic sweep dirs ---------------------------------------------------------------
COST = {
    ("peleenet", None, None): (2.8022, 1.0155),
    ("csppeleenet", 0.5, "csp"): (2.8565, 0.8923),
    ("csppeleenet", 0.5, "last"): (2.014, 0.7670),
}


def make_record(model="peleenet", gamma=None, fusion=None, seed=0, top1=90.0, status="completed",
                activation="leaky", sweep="table1", chash=None, error=None, finished_at="2026-01-01T00:00:10+00:00"):
    params, bflops = COST[(model, gamma, fusion)]
    rec = dict.fromkeys(RECORD_KEYS)
    rec.update(
        sweep=sweep, config_hash=chash or f"h-{model}-{gamma}-{fusion}-{activation}", seed=seed, status=status,
        run_id=f"{model}-s{seed}", task="classification", dataset="fashionmnist", model=model, gamma=gamma,
        fusion=fusion, activation=activation, tier="smoke", img_size=32, epochs=1,
        # like record.write_failed_record: a failed job's record has identity and axes, no results
        params_m=params if status == "completed" else None, bflops=bflops if status == "completed" else None,
        top1=top1 if status == "completed" else None, val_top1=top1 if status == "completed" else None,
        train_time_s=1.0 if status == "completed" else None, error=error, finished_at=finished_at,
    )
    return rec


def write_sweep(root: Path, records: list[dict], names: list[str] | None = None) -> Path:
    for i, rec in enumerate(records):
        name = names[i] if names else "record.json"
        path = root / str(i) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    return root


@pytest.fixture
def table1_dir(tmp_path):
    records = [make_record(seed=s, top1=t) for s, t in zip((0, 1, 2), (70.0, 71.0, 72.0))]
    records += [make_record("csppeleenet", 0.5, "csp", seed=s, top1=t) for s, t in zip((0, 1, 2), (71.0, 72.0, 73.0))]
    records += [make_record("csppeleenet", 0.5, "last", seed=0, status="failed", error="RuntimeError: nan loss | step 3")]
    return write_sweep(tmp_path / "sweep", records)


def test_table1_report_hand_computed(table1_dir):
    report = build_report(table1_dir)
    table = pd.read_csv(table1_dir / "table1.csv")
    spec = load_spec("table1")
    assert list(table["row"]) == [r.id for r in spec.rows]  # the paper's order, every row
    base = table.set_index("row").loc["peleenet"]
    csp = table.set_index("row").loc["csp_g50_csp"]
    assert (base["n"], csp["n"]) == (3, 3)
    assert base["top1_mean"] == pytest.approx(71.0) and base["top1_ci95"] == pytest.approx(2.48414, abs=1e-4)
    assert csp["top1_delta"] == pytest.approx(1.0) and csp["top1_delta_ci95"] == pytest.approx(2.26696, abs=1e-4)
    assert csp["bflops_delta_pct"] == pytest.approx((0.8923 / 1.0155 - 1) * 100, abs=1e-3)
    # the paper's numbers beside ours (reference.csv): stated delta vs PeleeNet
    assert (csp["paper_params_m"], csp["paper_bflops"], csp["paper_top1"]) == (2.83, 0.888, 70.9)
    assert (csp["paper_bflops_delta_pct"], csp["paper_top1_delta"]) == (-13, 0.2)
    swish = table.set_index("row").loc["csp_g50_csp_swish"]  # published vs its leaky twin: delta recomputed vs PeleeNet
    assert swish["paper_top1_delta"] == pytest.approx(71.7 - 70.7)
    assert report.claims is not None and set(report.claims["verdict"]) <= {"reproduced", "contradicted", "inconclusive"}


def test_failed_job_is_a_marked_gap(table1_dir):
    build_report(table1_dir)
    runs = pd.read_csv(table1_dir / "runs.csv")
    assert list(runs.columns) == RECORD_KEYS
    failed = runs[runs["status"] == "failed"]
    assert len(failed) == 1 and "nan loss" in failed["error"].iloc[0]
    row = pd.read_csv(table1_dir / "table1.csv").set_index("row").loc["csp_g50_last"]
    assert row["n"] == 0 and row["n_failed"] == 1 and "nan loss" in row["note"]
    md = (table1_dir / "table1.md").read_text()
    assert "– (failed)" in md and "`csp_g50_last`: no completed run; 1 failed: RuntimeError: nan loss | step 3" in md
    claims = pd.read_csv(table1_dir / "claims.csv").set_index("claim")
    assert claims.loc["last_g50_top1", "verdict"] == "inconclusive"
    assert claims.loc["last_g50_bflops", "verdict"] == "inconclusive"  # no completed run, no cost
    summary = pd.read_csv(table1_dir / "summary.csv")
    assert summary["n"].tolist() == [3, 3, 0] and summary["n_failed"].tolist() == [0, 0, 1]


def test_rerun_and_displaced_records_count_once(tmp_path):
    records = [
        make_record(seed=0, status="failed", error="boom", finished_at="2026-01-01T00:00:01+00:00"),
        make_record(seed=0, top1=80.0, finished_at="2026-01-01T00:00:05+00:00"),  # the rerun that succeeded
        make_record(seed=0, top1=70.0, finished_at="2026-01-01T00:00:03+00:00"),  # an older, displaced copy
        make_record(seed=1, top1=82.0),
    ]
    sweep = write_sweep(tmp_path, records, ["record.json", "record.json", "record.peleenet-s0.json", "record.json"])
    report = build_report(sweep)
    assert len(report.runs) == 2 and set(report.runs["status"]) == {"completed"}
    assert report.summary.loc[0, "top1_mean"] == pytest.approx(81.0)


def test_adhoc_multirun_gets_runs_and_grouped_summary(tmp_path):
    records = [make_record("csppeleenet", 0.5, f, seed=s, top1=80.0 + s, sweep=None)
               for f in ("csp", "last") for s in (0, 1)]
    report = build_report(write_sweep(tmp_path, records))
    assert report.sweep is None and report.spec is None
    assert sorted(p.name for p in report.files) == ["provenance.csv", "runs.csv", "summary.csv", "summary.md"]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary[["fusion", "n", "top1_mean"]].values.tolist() == [["csp", 2, 80.5], ["last", 2, 80.5]]
    md = (tmp_path / "summary.md").read_text()
    assert "| fusion" in md and "model=csppeleenet" in md  # varying axes as columns, the rest in one line


def test_report_cli_imports_no_torch_and_reports_missing_dir(table1_dir, tmp_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['csp_ablate.report', {str(table1_dir)!r}]\n"
        "try:\n    runpy.run_module('csp_ablate.report', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'lightning', 'timm', 'wandb') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY=\n" in proc.stdout and "[csp_ablate.report] table1: 6 completed, 1 failed" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "csp_ablate.report", str(tmp_path / "nope")], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_made_by_command_names_no_absolute_output_dir(tmp_path, monkeypatch):
    from csp_ablate.report.records import sweep_command

    repo = tmp_path / "repo"
    inside = repo / "results" / "t2"
    inside.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the report is rebuilt elsewhere: the line is relative to the launch dir
    multirun = {"hydra": {"runtime": {"cwd": str(repo)}, "overrides": {
        "task": ["sweep=table2", "seed=0,1", "data.root=/usr/share/datasets/fashion-mnist"],
        "hydra": ["hydra.mode=MULTIRUN", "hydra.sweep.dir=/elsewhere/scratch/table2"]}}}

    def command(sweep_dir_override: str) -> str:
        multirun["hydra"]["overrides"]["hydra"][1] = sweep_dir_override
        (inside / "multirun.yaml").write_text(yaml.safe_dump(multirun))
        return sweep_command(inside)

    # a scratch dir outside the launch dir is dropped; a data path is part of the experiment and stays
    assert command("hydra.sweep.dir=/elsewhere/scratch/table2") == (
        "python -m csp_ablate -m sweep=table2 seed=0,1 data.root=/usr/share/datasets/fashion-mnist")
    assert command(f"hydra.sweep.dir={inside}").endswith(" hydra.sweep.dir=results/t2")  # inside: relative
    assert command(f"++hydra.sweep.dir={tmp_path}/x").endswith("fashion-mnist")  # `++key=`: the same key
    assert command("hydra.sweep.dir=multirun/x").endswith(" hydra.sweep.dir=multirun/x")  # relative: as given


def test_made_by_names_the_launch_log_when_the_sweep_dir_has_one(table1_dir):
    """A committed sweep keeps no multirun.yaml but a COMMAND.md of every launch: its tables say so
    (rebuilt there, they once lost their "Made by" line; with only multirun.yaml they named the last
    launch's command as if it had made the whole sweep)."""
    def made_by() -> list[str]:
        build_report(table1_dir)
        return [line for name in ("table1.md", "summary.md")
                for line in (table1_dir / name).read_text().splitlines() if line.startswith("Made by")]

    assert made_by() == []  # neither file: nothing to say
    multirun = {"hydra": {"runtime": {"cwd": str(REPO)}, "overrides": {"task": ["sweep=table1", "seed=0,1"], "hydra": []}}}
    (table1_dir / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    assert made_by() == ["Made by: `python -m csp_ablate -m sweep=table1 seed=0,1` (then `python -m csp_ablate.report "
                         "<sweep dir>` rebuilds it from the records)."] * 2
    (table1_dir / "COMMAND.md").write_text("# How this was made\n")
    both = made_by()
    assert len(both) == 2 and all(line.startswith("Made by: the launches in COMMAND.md") for line in both)
    assert all("the last launch was `python -m csp_ablate -m sweep=table1 seed=0,1`" in line for line in both)
    (table1_dir / "multirun.yaml").unlink()
    assert all("COMMAND.md" in line and "last launch" not in line for line in made_by())


# ---- atomic writes ----------------------------------------------------------------------
def test_atomic_csv_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = write_csv_atomic(tmp_path / "runs.csv", pd.DataFrame({"a": [1, 2]}))
    before = path.read_text()

    def explode(self, target, **kwargs):
        Path(target).write_text("a\n1\n")  # half a file in the temp path ...
        raise OSError("disk full")  # ... then the write dies

    monkeypatch.setattr(pd.DataFrame, "to_csv", explode)
    with pytest.raises(OSError, match="disk full"):
        write_csv_atomic(path, pd.DataFrame({"a": [3]}))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]  # no temp file left behind
    write_text_atomic(tmp_path / "t.md", "x")
    assert (tmp_path / "t.md").read_text() == "x"


def test_report_files_are_replaced_not_appended(table1_dir):
    build_report(table1_dir)
    first = {p.name: p.read_bytes() for p in table1_dir.glob("*.*")}
    build_report(table1_dir)
    assert {p.name: p.read_bytes() for p in table1_dir.glob("*.*")} == first  # same records, same bytes
    assert not list(table1_dir.glob(".*.tmp"))


# ---- the sweep specs against configs, grid and reference --------------------------------
def _variant_axes(name: str) -> dict:
    raw = yaml.safe_load((CONF_DIR / "variant" / f"{name}.yaml").read_text())
    model = next(d["override /model"] for d in raw["defaults"] if "override /model" in d)
    return {"model": model, "gamma": raw["gamma"], "fusion": raw["fusion"], "activation": raw["activation"]}


def _grid(*overrides: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of a sweep config's ``hydra.sweeper.params``."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    return BasicSweeper.split_arguments(parsed, None)[0]


def test_table1_grid_is_every_row_times_three_seeds():
    spec = load_spec("table1")
    jobs = _grid("sweep=table1")
    assert len(jobs) == 13 * 3
    assert jobs[0] == ["seed=0", "variant=peleenet"]  # seeds outermost: every row gets n=1 first
    assert {j[1].split("=")[1] for j in jobs} == {r.id for r in spec.rows}


def test_figure4_grid_is_four_structures_times_three_seeds():
    jobs = _grid("sweep=figure4")
    assert len(jobs) == 4 * 3 and [j[1] for j in jobs[:4]] == [
        "variant=peleenet", "variant=csp_g50_csp", "variant=csp_g50_first", "variant=csp_g50_last"]


@pytest.mark.parametrize("row_id, variant", [("none", "peleenet"), ("csp", "csp_g50_csp"),
                                              ("first", "csp_g50_first"), ("last", "csp_g50_last")])
def test_figure4_rows_are_table1_grid_points(compose, row_id, variant):
    """Each Figure 4 structure has the config hash of its Table 1 row (issue 18: one run, reused)."""
    from csp_ablate.identity import config_hash

    fig = compose("sweep=figure4", f"variant={variant}", "threads=1", "output_dir=/tmp/x")
    assert (fig.model.name, fig.gamma, fig.fusion, fig.activation) == tuple(load_spec("figure4").row(row_id).axes.values())
    assert config_hash(fig) == config_hash(compose("sweep=table1", f"variant={variant}", "threads=1", "output_dir=/tmp/y"))


@pytest.mark.parametrize("row_id", [r.id for r in load_spec("table1").rows])
def test_each_table1_variant_composes_to_its_row(compose, row_id):
    row = load_spec("table1").row(row_id)
    assert _variant_axes(row_id) == row.axes
    cfg = compose("sweep=table1", f"variant={row_id}", "output_dir=/tmp/x")
    assert (cfg.model.name, cfg.gamma, cfg.fusion, cfg.activation) == tuple(row.axes.values())
    assert cfg.sweep == "table1" and cfg.force is False
    if row.axes["gamma"] is not None:
        assert (cfg.model.gamma, cfg.model.fusion) == (row.axes["gamma"], row.axes["fusion"])
    else:
        assert "gamma" not in cfg.model


def test_figure4_and_default_sweep_compose(compose):
    cfg = compose("sweep=figure4", "variant=csp_g50_first", "output_dir=/tmp/x")
    assert (cfg.model.name, cfg.gamma, cfg.fusion, cfg.sweep) == ("csppeleenet", 0.5, "first", "figure4")
    single = compose("sweep=figure4", "variant=peleenet", "output_dir=/tmp/x")
    assert (single.model.name, single.sweep) == ("peleenet", "figure4") and "gamma" not in single.model
    plain = compose("output_dir=/tmp/x")
    assert plain.sweep is None and plain.model.name == "csppeleenet" and "report" not in plain


def test_claims_agree_with_reference_csv():
    from csp_ablate.reference import load_reference

    for name in ("table1", "figure4"):
        spec = load_spec(name)
        ref = load_reference(spec.reference)
        for claim in spec.claims:
            if claim.paper is None or claim.vs != spec.baseline:
                continue
            from csp_ablate.report.tables import reference_row

            row = reference_row(ref, spec.row(claim.row))
            assert row is not None, claim.id
            column = "bflops_delta_pct" if claim.metric == "bflops" else "top1_delta"
            assert row[column] == pytest.approx(claim.paper), claim.id


# ---- resume bookkeeping of the entry point (no Hydra run needed) -------------------------
def test_resume_finds_completed_records_and_never_overwrites_a_foreign_one(tmp_path):
    from csp_ablate.__main__ import displace_foreign_record, find_completed

    done = make_record(seed=0, top1=80.0, chash="aaa")
    write_sweep(tmp_path, [done, make_record(seed=1, status="failed", chash="aaa")])
    assert find_completed(tmp_path, "aaa", 0) == tmp_path / "0" / "record.json"
    assert find_completed(tmp_path, "aaa", 1) is None  # failed: rerun it
    assert find_completed(tmp_path, "bbb", 0) is None
    # a rerun with another grid puts grid point (bbb, 0) into job dir 0: the finished record moves aside
    moved = displace_foreign_record(tmp_path / "0", "bbb", 0)
    assert moved == tmp_path / "0" / "record.peleenet-s0.json" and json.loads(moved.read_text()) == done
    assert not (tmp_path / "0" / "record.json").exists()
    assert find_completed(tmp_path, "aaa", 0) == moved  # still found, still reported
    assert build_report(tmp_path).runs["status"].tolist() == ["completed", "failed"]
    # the same grid point, or a failed record, stays where it is
    assert displace_foreign_record(tmp_path / "1", "bbb", 0) is None


def test_wandb_tables_take_records_whose_launches_differ_in_type():
    """A resumed run's ``launches`` holds ``resumed_from_step`` None then a number; wandb types a
    column from its first row, so the report run of Table 1's rerun failed on it. Nested cells
    go to W&B as JSON text, as in runs.csv."""
    from csp_ablate.report.wandb_report import _table

    first = {"git_sha": "a" * 40, "resumed_from_step": None, "threads": 1}
    runs = pd.DataFrame({"run_id": ["x-s0", "x-s1"], "top1": [89.1, None],
                         "launches": [[first], [first, {**first, "resumed_from_step": 461}]]})
    table = _table(runs)
    assert table.get_column("launches")[1] == json.dumps([first, {**first, "resumed_from_step": 461}])
    assert table.get_column("top1") == [89.1, None] and table.get_column("run_id") == ["x-s0", "x-s1"]
