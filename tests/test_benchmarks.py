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


def _ddp_rows(one_proc: list[float], one_thread: list[float], ddp: list[float], two_jobs: list[float] = ()) -> list[dict]:
    return [{"mode": m, "global_batch": 64, "images_per_s": v}
            for m, vals in (("1proc", one_proc), ("1proc_1thread", one_thread), ("ddp2", ddp), ("two_jobs", two_jobs))
            for v in vals]


def test_ddp_overhead_is_against_the_better_single_process_with_its_cores():
    from benchmarks.bench_ddp import summarize

    # the committed case: 1 x 2 threads (309) slower than 1 x 1 (545), DDP at 660: the baseline is
    # 1 x 1 on one core, so DDP on two cores against it is a ratio, never a "-21 % overhead"
    rows = _ddp_rows([300, 309, 320, 305, 310], [540, 545, 550, 530, 548], [650, 660, 655, 670, 662])
    text = summarize(rows, 64, 2)
    assert rows[0]["baseline_mode"] == "1proc_1thread" and rows[0]["baseline_cores"] == 1
    assert rows[0]["ddp_vs_best_1proc"] == round(660 / 545, 3)
    assert "x1.21 of the better single process (1proc_1thread, on 1 core while DDP uses 2: a ratio, not an overhead" in text
    assert "overhead against" not in text
    assert "1 proc x 2 threads 309 img/s [300-320]" in text and "1 proc x 1 thread 545 img/s [530-550]" in text
    # the healthy case: one process uses both cores better than one; DDP's cost is an overhead against it
    rows = _ddp_rows([600] * 5, [450] * 5, [480] * 5, [900, 910, 905, 880, 920])
    text = summarize(rows, 64, 2)
    assert "+20% overhead against the better single process (1proc)" in text and rows[0]["baseline_cores"] == 2
    assert "two independent 1-thread jobs (a local sweep) 905 img/s [880-920] together" in text


def test_ddp_two_jobs_rate_is_the_sum_of_both_jobs(monkeypatch):
    """``two_jobs`` (a sweep's two 1-thread workers): each process's own rate, added."""
    import benchmarks.bench_ddp as bench

    class FakeQueue:
        def __init__(self):
            self.items = [(0, [0.2] * 4, None), (1, [0.25] * 4, None)]

        def get(self, timeout):
            return self.items.pop(0)

    class FakeCtx:
        def Queue(self):  # noqa: N802 (multiprocessing's name)
            return FakeQueue()

        def Barrier(self, parties):  # noqa: N802
            return None

        def Process(self, target, args):  # noqa: N802
            assert args[-2] is True  # independent jobs
            class P:
                def start(self):
                    pass

                def join(self, timeout):
                    pass
            return P()

    import torch.multiprocessing as mp
    monkeypatch.setattr(mp, "get_context", lambda _: FakeCtx())
    row = bench.measure(2, 1, 64, 0, 4, independent=True)
    assert row["per_rank_batch"] == 64 and row["images_per_s"] == round(64 / 0.2 + 64 / 0.25, 1)


def test_overhead_verdict_is_the_median_with_its_spread():
    from benchmarks.bench_overhead import summarize

    rows = [{"ratio": r, "framework_img_s": 1000.0, "hand_loop_img_s": 1050.0} for r in (0.97, 0.892, 0.98, 0.96, 0.99)]
    text = summarize(rows)
    assert "median ratio 0.970 over 5 repeat(s), range 0.892-0.990, 1 below 0.95" in text
    assert text.endswith("pass)") and rows[0]["min_ratio"] == 0.892 and rows[0]["passed"]
    # two repeats below the target fail even with a median above it
    rows = [{"ratio": r, "framework_img_s": 1000.0, "hand_loop_img_s": 1050.0} for r in (0.97, 0.892, 0.98, 0.93, 0.99)]
    text = summarize(rows)
    assert "median ratio 0.970" in text and "2 below 0.95" in text and text.endswith("FAIL)")
    assert not rows[0]["passed"] and rows[0]["below_target"] == 2


def test_every_benchmark_make_bench_runs_is_tested_here():
    """CI runs `BENCH_QUICK=1 make bench` instead of this file's slow tests: both must cover the same set."""
    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if ln.startswith("BENCHES :="))
    assert line.split(":=")[1].split() == BENCHES


def test_train_speed_compares_compile_by_break_even_steps_not_an_extrapolated_job():
    from benchmarks.bench_train_speed import PROXY_STEPS, summarize

    def row(name, step_ms, first_s, default=False, correct=True):
        return {"setting": name, "is_default": default, "step_ms": step_ms, "img_s": 128_000 / step_ms,
                "speedup_vs_naive": 1.0, "same_loss_as_reference": correct, "first_step_s": first_s}

    rows = [row("naive channels_last", 150, 0.3), row("channels_last", 120, 0.2, default=True),
            row("compile channels_last", 100, 30.2), row("compile nchw", 125, 28.0)]
    text = summarize(rows, 5, "cold")
    assert PROXY_STEPS == 1287  # 3 epochs x 429 batches of 128
    assert "compile channels_last: first step cold 30.2s vs 0.2s, 20.0 ms faster per step, pays off after at least 1500 steps" in text
    assert "compile nchw: no faster per step than the default, never pays off" in text
    assert "fastest correct steady state: compile channels_last" in text
    rows[2]["same_loss_as_reference"] = False  # a wrong compile is neither fastest nor compared
    text = summarize(rows, 5, "cold")
    assert "compile channels_last: loss differs from the reference, excluded" in text
    assert "compile channels_last: first step" not in text


def test_train_speed_cold_child_runs_nothing_compiled_before_its_timer(monkeypatch, capsys):
    """The child of a compile setting must pay the whole compile inside its timed first step: its
    model is called for the first time by that step (the loss check is the parent's)."""
    import json

    import torch

    import benchmarks.bench_train_speed as bench

    calls = []

    class Counting(torch.nn.Module):  # stands in for torch.compile's wrapper
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.shape)
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda model: Counting(model))
    step, loss, ref = bench.build({"compile": True, "channels_last": True}, check=False)
    assert calls == [] and loss is None and ref is None
    step()
    assert len(calls) == 1
    bench.main(["--first-step", "compile channels_last"])  # the child's own entry point
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["setting"] == "compile channels_last" and out["first_step_s"] > 0 and len(calls) == 2


def test_job_overhead_verdict_is_the_median_of_the_unprofiled_jobs_with_its_range():
    from benchmarks.bench_job_overhead import summarize, unprofiled_rows

    plains = [{"wall": 200.0, "fit": 180.0, "eval": 12.0}, {"wall": 210.0, "fit": 190.0, "eval": 5.0},
              {"wall": 205.0, "fit": 185.0, "eval": 12.0}]  # overheads 4.0 %, 7.1 %, 3.9 %
    text, passed = summarize(plains)
    assert "overhead 8.0s of 200s = 4.0% unprofiled, the median of 3 job(s) (range 3.9-7.1%" in text
    assert passed and text.endswith("pass)")
    text, passed = summarize(plains[1:2])
    assert not passed and text.endswith("FAIL)")
    rows = unprofiled_rows(plains)
    assert len(rows) == 12 and {r["run"] for r in rows} == {"plain0", "plain1", "plain2"}


def test_report_scaling_judges_the_marginal_time_over_start_up():
    from benchmarks.bench_report import summarize

    linear = {13: [1.2] * 5, 2000: [1.4] * 5, 20000: [3.2] * 5}
    rows, text = summarize(linear, 13, 2000, 20000)
    assert "marginal x10.0 for x10 records" in text and text.endswith("pass)") and rows[0]["passed"]
    # quadratic work hidden under 1.2 s of start-up: whole wall times read x5.7, the marginal x100
    quadratic = {13: [1.2] * 5, 2000: [1.26] * 5, 20000: [7.2] * 5}
    rows, text = summarize(quadratic, 13, 2000, 20000)
    assert "marginal x100.0" in text and text.endswith("FAIL)") and not rows[0]["passed"]


def test_report_scaling_base_sweep_runs_every_code_path(tmp_path):
    """The base sweep has >= 3 seeds on every row, so the report's variance, power and
    seeds-needed code runs there too and cancels out of the marginal times."""
    import json

    from benchmarks.bench_report import BASE, ROWS, make_sweep

    make_sweep(tmp_path, BASE)
    recs = [json.loads(p.read_text()) for p in tmp_path.glob("*/record.json")]
    seeds = {}
    for r in recs:
        seeds.setdefault(r["config_hash"], set()).add(r["seed"])
    assert len(seeds) == len(ROWS) and min(len(s) for s in seeds.values()) >= 3


def test_overhead_pairs_each_job_step_with_the_hand_step_after_it():
    from benchmarks.bench_overhead import paired_ratio

    # job steps end at these times; after each, a hand step runs inside the job's callback
    hand = [0.5, 0.1, 0.2, 0.3, 0.4]  # distinct: the sums must take the hand steps between the periods
    ends = [10.0, 11.0, 11.35, 11.8, 12.35]  # step 1 slow (warm-up); then 0.25 s of job per step
    r = paired_ratio(ends, hand, 1, 128)
    assert r["framework_img_s"] == pytest.approx(3 * 128 / 0.75)  # 12.35 - 11.0 - (0.1 + 0.2 + 0.3)
    assert r["hand_loop_img_s"] == pytest.approx(3 * 128 / 0.9)  # the hand steps after steps 2, 3, 4
    assert r["ratio"] == pytest.approx(0.9 / 0.75)
    with pytest.raises(ValueError, match="no pair after index 4"):
        paired_ratio(ends, hand, 4, 128)


def test_overhead_pairs_every_step_of_a_real_job(tmp_path):
    """The job's config adds the pairing callback (conf/callbacks/, as a user would) and it sees
    every step of a real job (else the benchmark would time nothing); PAIRING is left empty."""
    import json

    from benchmarks.bench_overhead import PAIRING, paired_job

    ends, hand = paired_job(3, str(tmp_path), "tier=smoke", "logger=none", "trainer.max_epochs=1",
                            "trainer.enable_progress_bar=false")
    assert len(ends) == len(hand) == 3 and ends == sorted(ends) and all(h > 0 for h in hand)
    assert not PAIRING
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "completed" and record["top1"] is not None
