"""Data pipeline: batches/s the datamodule delivers alone vs batches/s training consumes.

Target (issue 8): the datamodule is >= 10x faster than the training step, so no core waits
for data. Measured on the proxy configuration (Fashion-MNIST, 32x32, 3 channels, batch 128,
default model). The detection datamodule (fashion-det) joins this table when it exists.
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


def main() -> None:
    from hydra.utils import instantiate

    n_data, n_train = (50, 5) if QUICK else (400, 30)
    cfg = _compose("output_dir=/tmp/unused")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    data_rate = loader_batches_per_s(dm.train_dataloader(), n_data)
    train_rate = train_steps_per_s(cfg, dm, n_train)
    ratio = data_rate / train_rate
    rows = [{"datamodule": "fashion_mnist", "model": cfg.model.name, "batch": cfg.data.batch_size,
             "img_size": cfg.data.img_size, "data_batches_s": round(data_rate, 1),
             "train_batches_s": round(train_rate, 2), "ratio": round(ratio, 1), "target": TARGET,
             "passed": ratio >= TARGET}]
    write_result("data_pipeline", rows,
                 f"fashion_mnist delivers {data_rate:.0f} batches/s vs training consumes {train_rate:.1f}/s: "
                 f"x{ratio:.0f} (target >= {TARGET:.0f}: {'pass' if ratio >= TARGET else 'FAIL'})")


if __name__ == "__main__":
    main()
