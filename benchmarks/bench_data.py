"""Data pipeline: batches/s the datamodule delivers alone vs batches/s training consumes.

Target (issue 8): the datamodule is >= 10x faster than the training step, so no core waits
for data. Measured on the proxy configuration (Fashion-MNIST, 32x32, 3 channels, batch 128,
default model), and for detection on the Table 2 proxy configuration (fashion_det, 128x128,
batch 32, CSPPeleeNet + EFM + YOLOv3 loss). In quick mode fashion_det is generated small
into a temporary cache.
"""

from __future__ import annotations

import time

from benchmarks.bench_overhead import _compose
from benchmarks.common import QUICK, write_result

TARGET = 10.0


def loader_batches_per_s(loader, n: int) -> float:
    it = iter(loader)
    next(it)  # first batch may pay one-off costs
    start = time.perf_counter()
    for _ in range(n):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
    return n / (time.perf_counter() - start)


def train_steps_per_s(cfg, dm, n: int) -> float:
    import torch
    import torch.nn.functional as F

    from csp_ablate.train import build_model

    model = build_model(cfg, num_classes=cfg.data.num_classes, in_chans=cfg.data.channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = next(iter(dm.train_dataloader()))
    for _ in range(2):  # warm-up
        F.cross_entropy(model(x), y).backward()
    start = time.perf_counter()
    for _ in range(n):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start)


def detection_steps_per_s(cfg, dm, n: int) -> float:
    import torch

    from csp_ablate.models.heads import YoloLoss
    from csp_ablate.train import build_task_model

    model, _, _ = build_task_model(cfg, dm, rank_zero=False)
    loss_fn = YoloLoss(model.anchors, dm.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x, targets, _ = next(iter(dm.train_dataloader()))
    for _ in range(2):  # warm-up
        loss_fn(model(x), targets, x.shape[-1])["loss"].backward()
    start = time.perf_counter()
    for _ in range(n):
        loss = loss_fn(model(x), targets, x.shape[-1])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start)


def _row(name: str, cfg, data_rate: float, train_rate: float) -> dict:
    ratio = data_rate / train_rate
    return {"datamodule": name, "model": cfg.model.name, "batch": cfg.data.batch_size,
            "img_size": cfg.data.img_size, "data_batches_s": round(data_rate, 1),
            "train_batches_s": round(train_rate, 2), "ratio": round(ratio, 1), "target": TARGET,
            "passed": ratio >= TARGET}


def main() -> None:
    import tempfile

    from hydra.utils import instantiate

    n_data, n_train = (50, 5) if QUICK else (400, 30)
    cfg = _compose("output_dir=/tmp/unused")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    rows = [_row("fashion_mnist", cfg, loader_batches_per_s(dm.train_dataloader(), n_data),
                 train_steps_per_s(cfg, dm, n_train))]
    with tempfile.TemporaryDirectory() as tmp:
        det_args = ["task=detection", "output_dir=/tmp/unused"]
        det_args += [f"data.cache_dir={tmp}", "data.n_train=256", "data.n_val=32"] if QUICK else []
        det_cfg = _compose(*det_args)
        det = instantiate(det_cfg.data)
        det.prepare_data()
        det.setup("fit")
        n_det_train = 2 if QUICK else 10
        rows.append(_row("fashion_det", det_cfg, loader_batches_per_s(det.train_dataloader(), n_data),
                         detection_steps_per_s(det_cfg, det, n_det_train)))
    summary = "; ".join(
        f"{r['datamodule']} delivers {r['data_batches_s']:.0f} batches/s vs training consumes "
        f"{r['train_batches_s']:.2f}/s: x{r['ratio']:.0f}" for r in rows)
    ok = all(r["passed"] for r in rows)
    write_result("data_pipeline", rows, f"{summary} (target >= {TARGET:.0f}: {'pass' if ok else 'FAIL'})")


if __name__ == "__main__":
    main()
