"""Shared plumbing of the benchmarks: machine facts, medians, CSV + summary output.

Timings on a shared machine are noisy, so every target is a *ratio* measured side by side in
one run, with the median of several repetitions; every CSV row names the machine (cores,
threads, torch version, device) so figures from different machines are never mixed, and the
commit (``git_sha``, ``+dirty`` for uncommitted code) so every figure can be traced to its code.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "0") not in ("", "0", "false")
# quick runs (CI, tests) never overwrite the committed full-run figures
OUT_DIR = Path(os.environ.get("BENCH_OUT", REPO / "results" / "bench" / ("quick" if QUICK else "")))


def machine() -> dict[str, object]:
    """Facts that make a timing comparable: who ran it, where, with what."""
    info: dict[str, object] = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "quick": QUICK,
        "date": dt.date.today().isoformat(),
    }
    import torch

    from csp_ablate.record import git_sha

    info.update(
        git_sha=git_sha(),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        device=f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu",
    )
    return info


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_cmd_time(cmd: list[str], env: dict | None = None) -> float:
    """Wall time of one subprocess (start-up benchmarks)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, check=True, capture_output=True)
    return time.perf_counter() - start


def write_result(name: str, rows: list[dict], summary: str) -> Path:
    """Write ``results/bench/<name>.csv`` (machine columns added) and one summary line."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    facts = machine()
    df = pd.DataFrame([{**row, **facts} for row in rows])
    path = OUT_DIR / f"{name}.csv"
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    summary_path = OUT_DIR / "summary.md"
    lines = summary_path.read_text().splitlines() if summary_path.exists() else ["# Benchmark summary", ""]
    lines = [ln for ln in lines if not ln.startswith(f"- **{name}**")]
    mode = "quick" if QUICK else "full"
    if QUICK:  # tiny settings: the figures prove the benchmark runs, they are not a verdict
        summary = "[quick mode: tiny settings, pass/FAIL not meaningful] " + summary
    sha = facts.get("git_sha") or "unknown"
    commit = sha[:7] + ("+dirty" if sha.endswith("+dirty") else "")
    lines.append(f"- **{name}** ({mode}, {facts['cores']} cores, {facts.get('threads')} threads, "
                 f"torch {facts.get('torch_version')}, {facts.get('device')}, {facts['date']}, git {commit}): {summary}")
    summary_path.write_text("\n".join(lines) + "\n")
    print(df.to_string(index=False))
    print(summary)
    return path
