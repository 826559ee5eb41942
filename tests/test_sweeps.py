"""Named sweeps end to end in subprocesses, as a user runs them (tier=smoke, a few rows): the
callback's report, the report rebuilt from records alone, failure isolation, resume after a
kill, force, the joblib launcher, the W&B report run (read back from the offline files; slow:
every job as a W&B run) and the analysis notebook."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_cli
from csp_ablate.record import RECORD_KEYS

REPORT_TEXT = ("runs.csv", "summary.csv", "summary.md", "table1.csv", "table1.md", "claims.csv", "claims.md")
TABLE1_ROWS = ("peleenet", "csp_g50_csp", "csp_g50_last")


def count_lines(stdout: str, prefix: str) -> int:
    """Lines that start with ``prefix`` (the bare lines a job prints, not their log copies)."""
    return sum(line.startswith(prefix) for line in stdout.splitlines())


def records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/record.json"))]


@pytest.fixture(scope="module")
def smoke_tier(tmp_path_factory) -> Path:
    """A tier dir (``<tmp>/smoke``) holding this module's named sweeps side by side, as
    ``results/smoke/<sweep>``: Figure 4 reuses Table 1's runs there (issue 18)."""
    return tmp_path_factory.mktemp("results") / "smoke"


@pytest.fixture(scope="module")
def table1_smoke(smoke_tier, data_override):
    """`sweep=table1` restricted to three rows x two seeds, tier=smoke (6 jobs)."""
    sweep_dir = smoke_tier / "table1"
    proc = run_cli(
        "-m", "sweep=table1", "tier=smoke", "logger=none", "seed=0,1", f"variant={','.join(TABLE1_ROWS)}",
        f"hydra.sweep.dir={sweep_dir}", *data_override,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc


def test_table1_smoke_sweep_end_to_end(table1_smoke):
    sweep_dir, proc = table1_smoke
    assert "[csp_ablate.report] table1: 6 completed, 0 failed" in proc.stdout
    for name in REPORT_TEXT:
        assert (sweep_dir / name).is_file(), name
    runs = pd.read_csv(sweep_dir / "runs.csv")
    assert list(runs.columns) == RECORD_KEYS
    assert len(runs) == 6 and set(runs["status"]) == {"completed"} and set(runs["sweep"]) == {"table1"}
    assert sorted(runs["seed"].unique()) == [0, 1]
    table = pd.read_csv(sweep_dir / "table1.csv").set_index("row")
    assert len(table) == 13 and table.index[0] == "peleenet"  # all the paper's rows, in its order
    assert all(table.loc[row, "n"] == 2 for row in TABLE1_ROWS)
    assert table.loc["speleenet", "n"] == 0 and table.loc["speleenet", "note"] == "not run"
    csp = runs[(runs["model"] == "csppeleenet") & (runs["fusion"] == "csp")]
    assert table.loc["csp_g50_csp", "top1_mean"] == pytest.approx(csp["top1"].mean(), abs=1e-4)
    assert table.loc["csp_g50_csp", "bflops_delta_pct"] == pytest.approx(-12.1, abs=0.1)  # FACTS.md
    claims = pd.read_csv(sweep_dir / "claims.csv").set_index("claim")
    assert claims.loc["csp_g50_bflops", "verdict"] == "reproduced"  # -12.1 % vs the paper's -13 %
    assert claims.loc["last_g50_bflops", "verdict"] == "reproduced"  # -24.5 % vs "-21 %"
    assert claims.loc["csp_g25_top1", "verdict"] == "inconclusive"  # row not in this grid
    assert not list(sweep_dir.rglob(".*.tmp"))


@pytest.mark.parametrize("fixture, files", [
    ("table1_smoke", REPORT_TEXT),
    ("figure4_smoke", ("runs.csv", "summary.csv", "summary.md", "figure4.csv", "figure4.md", "claims.csv",
                       "claims.md", "figure4.png", "figure4.svg")),
])
def test_report_rebuilt_from_records_equals_callback_output(fixture, files, request, tmp_path):
    sweep_dir, _ = request.getfixturevalue(fixture)
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns(*files, "wandb"))
    assert not (copy / "runs.csv").exists()
    proc = run_cli(str(copy), module="csp_ablate.report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in files:
        assert filecmp.cmp(sweep_dir / name, copy / name, shallow=False), name


def test_notebook_executes_against_a_smoke_sweep(figure4_smoke, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    sweep_dir, _ = figure4_smoke
    monkeypatch.setenv("CSP_SWEEP_DIR", str(sweep_dir))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "4 jobs" in text and "Figure 4: effect of truncating the gradient flow" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the report's figure + the scatter


def _wandb_records(run_dir: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    from wandb_offline import iter_chunks

    for chunk in iter_chunks(next(run_dir.glob("run-*.wandb"))):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        yield rec.WhichOneof("record_type"), rec


@pytest.fixture(scope="module")
def figure4_smoke(table1_smoke, smoke_tier, data_override):
    """`sweep=figure4`, tier=smoke, one seed (4 jobs) beside ``table1_smoke``: rows (a), (b) and
    (d) are Table 1 grid points it already ran, so only (c) trains. Jobs log nothing, the report
    run goes to W&B."""
    sweep_dir = smoke_tier / "figure4"
    proc = run_cli("-m", "sweep=figure4", "tier=smoke", "logger=none", "seed=0", "hydra.callbacks.report.wandb=always",
                   f"hydra.sweep.dir={sweep_dir}", *data_override, env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc


def test_figure4_smoke_sweep_end_to_end(figure4_smoke):
    sweep_dir, proc = figure4_smoke
    assert "[csp_ablate.report] figure4: 4 completed, 0 failed" in proc.stdout
    for name in ("figure4.png", "figure4.svg", "figure4.csv", "figure4.md", "claims.csv", "claims.md"):
        assert (sweep_dir / name).stat().st_size > 0, name
    table = pd.read_csv(sweep_dir / "figure4.csv")
    assert list(table["row"]) == ["none", "csp", "first", "last"] and set(table["n"]) == {1}
    # (a) is Table 1's PeleeNet grid point (no fusion axis), so Figure 4 can reuse its runs
    assert table["fusion"].isna().tolist() == [True, False, False, False] and table["model"][0] == "peleenet"
    claims = pd.read_csv(sweep_dir / "claims.csv").set_index("claim")
    assert claims.loc["f4_first_bflops", "verdict"] == "reproduced"
    assert claims.loc["f4_first_top1", "verdict"] == "inconclusive"  # one seed: no interval
    svg = (sweep_dir / "figure4.svg").read_text()
    for label in ("BFLOPs", "top-1", "(a) single path", "(b) CSP", "(c) fusion first", "(d) fusion last"):
        assert label in svg, label


def test_wandb_report_run_holds_tables_figure_and_artifact(figure4_smoke):
    from wandb_offline import find_offline_runs, read_offline_run

    sweep_dir, proc = figure4_smoke
    (report_dir,) = find_offline_runs(sweep_dir)  # the jobs ran with logger=none
    assert report_dir.parent.parent == sweep_dir
    (meta,) = [rec.run for kind, rec in _wandb_records(report_dir) if kind == "run"]
    assert (meta.job_type, meta.run_group) == ("report", "figure4")
    run = read_offline_run(report_dir)
    (logged,) = run["history"]
    assert logged["figure4/_type"] == "table-file" and logged["claims/_type"] == "table-file"
    assert logged["plot/figure4/_type"] == "image-file"
    assert run["summary"]["n_completed"] == 4
    artifacts = {rec.artifact.name: [m.path for m in rec.artifact.manifest.contents]
                 for kind, rec in _wandb_records(report_dir) if kind == "artifact"}
    assert {"runs.csv", "figure4.csv", "claims.csv", "figure4.png", "figure4.svg"} <= set(artifacts["report-figure4"])


@pytest.mark.slow
def test_wandb_sweep_jobs_are_train_runs_in_the_sweep_group(tmp_path, data_override):
    from wandb_offline import find_offline_runs

    sweep_dir = tmp_path / "figure4"
    proc = run_cli("-m", "sweep=figure4", "variant=peleenet,csp_g50_last", "tier=smoke", "logger=wandb", "seed=0",
                   f"hydra.sweep.dir={sweep_dir}", *data_override, env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = {}
    for run_dir in find_offline_runs(sweep_dir):
        (meta,) = [rec.run for kind, rec in _wandb_records(run_dir) if kind == "run"]
        groups.setdefault(meta.job_type, []).append(meta.run_group)
    assert groups == {"train": ["figure4", "figure4"], "report": ["figure4"]}


def test_failed_job_is_isolated_and_rerun_resumes_then_force_reruns(tmp_path, tiny_fmnist):
    """A bad value for one grid point: the sweep goes on, the report marks the gap; a rerun
    skips the completed job and retries the failed one; force=true reruns both. (The bad value
    is a result-changing key: a bad data.root is the same grid point, the root being a path.)"""
    sweep_dir = tmp_path / "adhoc"
    args = ("-m", f"data.root={tiny_fmnist}", "data.val_size=200,100000", "tier=smoke", "logger=none",
            f"hydra.sweep.dir={sweep_dir}")
    first = run_cli(*args)
    assert first.returncode == 1, first.stderr[-3000:]  # all jobs ran, then: non-zero, naming the failed one
    assert "job 1 failed: " in first.stderr and f"record: {sweep_dir / '1' / 'record.json'}" in first.stderr
    assert "[csp_ablate.report] adhoc: 1 completed, 1 failed" in first.stdout
    runs = pd.read_csv(sweep_dir / "runs.csv")
    assert list(runs["status"]) == ["completed", "failed"] and "data.val_size" in runs["error"].iloc[1]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert summary["n"].tolist() == [1, 0] and summary["n_failed"].tolist() == [0, 1]
    assert "no completed run; 1 failed" in (sweep_dir / "summary.md").read_text()
    done_before = records(sweep_dir)[0]

    second = run_cli(*args)
    assert second.returncode == 1, second.stderr[-3000:]
    assert count_lines(second.stdout, "[csp_ablate] skipped:") == 1
    assert count_lines(second.stdout, "[csp_ablate] completed:") == 0
    assert records(sweep_dir)[0] == done_before  # untouched, not rerun
    assert records(sweep_dir)[1]["status"] == "failed"  # retried (and failed again)

    forced = run_cli(*args, "force=true")
    assert forced.returncode == 1, forced.stderr[-3000:]
    assert count_lines(forced.stdout, "[csp_ablate] skipped:") == 0
    assert count_lines(forced.stdout, "[csp_ablate] completed:") == 1
    assert records(sweep_dir)[0]["started_at"] >= done_before["finished_at"]
    assert records(sweep_dir)[0]["resumed_from_step"] is None  # retrained, not resumed from its final last.ckpt
    assert records(sweep_dir)[0]["config_hash"] == done_before["config_hash"]  # force is not part of the hash


def test_sweep_extended_into_the_same_dir_sets_other_grid_points_aside(tmp_path, data_override):
    """Seeds 0,1 then seeds 1,2 into one dir: Hydra puts seed 1 into job dir 0 (seed 0's) and seed 2
    into dir 1. Seed 1 is skipped (done), seed 2 trains (no 'cannot resume' from seed 1's
    checkpoint); the other runs' record, checkpoints and curves are kept, the report has all 3."""
    sweep_dir = tmp_path / "extended"
    common = ("tier=smoke", "logger=csv", f"hydra.sweep.dir={sweep_dir}", *data_override)
    first = run_cli("-m", "seed=0,1", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    seed1_curves = (sweep_dir / "1" / "csv" / "metrics.csv").read_text()

    second = run_cli("-m", "seed=1,2", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    assert count_lines(second.stdout, "[csp_ablate] skipped:") == 1
    assert count_lines(second.stdout, "[csp_ablate] completed:") == 1
    assert "Cannot resume" not in second.stdout + second.stderr
    job1 = sweep_dir / "1"
    assert json.loads((job1 / "record.json").read_text())["seed"] == 2
    assert [json.loads(p.read_text())["seed"] for p in job1.glob("record.*.json")] == [1]
    aside = sorted(p.name.split(".")[0] for p in job1.iterdir() if p.is_dir() and "." in p.name and p.name[0] != ".")
    assert aside == ["checkpoints", "csv"]
    assert next(job1.glob("csv.*/metrics.csv")).read_text() == seed1_curves
    assert (job1 / "checkpoints" / "last.ckpt").exists()  # seed 2's own
    runs = pd.read_csv(sweep_dir / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2] and set(runs["status"]) == {"completed"}


def test_narrower_relaunch_resumes_a_run_from_another_job_dir(tmp_path, data_override):
    """Seeds 0,1; seed 1 stopped before its record (its last.ckpt is in job dir 1); relaunch
    only `seed=1`: Hydra numbers it job 0. It must resume from dir 1's checkpoint, not start
    over (Table 2's fourth launch restarted two runs so), and end with the same metrics. The run
    stopped at its last step, so it resumes there and trains nothing more: this checks the move,
    the resume and the record end to end; test_adopt.py covers which state wins, and
    test_resume.py that a resume from mid-training ends bit-identical."""
    sweep_dir = tmp_path / "narrowed"
    common = ("tier=smoke", "logger=csv", f"hydra.sweep.dir={sweep_dir}", *data_override)
    first = run_cli("-m", "seed=0,1", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    job0, job1 = sweep_dir / "0", sweep_dir / "1"
    stopped = json.loads((job1 / "record.json").read_text())
    (job1 / "record.json").unlink()  # as if stopped during its final evaluation

    second = run_cli("-m", "seed=1", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert f"moved into {job0 / 'checkpoints'} to resume" in out
    assert count_lines(second.stdout, "[csp_ablate] completed:") == 1
    resumed = json.loads((job0 / "record.json").read_text())
    assert resumed["seed"] == 1 and resumed["run_id"] == stopped["run_id"]
    assert resumed["resumed_from_step"] == stopped["steps"] > 0  # not a fresh start
    assert [launch["resumed_from_step"] for launch in resumed["launches"]] == [None, stopped["steps"]]
    assert resumed["top1"] == stopped["top1"] and resumed["val_top1"] == stopped["val_top1"]
    assert not (job1 / "checkpoints").exists() and (job0 / "checkpoints" / "last.ckpt").exists()
    assert not (job1 / "csv").exists() and (job0 / "csv" / "metrics.csv").exists()  # its curves came along
    assert [json.loads(p.read_text())["seed"] for p in job0.glob("record.*.json")] == [0]  # kept
    assert len(list(job0.glob("checkpoints.*/last.ckpt"))) == 1  # seed 0's, set aside
    runs = pd.read_csv(sweep_dir / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1] and set(runs["status"]) == {"completed"}


def _reap_group(proc: subprocess.Popen, grace_s: float = 10.0) -> bool:
    """Let the SIGTERMed sweep's workers finish saving their checkpoints (the launcher can exit
    first), then SIGKILL whatever is left of its process group (a worker being spawned while
    SIGTERM went out), so nothing of it can write into the sweep dir during the rerun. Killing
    a worker mid-save leaves its ``.last.ckpt.<pid>.tmp`` behind (never a torn checkpoint).
    True when the group ended by itself within ``grace_s``."""
    deadline = time.monotonic() + grace_s
    drained = False
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone of the group still alive?
        except ProcessLookupError:
            drained = True
            break
        time.sleep(0.1)
    for _ in range(100):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    proc.wait(timeout=60)
    return drained


def test_multirun_exits_non_zero_after_all_jobs_and_foreign_record_never_blocks(tmp_path, data_override):
    """A job dir holding `[]` (not a record) and a grid with one bad value: every job runs, the
    foreign file is set aside with one warning, the good job completes, the sweep exits 1 and
    names the failed job and its record."""
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0").mkdir(parents=True)
    (sweep_dir / "0" / "record.json").write_text("[]")
    proc = run_cli("-m", "gamma=0.5,1.5", "tier=smoke", "logger=none", "data.train_subset=128",
                   f"hydra.sweep.dir={sweep_dir}", *data_override)
    assert proc.returncode == 1, proc.stderr[-3000:]
    done = [r for r in records(sweep_dir) if r["status"] == "completed"]
    assert len(done) == 1 and done[0]["gamma"] == 0.5
    assert (sweep_dir / "0" / "record.json.malformed").read_text() == "[]"
    out = proc.stdout + proc.stderr
    assert out.count("is not a record") == 1  # one warning line, from the launcher
    assert "job 1 failed: Invalid value for 'gamma': 1.5" in proc.stderr
    assert "multirun: 1 of 2 job(s) failed" in proc.stderr and "Traceback" not in out
    assert "1 completed, 1 failed" in proc.stdout


def test_ctrl_c_in_the_launcher_is_one_line(tmp_path, data_override):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "csp_ablate", "-m", "seed=0,1", "tier=smoke", "logger=none",
                             f"hydra.sweep.dir={sweep_dir}", *data_override], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (sweep_dir / "0" / ".hydra").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        out, err = proc.communicate(timeout=120)
    finally:
        _reap_group(proc)
    assert proc.returncode != 0 and "Traceback" not in out + err, err[-2000:]
    assert len(err.strip().splitlines()) <= 2, err


@pytest.mark.parametrize("launcher", [
    pytest.param(("seed=0,1,2",), id="adhoc-basic"),
    pytest.param(("sweep=figure4", "variant=peleenet", "seed=0,1,2"), id="named-joblib", marks=pytest.mark.slow),
])
def test_killed_sweep_keeps_finished_records_and_resumes(launcher, tmp_path, data_override):
    """SIGTERM the sweep once its first job finished; rerun: only the missing jobs run."""
    sweep_dir = tmp_path / "killed"
    args = ["-m", *launcher, "tier=smoke", "logger=none", f"hydra.sweep.dir={sweep_dir}", *data_override]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "csp_ablate", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(sweep_dir.glob("*/record.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its workers
        proc.wait(timeout=60)
    finally:
        drained = _reap_group(proc, grace_s=60)
    # joblib's workers save (or finish) and exit rather than idle on for a launcher that is gone
    # (they did for minutes, each with its wandb-core, until csp_ablate.sweep.exit_if_launcher_gone)
    assert drained, "the stopped sweep's process group did not end by itself"
    before = records(sweep_dir)  # every record left behind is whole JSON
    assert before and all(r["status"] == "completed" for r in before)
    assert len(before) < 3, "the sweep finished before it could be killed"
    assert not (sweep_dir / "runs.csv").exists() and not list(sweep_dir.rglob(".*.tmp"))

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert count_lines(rerun.stdout, "[csp_ablate] skipped:") == len(before)
    assert count_lines(rerun.stdout, "[csp_ablate] completed:") == 3 - len(before)
    after = records(sweep_dir)
    assert sorted(r["seed"] for r in after) == [0, 1, 2] and all(r["status"] == "completed" for r in after)
    assert all(r in after for r in before)  # finished records untouched
    runs = pd.read_csv(sweep_dir / "runs.csv")
    assert len(runs) == 3 and pd.read_csv(sweep_dir / "summary.csv")["n"].tolist() == [3]


def test_joblib_launcher_runs_two_jobs_at_once_and_aggregates_exactly(tmp_path, data_override):
    """Named sweeps default to conf/hydra/launcher/joblib2.yaml: two jobs at once."""
    sweep_dir = tmp_path / "joblib"
    proc = run_cli("-m", "sweep=figure4", "variant=csp_g50_csp,csp_g50_last", "seed=0,1", "tier=smoke", "logger=none",
                   f"hydra.sweep.dir={sweep_dir}", *data_override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[csp_ablate.report] figure4: 4 completed, 0 failed" in proc.stdout
    runs = pd.read_csv(sweep_dir / "runs.csv")
    table = pd.read_csv(sweep_dir / "figure4.csv").set_index("fusion")
    for fusion in ("csp", "last"):
        mine = runs.loc[runs["fusion"] == fusion, "top1"]
        assert table.loc[fusion, "n"] == 2 and table.loc[fusion, "top1_mean"] == pytest.approx(mine.mean(), abs=1e-4)
    # each of the two workers gave its jobs half of the cores
    cpus = os.cpu_count() or 1
    logs = "".join(p.read_text() for p in sweep_dir.glob("*/*.log"))
    assert logs.count(f"1 process(es) x {max(1, cpus // 2)} thread(s)") == 4


def test_table2_smoke_sweep_end_to_end(tmp_path, tiny_fmnist):
    """`sweep=table2` with two rows, tier=smoke: detection records -> table2.csv, claims, figure."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m", "sweep=table2", "tier=smoke", "logger=none", "variant=t2_gfm,t2_efm_giou",
        f"hydra.sweep.dir={sweep_dir}", f"data.root={tiny_fmnist}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.n_train=64", "data.n_val=32",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[csp_ablate.report] table2: 2 completed, 0 failed" in proc.stdout
    runs = pd.read_csv(sweep_dir / "runs.csv", keep_default_na=False)
    assert list(runs.columns) == RECORD_KEYS
    assert sorted(zip(runs["neck"], runs["extras"])) == [("efm", "giou"), ("gfm", "")]
    assert set(runs["task"]) == {"detection"} and (runs["ap50"].astype(float) >= 0).all()
    table = pd.read_csv(sweep_dir / "table2.csv").set_index("row")
    assert list(table.index) == ["prn", "cem_sam", "gfm", "efm", "efm_giou", "efm_spp", "efm_sam", "efm_sam_swish"]
    assert table.loc["gfm", "n"] == 1 and table.loc["efm_giou", "n"] == 1 and table.loc["efm", "n"] == 0
    gfm = runs[runs["neck"] == "gfm"].iloc[0]
    assert table.loc["gfm", "ap50_mean"] == pytest.approx(float(gfm["ap50"]), abs=1e-4)
    assert (sweep_dir / "claims.csv").is_file() and (sweep_dir / "table2.png").is_file()


def test_figure4_reuses_table1_runs_of_the_same_tier(figure4_smoke, table1_smoke, tmp_path, data_override):
    """Issue 18: one set of runs per tier. A Figure 4 row that Table 1 already ran (same config
    hash + seed) is copied with `reused_from`, not retrained; a new row trains; force retrains."""
    figure4_dir, proc = figure4_smoke
    table1_dir, _ = table1_smoke
    assert count_lines(proc.stdout, "[csp_ablate] reused:") == 3
    originals = {json.loads(p.read_text())["run_id"]: p for p in table1_dir.glob("*/record.json")}
    figure4 = {r["fusion"]: r for r in records(figure4_dir)}
    assert figure4["first"]["reused_from"] is None  # (c) is not a Table 1 grid point here: it trains
    same = ("config_hash", "run_id", "top1", "val_top1", "started_at", "git_sha", "launches")
    for fusion in (None, "csp", "last"):
        reused = figure4[fusion]
        path = originals[reused["run_id"]]
        original = json.loads(path.read_text())
        assert reused["reused_from"] == f"table1/{path.parent.name}/record.json" and reused["sweep"] == "figure4"
        assert {k: reused[k] for k in same} == {k: original[k] for k in same}
        assert str(table1_dir.parent) not in json.dumps(reused)  # the note is tier-relative, no machine path
    runs = pd.read_csv(figure4_dir / "runs.csv")
    assert runs["reused_from"].notna().sum() == 3  # the report keeps the note

    tier = tmp_path / "smoke"  # a copy, so the module's sweeps stay as their own tests expect
    for name in ("table1", "figure4"):
        shutil.copytree(table1_dir.parent / name, tier / name, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    again = run_cli("-m", "sweep=figure4", "variant=csp_g50_last", "tier=smoke", "logger=none", "seed=0", "force=true",
                    f"hydra.sweep.dir={tier / 'figure4'}", *data_override)
    assert again.returncode == 0, again.stderr[-3000:]
    assert count_lines(again.stdout, "[csp_ablate] reused:") == 0
    original = figure4["last"]
    rerun = json.loads((tier / "figure4" / "0" / "record.json").read_text())  # job 0 of the one-point grid
    assert (rerun["fusion"], rerun["reused_from"]) == ("last", None) and rerun["started_at"] != original["started_at"]
    assert rerun["top1"] == original["top1"]  # same identity, same result
