"""Per-job overhead of a sweep job: everything but the training and evaluation loops.

Runs one real job (`python -m csp_ablate`, default proxy tier and W&B logger, offline) under
cProfile in a subprocess and splits its wall time into the loops (Lightning's ``Trainer.fit``
and ``Trainer.test``) and the rest: interpreter + imports, config composition, data loading,
model build, cost counting, W&B init/finish, record writing. Target (issue 8): the rest is
<= 5 % of a proxy job's wall time. The top entries of the rest are written too, so the CSV
shows where the time goes.
"""

from __future__ import annotations

import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import QUICK, REPO, write_result

TARGET_PCT = 5.0
PHASES = {  # (file suffix, function name) -> phase label
    ("lightning/pytorch/trainer/trainer.py", "fit"): "loop: Trainer.fit",
    ("lightning/pytorch/trainer/trainer.py", "test"): "loop: Trainer.test",
    ("csp_ablate/train.py", "measure_cost"): "cost counting (params, BFLOPs, CIO)",
    ("csp_ablate/train.py", "build_model"): "model build",
    ("csp_ablate/loggers.py", "build_logger"): "W&B/CSV logger object",
    ("wandb/sdk/wandb_init.py", "init"): "W&B init (lazy: runs inside Trainer.fit)",
    ("csp_ablate/loggers.py", "finish_logger"): "W&B summary + finish",
    ("csp_ablate/record.py", "write_record"): "record.json write",
    ("csp_ablate/profile.py", "measure_fps"): "fps measurement",
    ("lightning/pytorch/core/datamodule.py", "__init__"): None,
}


def cumulative(stats: pstats.Stats, suffix: str, func: str) -> float:
    total = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if name == func and filename.endswith(suffix):
            total = max(total, ct)  # recursion-safe: the outermost call's cumulative time
    return total


def main() -> None:
    tier = "tier=smoke" if QUICK else "tier=proxy"
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "job.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "csp_ablate", tier,
               f"hydra.run.dir={tmp}/run"]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env={
            **__import__("os").environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
        wall = time.perf_counter() - start
        stats = pstats.Stats(str(prof))
    rows = []
    loops = 0.0
    for (suffix, func), label in PHASES.items():
        if label is None:
            continue
        secs = cumulative(stats, suffix, func)
        if label.startswith("loop"):
            loops += secs
        elif "inside Trainer.fit" in label:
            loops -= secs  # W&B start-up is overhead even though Lightning triggers it in fit
        rows.append({"phase": label, "seconds": round(secs, 3), "pct_of_job": round(100 * secs / wall, 2)})
    overhead = wall - loops
    pct = 100 * overhead / wall
    rows.append({"phase": "overhead = wall - loops (imports, config, data load, cost, W&B, record)",
                 "seconds": round(overhead, 3), "pct_of_job": round(pct, 2)})
    rows.append({"phase": "job wall time (python -m csp_ablate, under cProfile)", "seconds": round(wall, 3),
                 "pct_of_job": 100.0})
    for r in rows:
        r.update(tier=tier.split("=")[1], target_pct=TARGET_PCT, passed=(pct <= TARGET_PCT) if not QUICK else None)
    write_result("job_overhead", rows,
                 f"{tier}: per-job overhead {overhead:.1f}s of {wall:.0f}s = {pct:.1f}% "
                 f"(target <= {TARGET_PCT}% for a proxy job: {'pass' if pct <= TARGET_PCT else 'FAIL'})")


if __name__ == "__main__":
    main()
