"""Framework overhead: a `python -m csp_ablate` proxy job vs a minimal hand-written loop.

Same model, data pipeline, batch size, threads and precision. Throughput is measured
differentially: each side trains N1 and N2 steps and the rate is (N2 - N1) x batch / (t2 - t1),
so fixed costs (model build, W&B start, dataloader warm-up) cancel and what remains is the
per-step cost, Lightning's progress bar, logging and W&B (offline, as configured by default)
included. N2 - N1 = 200 steps (25-45 s of training here, by the host's speed), so the jitter of fixed costs inside
``fit`` (the background W&B start, the last checkpoint's write) is a few % of the difference,
not the ~10 % that 100 steps left. Target (issue 8): ratio >= 0.95.

Repeats: >= 5 in a full run (1 in quick mode), interleaved, with the order of the two sides
alternating between repeats so that a load drift favours neither. The verdict needs the median
ratio >= 0.95 *and* at most one repeat below it (a median of 3 passed with one repeat at 0.892;
a median of 5 would pass with two); the summary states the spread.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from benchmarks.common import QUICK, REPO, write_result

TARGET = 0.95


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def framework_fit_seconds(steps: int, out: str) -> float:
    """`train.run` as the CLI runs it (proxy tier, default W&B logger offline, progress bar)."""
    import os

    from csp_ablate.train import run

    os.environ.setdefault("WANDB_MODE", "offline")
    cfg = _compose(f"output_dir={out}", f"trainer.max_steps={steps}", "trainer.limit_val_batches=0",
                   "trainer.limit_test_batches=1", "profile.fps=false")
    return run(cfg)["train_time_s"]


def hand_loop_seconds(steps: int) -> float:
    """The same model, data and optimiser in a plain PyTorch loop."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from csp_ablate.train import build_model

    cfg = _compose("output_dir=/tmp/unused")
    torch.manual_seed(0)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = build_model(cfg, num_classes=cfg.data.num_classes, in_chans=cfg.data.channels)
    fmt = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format  # as the job does
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.task.lr, momentum=cfg.task.momentum,
                          weight_decay=cfg.task.weight_decay)
    model.train()
    start = time.perf_counter()
    done = 0
    while done < steps:
        for x, y in dm.train_dataloader():
            loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def main() -> None:
    n1, n2, repeats = (5, 25, 1) if QUICK else (20, 220, 5)
    batch = int(_compose("output_dir=/tmp/x").data.batch_size)
    rows = []
    for rep in range(repeats):  # interleave the two sides so machine drift hits both
        def framework() -> float:
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                return (n2 - n1) * batch / (framework_fit_seconds(n2, a) - framework_fit_seconds(n1, b))

        def hand() -> float:
            return (n2 - n1) * batch / (hand_loop_seconds(n2) - hand_loop_seconds(n1))

        if rep % 2 == 0:
            fw, hl, first = framework(), hand(), "framework"
        else:
            hl, fw, first = hand(), framework(), "hand_loop"
        rows.append({"repeat": rep, "first": first, "framework_img_s": round(fw, 1), "hand_loop_img_s": round(hl, 1),
                     "ratio": round(fw / hl, 3), "steps": f"{n1}->{n2}", "batch": batch})
    write_result("overhead", rows, summarize(rows))


def summarize(rows: list[dict]) -> str:
    """Verdict: median ratio >= TARGET and at most one repeat below it; adds the summary columns to ``rows``."""
    ratios = [r["ratio"] for r in rows]
    ratio = statistics.median(ratios)
    below = sum(x < TARGET for x in ratios)
    passed = ratio >= TARGET and below <= 1
    for r in rows:
        r.update(median_ratio=round(ratio, 3), min_ratio=min(ratios), max_ratio=max(ratios), below_target=below,
                 target=TARGET, passed=passed)
    return (f"csp_ablate job {statistics.median(r['framework_img_s'] for r in rows):.0f} img/s vs hand loop "
            f"{statistics.median(r['hand_loop_img_s'] for r in rows):.0f} img/s: median ratio {ratio:.3f} over "
            f"{len(ratios)} interleaved repeat(s), range {min(ratios):.3f}-{max(ratios):.3f}, {below} below "
            f"{TARGET} (target: median >= {TARGET} and at most one repeat below: {'pass' if passed else 'FAIL'})")


if __name__ == "__main__":
    main()
