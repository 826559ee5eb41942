"""Benchmarks are not tests: here we only check each one runs on its tiny (quick) setting and
writes its CSV with the machine columns. No timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

CSV = {"bench_startup": "startup", "bench_report": "report_scaling", "bench_data": "data_pipeline", "bench_overhead": "overhead",
       "bench_train_speed": "train_speed", "bench_inference": "inference", "bench_job_overhead": "job_overhead",
       "bench_ddp": "ddp_overhead", "bench_imagefolder": "imagefolder"}
BENCHES = list(CSV)  # every benchmark `make bench` runs (tested against the Makefile below)


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES)
def test_benchmark_runs_in_quick_mode(bench, tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "BENCH_OUT": str(tmp_path), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{bench}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / f"{CSV[bench]}.csv")
    assert len(df) > 0
    assert {"cores", "threads", "torch_version", "device", "git_sha"} <= set(df.columns)
    assert f"**{CSV[bench]}**" in (tmp_path / "summary.md").read_text()


def _ddp_rows(one_proc: list[float], one_thread: list[float], ddp: list[float]) -> list[dict]:
    return [{"mode": m, "global_batch": 64, "images_per_s": v}
            for m, vals in (("1proc", one_proc), ("1proc_1thread", one_thread), ("ddp2", ddp)) for v in vals]


def test_ddp_overhead_is_against_the_better_single_process():
    from benchmarks.bench_ddp import summarize

    # the committed case: 1 x 2 threads (309) slower than 1 x 1 (545): the baseline is 1 x 1
    rows = _ddp_rows([300, 309, 320, 305, 310], [540, 545, 550, 530, 548], [420, 430, 425, 410, 440])
    text = summarize(rows, 64, 2)
    assert rows[0]["baseline_mode"] == "1proc_1thread"
    assert rows[0]["ddp_vs_best_1proc"] == round(425 / 545, 3)
    assert "+22% overhead against the better single process (1proc_1thread)" in text
    assert "1 proc x 2 threads 309 img/s [300-320]" in text and "1 proc x 1 thread 545 img/s [530-550]" in text
    rows = _ddp_rows([600] * 5, [450] * 5, [480] * 5)
    assert "+20% overhead" in summarize(rows, 64, 2) and rows[0]["baseline_mode"] == "1proc"


def test_overhead_verdict_is_the_median_with_its_spread():
    from benchmarks.bench_overhead import summarize

    rows = [{"ratio": r, "framework_img_s": 1000.0, "hand_loop_img_s": 1050.0} for r in (0.97, 0.892, 0.98, 0.96, 0.99)]
    text = summarize(rows)
    assert "median ratio 0.970 over 5 interleaved repeat(s), range 0.892-0.990, 1 below 0.95" in text
    assert "pass" in text and rows[0]["min_ratio"] == 0.892 and rows[0]["passed"]


def test_every_benchmark_make_bench_runs_is_tested_here():
    """CI runs `BENCH_QUICK=1 make bench` instead of this file's slow tests: both must cover the same set."""
    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if ln.startswith("BENCHES :="))
    assert line.split(":=")[1].split() == BENCHES
