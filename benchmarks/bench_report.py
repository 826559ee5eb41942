"""Report scaling: `python -m csp_ablate.report` on 1,000 vs 10,000 synthetic records.

The records are Table 1-shaped (13 rows, many seeds, a few failed jobs), written as one
`<job>/record.json` each, exactly like a sweep dir. The command runs in a subprocess, as a user
runs it (imports included). Targets (issue 8): 10,000 records in <= 10x the time of 1,000
(linear) and under 30 s.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import QUICK, REPO, write_result

ROWS = [  # (model, gamma, fusion, activation, bflops, top1 centre) of the Table 1 grid
    ("peleenet", None, None, "leaky", 1.0155, 89.5), ("speleenet", None, None, "leaky", 0.903, 89.0),
    ("peleenext", None, None, "leaky", 0.806, 88.8), ("csppeleenet", 0.25, "first", "leaky", 0.731, 88.9),
    ("csppeleenet", 0.25, "last", "leaky", 0.886, 89.4), ("csppeleenet", 0.5, "first", "leaky", 0.678, 88.7),
    ("csppeleenet", 0.5, "last", "leaky", 0.767, 89.3), ("csppeleenet", 0.75, "first", "leaky", 0.625, 88.5),
    ("csppeleenet", 0.75, "last", "leaky", 0.658, 89.0), ("csppeleenet", 0.25, "csp", "leaky", 1.012, 89.6),
    ("csppeleenet", 0.5, "csp", "leaky", 0.892, 89.5), ("peleenet", None, None, "swish", 1.0155, 89.7),
    ("csppeleenet", 0.5, "csp", "swish", 0.892, 89.8),
]


def make_sweep(root: Path, n: int, seed: int = 0) -> Path:
    from csp_ablate.record import RECORD_KEYS

    rng = random.Random(seed)
    for i in range(n):
        model, gamma, fusion, act, bflops, top1 = ROWS[i % len(ROWS)]
        failed = rng.random() < 0.02
        rec = dict.fromkeys(RECORD_KEYS)
        rec.update(
            sweep="table1", run_id=f"{model}-row{i % len(ROWS)}-s{i // len(ROWS)}", config_hash=f"row{i % len(ROWS):02d}",
            seed=i // len(ROWS), status="failed" if failed else "completed", error="RuntimeError: synthetic" if failed else None,
            task="classification", dataset="fashionmnist", model=model, gamma=gamma, fusion=fusion, extras="",
            activation=act, tier="proxy", img_size=32, epochs=3, params_m=2.8, bflops=bflops, bflops_train=0.02,
            top1=None if failed else round(rng.gauss(top1, 0.3), 3), val_top1=None if failed else round(rng.gauss(top1, 0.3), 3),
            train_time_s=180.0,
        )
        job = root / str(i)
        job.mkdir(parents=True)
        (job / "record.json").write_text(json.dumps(rec))
    return root


def time_report(sweep_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "csp_ablate.report", str(sweep_dir)], cwd=REPO, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    small, large = (100, 1000) if QUICK else (1000, 10000)
    repeats = 1 if QUICK else 3
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {n: make_sweep(Path(tmp) / str(n), n) for n in (small, large)}
        times = {n: [] for n in dirs}
        for _ in range(repeats):
            for n, d in dirs.items():
                times[n].append(time_report(d))
    t_small, t_large = statistics.median(times[small]), statistics.median(times[large])
    ratio = t_large / t_small
    passed = ratio <= 10 and t_large < 30
    rows = [{"records": n, "seconds": round(statistics.median(t), 3), "repeats": repeats} for n, t in times.items()]
    for r in rows:
        r.update(ratio_large_small=round(ratio, 2), target="ratio <= 10 and large < 30 s", passed=passed)
    write_result("report_scaling", rows,
                 f"report on {small} records {t_small:.2f}s, on {large} {t_large:.2f}s: x{ratio:.1f} "
                 f"(target <= 10x and < 30 s: {'pass' if passed else 'FAIL'})")


if __name__ == "__main__":
    main()
