"""Report scaling: `python -m csp_ablate.report` on 2,000 vs 20,000 synthetic records.

The records are Table 1-shaped (13 rows, many seeds, a few failed jobs), written as one
`<job>/record.json` each, exactly like a sweep dir. The command runs in a subprocess, as a user
runs it (imports included). Targets (issue 8): ten times the records in about ten times the
time (linear, judged on the marginal times below) and the large sweep under 30 s.

The ratio is of the *marginal* times, each minus the time on a 39-record sweep (3 seeds per row,
so that it runs every code path the large ones run: pooled variances, power and seeds-needed
searches): about 1.2 s of every run is interpreter start-up and imports, and a ratio of whole wall
times stays small even for a quadratic report (0.06 s of work on 1,000 records would become 6 s
on 10,000, yet 7.2 s / 1.26 s reads x5.7). Linear work gives a marginal ratio of ~10, quadratic
~100, so the target is <= 20 (room for n log n and noise). The sizes are 2,000 / 20,000 (not
1,000 / 10,000) so the small sweep's marginal time stands clear of start-up noise. Repeats: 5,
interleaved, the order of the sizes alternating.
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


TARGET_RATIO, TARGET_LARGE_S = 20.0, 30.0
BASE = 3 * len(ROWS)  # the base sweep: 3 seeds per row, every code path of the report runs


def main() -> None:
    small, large = (100, 1000) if QUICK else (2000, 20000)
    base = BASE
    repeats = 1 if QUICK else 5
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {n: make_sweep(Path(tmp) / str(n), n) for n in (base, small, large)}
        times = {n: [] for n in dirs}
        for rep in range(repeats):  # interleaved; the order alternates so a drift favours no size
            for n in (list(dirs) if rep % 2 == 0 else list(dirs)[::-1]):
                times[n].append(time_report(dirs[n]))
    rows, text = summarize(times, base, small, large)
    write_result("report_scaling", rows, text)


def summarize(times: dict[int, list[float]], base: int, small: int, large: int) -> tuple[list[dict], str]:
    """Median times, the marginal ratio (large - base) / (small - base) and the verdict."""
    med = {n: statistics.median(t) for n, t in times.items()}
    m_small, m_large = med[small] - med[base], med[large] - med[base]
    ratio = m_large / m_small if m_small > 0 else float("inf")
    passed = ratio <= TARGET_RATIO and med[large] < TARGET_LARGE_S
    target = f"marginal ratio <= {TARGET_RATIO:g} (linear ~10, quadratic ~100) and large < {TARGET_LARGE_S:g} s"
    rows = [{"records": n, "seconds": round(med[n], 3), "seconds_min": round(min(t), 3), "seconds_max": round(max(t), 3),
             "marginal_s": round(med[n] - med[base], 3), "repeats": len(t), "marginal_ratio": round(ratio, 2),
             "target": target, "passed": passed} for n, t in times.items()]
    text = (f"report on {base} records {med[base]:.2f}s (start-up and fixed costs), on {small} {med[small]:.2f}s, on {large} "
            f"{med[large]:.2f}s: marginal x{ratio:.1f} for x{large // small} records, median of {len(times[large])} "
            f"interleaved repeat(s) (target: {target}: {'pass' if passed else 'FAIL'})")
    return rows, text


if __name__ == "__main__":
    main()
