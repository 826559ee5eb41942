"""Seed planning (csp_ablate.plan) on records in tmp_path: the dry-run plan, the pilot, the budget,
the multirun commands it launches (subprocess mocked: nothing trains), and the CLI spelling
``python -m csp_ablate -m sweep=table1 seeds=auto budget_min=... dry_run=true``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO
from csp_ablate import plan
from csp_ablate.report import load_spec
from csp_ablate.report.records import runs_frame
from csp_ablate.report.tables import claims_table

COMMITTED = REPO / "results" / "proxy" / "table1"


def copy_records(dest, keep=lambda rec: True):
    """The committed Table 1 records (13 rows x 3 seeds), or those ``keep`` selects, into ``dest``."""
    for path in sorted(COMMITTED.glob("*/record.json")):
        rec = json.loads(path.read_text())
        if keep(rec):
            (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / path.parent.name / "record.json")
    return dest


@pytest.fixture
def no_subprocess(monkeypatch):
    calls = []

    def fake_run(cmd, check=False, **kwargs):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(plan.subprocess, "run", fake_run)
    return calls


@pytest.mark.parametrize("name, key, rows", [("table1", "variant", 13), ("figure4", "variant", 4), ("table2", "variant", 8)])
def test_every_grid_value_maps_to_one_row_of_the_spec(name, key, rows):
    grid = plan.sweep_grid(name, [])
    spec = load_spec(name)
    assert grid.row_key == key and sorted(grid.row_values) == sorted(r.id for r in spec.rows) and len(grid.row_values) == rows
    assert grid.parallel == 2 and grid.sweep_dir.as_posix() == f"results/proxy/{name}"  # joblib2
    assert plan.sweep_grid(name, ["hydra/launcher=basic", "tier=smoke"]).parallel == 1
    assert plan.sweep_grid(name, ["tier=smoke"]).sweep_dir.as_posix() == f"results/smoke/{name}"
    if name == "table2":
        assert grid.row_values["efm"] == "t2_efm" and grid.row_values["efm_sam_swish"] == "t2_efm_sam_swish"


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys, no_subprocess):
    sweep = copy_records(tmp_path / "table1")
    rc = plan.main(["-m", "sweep=table1", "seeds=auto", "budget_min=60", "dry_run=true", f"hydra.sweep.dir={sweep}"])
    out = capsys.readouterr().out
    assert rc == 0 and no_subprocess == []
    assert "Pilot (n = 3 per row): complete." in out and "pooled seed variance only (top1 SD 0.395 (df 26))" in out
    p, cmds = plan.build({"sweep": "table1", "budget_min": "60"}, [f"hydra.sweep.dir={sweep}"])
    # planned from the variance: the same seeds_needed as claims.csv, whatever the observed effects
    claims = claims_table(runs_frame(sweep), load_spec("table1")).set_index("claim")
    planned = p.claims.set_index("claim")
    assert (planned["seeds_needed"] == claims.loc[planned.index, "seeds_needed"]).all()
    # within the budget: the three +0.8 claims (5 seeds) fit, the 11-12 seed claims do not all fit
    assert p.pilot_minutes == 0 and 0 < p.minutes <= 60
    assert set(planned.index[planned["status"] == "planned"]) >= {"csp_g25_top1", "swish_peleenet_top1", "swish_csp_top1"}
    assert planned["status"].str.startswith("over budget").any()
    rows = p.rows.set_index("row")
    assert rows.loc["peleenet", "n_planned"] >= 5 and rows.loc["csp_g75_first", "new_runs"] == 0  # no claim needs it
    expected = (rows["new_runs"] * rows["min_per_job"]).sum() / 2
    assert p.minutes == pytest.approx(expected)
    assert f"Expected: {int(rows['new_runs'].sum())} new run(s)" in out and "budget 60" in out
    assert f"seed=0,1,2,3,4 variant=" in out and f"hydra.sweep.dir={sweep}" in out


def test_every_row_a_top1_claim_compares_gets_the_floor(tmp_path):
    """Issue 18: at least min_seeds (5) per row that a top-1 claim compares, even within a
    budget too small for it (the plan says so); a row no claim compares stays at the pilot."""
    sweep = copy_records(tmp_path / "table1")
    p, _ = plan.build({"sweep": "table1", "budget_min": "1"}, [f"hydra.sweep.dir={sweep}"])
    rows = p.rows.set_index("row")
    claim_rows = {r for c in load_spec("table1").claims if c.metric == "top1" for r in (c.row, c.vs)}
    assert len(claim_rows) == 10 and (rows.loc[sorted(claim_rows), "n_planned"] >= 5).all()
    assert (rows.drop(index=sorted(claim_rows))["n_planned"] == 3).all()
    assert any("floor of 5 seeds" in note for note in p.notes)
    p7, _ = plan.build({"sweep": "table1", "budget_min": "1", "min_seeds": "7"}, [f"hydra.sweep.dir={sweep}"])
    assert (p7.rows.set_index("row").loc[sorted(claim_rows), "n_planned"] >= 7).all()


def test_run_launches_the_planned_multiruns(tmp_path, no_subprocess):
    sweep = copy_records(tmp_path / "table1")
    p, cmds = plan.build({"sweep": "table1", "budget_min": "40"}, [f"hydra.sweep.dir={sweep}"])
    assert plan.main(["sweep=table1", "seeds=auto", "budget_min=40", f"hydra.sweep.dir={sweep}"]) == 0
    assert no_subprocess == cmds and cmds  # nothing else ran
    for cmd in cmds:
        assert cmd[:5] == [sys.executable, "-m", "csp_ablate", "-m", "sweep=table1"]
        assert cmd[-1] == f"hydra.sweep.dir={sweep}"
    rows = p.rows[p.rows["new_runs"] > 0]
    launched = {v: c[5] for c in cmds for v in c[6].split("=", 1)[1].split(",")}
    assert set(launched) == set(rows["row"])  # Table 1's rows are variants named like the rows
    for row, n in zip(rows["row"], rows["n_planned"]):
        assert launched[row] == "seed=" + ",".join(map(str, range(n)))


def test_an_incomplete_pilot_runs_first_then_the_plan_is_made_again(tmp_path, no_subprocess, capsys):
    sweep = copy_records(tmp_path / "table1", keep=lambda rec: rec["seed"] in (0, 1) or rec["model"] == "peleenet")
    p, _ = plan.build({"sweep": "table1", "budget_min": "500"}, [f"hydra.sweep.dir={sweep}"])
    assert not p.pilot_done and p.pilot["peleenet"] == 0 and p.pilot["speleenet"] == 1
    assert p.pilot_minutes > 0 and "provisional" in " ".join(p.notes)
    assert plan.main(["sweep=table1", "seeds=auto", "budget_min=500", f"hydra.sweep.dir={sweep}"]) == 0
    first = no_subprocess[0]
    pilot_rows = first[6].split("=", 1)[1].split(",")
    assert first[5] == "seed=0,1,2" and "peleenet" not in pilot_rows and "peleenet_swish" not in pilot_rows
    assert len(pilot_rows) == 11  # every row that has fewer than 3 seeds
    assert "After the pilot:" in capsys.readouterr().out  # planned again (here: the pilot records did not appear)


def test_errors_are_one_line(tmp_path, capsys):
    assert plan.main(["seeds=auto", "budget_min=10"]) == 2
    assert "needs a named sweep" in capsys.readouterr().err
    assert plan.main(["sweep=table1", "seeds=auto"]) == 2
    assert "budget_min" in capsys.readouterr().err
    assert plan.main(["sweep=none", "seeds=auto", "dry_run=true"]) == 2


def test_cli_spelling_goes_through_the_entry_point(tmp_path):
    sweep = copy_records(tmp_path / "table1")
    proc = subprocess.run([sys.executable, "-m", "csp_ablate", "-m", "sweep=table1", "seeds=auto", "budget_min=30",
                           "dry_run=true", f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Seed plan for sweep table1") and "Commands (resumable" in proc.stdout
    assert not any(p.name != "record.json" for p in sweep.rglob("*") if p.is_file())  # nothing ran, nothing written


def test_minutes_per_job_are_the_records_wall_time():
    runs = pd.DataFrame({"started_at": ["2026-11-24T08:49:31+00:00", None],
                         "finished_at": ["2026-11-24T08:53:49+00:00", None], "train_time_s": [251.0, 120.0]})
    assert plan.job_minutes(runs).tolist() == pytest.approx([258 / 60, 2.0])


def test_planned_overrides_replace_the_sweeps_grid(tmp_path):
    """Hydra's basic sweeper keys the grid by override: the plan's ``seed=`` and ``variant=``
    replace the sweep file's lists (they are not multiplied with them)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from conftest import CONF_DIR

    sweep = copy_records(tmp_path / "table1")
    _, cmds = plan.build({"sweep": "table1", "budget_min": "40"}, [f"hydra.sweep.dir={sweep}"])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["sweep=table1"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    for cmd in cmds:
        grid = [a for a in cmd[5:] if a.startswith(("seed=", "variant="))]
        parsed = OverridesParser.create().parse_overrides([*params, *grid])  # as BasicSweeper.sweep does
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
        seeds, variants = (a.split("=", 1)[1].split(",") for a in grid)
        assert len(jobs) == len(seeds) * len(variants)
        assert {tuple(j) for j in jobs} == {(f"seed={s}", f"variant={v}") for s in seeds for v in variants}
