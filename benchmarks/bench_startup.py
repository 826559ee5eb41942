"""Start-up cost: `python -m csp_ablate --help` / `--cfg job` vs a bare @hydra.main app.

Target (issue 8): ≤ 1.2x the bare app on the same conf/ tree, and none of torch, lightning,
timm, wandb imported (the latter is asserted in tests/test_cli.py). Hydra's own cost (its
`--help` composes every config group option) is the floor we are measured against.
"""

from __future__ import annotations

import statistics
import sys

from benchmarks.common import QUICK, REPO, run_cmd_time, write_result

TARGET = 1.2


def main() -> None:
    repeats = 3 if QUICK else 10
    py = sys.executable
    rows = []
    for flag in (["--help"], ["--cfg", "job"]):
        ours, bare = [], []
        ours_cmd = [py, "-m", "csp_ablate", *flag]
        bare_cmd = [py, str(REPO / "benchmarks" / "_bare_hydra_app.py"), *flag]
        run_cmd_time(ours_cmd), run_cmd_time(bare_cmd)  # warm the file cache for both, untimed
        for rep in range(repeats):  # interleaved, the order alternating, so drift hits both equally
            if rep % 2 == 0:
                ours.append(run_cmd_time(ours_cmd)), bare.append(run_cmd_time(bare_cmd))
            else:
                bare.append(run_cmd_time(bare_cmd)), ours.append(run_cmd_time(ours_cmd))
        ratio = statistics.median(ours) / statistics.median(bare)
        rows.append({
            "command": " ".join(flag), "csp_ablate_s": round(statistics.median(ours), 4),
            "bare_hydra_s": round(statistics.median(bare), 4), "ratio": round(ratio, 3),
            "target": TARGET, "passed": ratio <= TARGET, "repeats": repeats,
        })
    summary = "; ".join(f"`{r['command']}` {r['csp_ablate_s']:.2f}s vs bare Hydra {r['bare_hydra_s']:.2f}s "
                        f"(x{r['ratio']:.2f}, target <= {TARGET}: {'pass' if r['passed'] else 'FAIL'})" for r in rows)
    write_result("startup", rows, summary)


if __name__ == "__main__":
    main()
