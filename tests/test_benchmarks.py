"""Benchmarks are not tests: here we only check each one runs on its tiny (quick) setting and
writes its CSV with the machine columns. No timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

BENCHES = ["bench_startup", "bench_report", "bench_data", "bench_overhead", "bench_train_speed", "bench_inference",
           "bench_job_overhead"]
CSV = {"bench_startup": "startup", "bench_report": "report_scaling", "bench_data": "data_pipeline", "bench_overhead": "overhead",
       "bench_train_speed": "train_speed", "bench_inference": "inference", "bench_job_overhead": "job_overhead"}


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES)
def test_benchmark_runs_in_quick_mode(bench, tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "BENCH_OUT": str(tmp_path), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{bench}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / f"{CSV[bench]}.csv")
    assert len(df) > 0
    assert {"cores", "threads", "torch_version", "device"} <= set(df.columns)
    assert f"**{CSV[bench]}**" in (tmp_path / "summary.md").read_text()
