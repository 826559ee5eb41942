"""Per-job overhead of a sweep job: everything but the training and evaluation loops.

Two runs of one real job (`python -m csp_ablate`, default proxy tier and W&B logger, offline):

1. **the verdict, unprofiled**: wall time of the subprocess minus the loops it timed itself
   (``train_time_s`` of the record = ``Trainer.fit``; ``eval_time_s`` of the run's
   ``checkpoints/launches.jsonl`` = the final test/validation). cProfile slows Python-heavy
   start-up far more than the C++ loops, so a profiled run overstates the overhead.
2. **where the time goes, under cProfile**: the same job, its wall time split into the loops
   (``Trainer.fit``, ``Trainer.test``) and named phases: model build, cost counting, W&B
   init/finish, record writing; the rest is interpreter + imports, config, data loading.

Target (issue 8): the overhead is <= 5 % of a proxy job's wall time (run 1).
"""

from __future__ import annotations

import json
import os
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
    ("csp_ablate/tasks/__init__.py", "cost_fields"): "cost counting (params, BFLOPs, CIO)",
    ("csp_ablate/train.py", "build_model"): "model build",
    ("csp_ablate/tracking.py", "build_logger"): "W&B/CSV logger object",
    # W&B starts in a background thread (csp_ablate.tracking.EarlyWandbRun), which cProfile does not
    # see: 0 here means nothing of wandb.init is left on the main thread
    ("wandb/sdk/wandb_init.py", "init"): "W&B init on the main thread (inside Trainer.fit)",
    ("csp_ablate/tracking.py", "finish_logger"): "W&B summary + finish",
    ("csp_ablate/record.py", "write_record"): "record.json write",
    ("csp_ablate/profile/throughput.py", "measure_fps"): "fps measurement",
    ("lightning/pytorch/core/datamodule.py", "__init__"): None,
}


def cumulative(stats: pstats.Stats, suffix: str, func: str) -> float:
    total = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if name == func and filename.endswith(suffix):
            total = max(total, ct)  # recursion-safe: the outermost call's cumulative time
    return total


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def unprofiled(tier: str, tmp: str) -> dict[str, float]:
    """Wall time of one job and the loop times it recorded itself."""
    run_dir = Path(tmp) / "plain"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "csp_ablate", tier, f"hydra.run.dir={run_dir}"], cwd=REPO, check=True,
                   capture_output=True, env=_env())
    wall = time.perf_counter() - start
    record = json.loads((run_dir / "record.json").read_text())
    events = [json.loads(line) for line in (run_dir / "checkpoints" / "launches.jsonl").read_text().splitlines()]
    end = next(e for e in reversed(events) if e.get("event") == "end")
    return {"wall": wall, "fit": float(record["train_time_s"]), "eval": float(end.get("eval_time_s") or 0.0)}


def main() -> None:
    tier = "tier=smoke" if QUICK else "tier=proxy"
    with tempfile.TemporaryDirectory() as tmp:
        plain = unprofiled(tier, tmp)
        prof = Path(tmp) / "job.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "csp_ablate", tier,
               f"hydra.run.dir={tmp}/run"]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env=_env())
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
        rows.append({"phase": f"[cProfile] {label}", "seconds": round(secs, 3), "pct_of_job": round(100 * secs / wall, 2)})
    overhead_prof = wall - loops
    rows.append({"phase": "[cProfile] overhead = wall - loops (imports, config, data load, cost, W&B, record)",
                 "seconds": round(overhead_prof, 3), "pct_of_job": round(100 * overhead_prof / wall, 2)})
    rows.append({"phase": "[cProfile] job wall time", "seconds": round(wall, 3), "pct_of_job": 100.0})
    overhead = plain["wall"] - plain["fit"] - plain["eval"]
    pct = 100 * overhead / plain["wall"]
    rows += [
        {"phase": "loop: Trainer.fit (record train_time_s)", "seconds": round(plain["fit"], 3),
         "pct_of_job": round(100 * plain["fit"] / plain["wall"], 2)},
        {"phase": "loop: final evaluation (launches.jsonl eval_time_s)", "seconds": round(plain["eval"], 3),
         "pct_of_job": round(100 * plain["eval"] / plain["wall"], 2)},
        {"phase": "overhead = wall - loops (unprofiled: the verdict)", "seconds": round(overhead, 3),
         "pct_of_job": round(pct, 2)},
        {"phase": "job wall time (python -m csp_ablate, unprofiled)", "seconds": round(plain["wall"], 3),
         "pct_of_job": 100.0},
    ]
    for r in rows:
        r.update(tier=tier.split("=")[1], target_pct=TARGET_PCT, passed=(pct <= TARGET_PCT) if not QUICK else None)
    write_result("job_overhead", rows,
                 f"{tier}: per-job overhead {overhead:.1f}s of {plain['wall']:.0f}s = {pct:.1f}% unprofiled "
                 f"({overhead_prof:.1f}s of {wall:.0f}s under cProfile; target <= {TARGET_PCT}% for a proxy job: "
                 f"{'pass' if pct <= TARGET_PCT else 'FAIL'})")


if __name__ == "__main__":
    main()
