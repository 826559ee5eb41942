"""ImageFolder input pipeline: decoded, cropped images/s against the number of loader workers.

The paper tier's loader (csp_ablate.data.imagefolder, data=imagenet) on a generated set of
ImageNet-sized JPEGs (500x375, quality 90, about the size of an average ImageNet image):
PIL decode + RandomResizedCrop(224) + flip for training, resize(256) + center crop(224) for
evaluation, collated into uint8 batches, no model. Use it to size ``data.num_workers`` for a
GPU node: a GPU step needs ``batch / step time`` images/s, e.g. PeleeNet at batch 128 and
~0.1 s per step needs ~1,300 images/s per GPU.

Each setting iterates the loader once to start its workers (timed separately as
``startup_s``), then times full passes. The main process uses one torch thread, as each
DataLoader worker does, so the 0-worker row is the one-core rate. A 2-core machine shared with
other jobs caps the scaling at 2 workers: the figures there are about the per-worker rate.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import QUICK, write_result

SRC_W, SRC_H = 500, 375


def make_jpegs(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """Smooth colour gradients plus noise: JPEGs that decode like photos, not like flat fills."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SRC_H, 0:SRC_W].astype(np.float32)
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a, b, c = rng.uniform(0.2, 1.0, 3)
                img = np.stack([
                    127 + 100 * np.sin(xx / (40 * a) + k), 127 + 100 * np.cos(yy / (30 * b) + i),
                    127 + 100 * np.sin((xx + yy) / (50 * c)),
                ], axis=-1) + rng.normal(0, 12, (SRC_H, SRC_W, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i}.JPEG", quality=90)
    return root


def measure(root: Path, classes: int, workers: int, split: str, batch: int, passes: int) -> dict:
    from csp_ablate.data.imagefolder import ImageNetDataModule

    dm = ImageNetDataModule(root=str(root), num_classes=classes, batch_size=batch, eval_batch_size=batch,
                            num_workers=workers, pin_memory=False)
    dm.setup("fit")
    loader = dm.train_dataloader() if split == "train" else dm.test_dataloader()
    start = time.perf_counter()
    for _ in loader:  # starts the (persistent) workers
        pass
    startup = time.perf_counter() - start
    times, images = [], 0
    for _ in range(passes):
        start = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        times.append(time.perf_counter() - start)
        images = n
    seconds = statistics.median(times)
    return {"split": split, "workers": workers, "batch_size": batch, "images_per_pass": images, "passes": passes,
            "startup_s": round(startup, 2), "pass_s": round(seconds, 3), "images_per_s": round(images / seconds, 1),
            "src_size": f"{SRC_W}x{SRC_H}", "crop": 224}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    classes, per_class, batch, passes = (2, 32, 16, 1) if QUICK else (4, 64, 32, 3)
    worker_counts = [0, 1, 2] if QUICK else [0, 1, 2, 4]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpegs(Path(tmp), classes, per_class)
        for split in ("train", "val"):
            for workers in worker_counts:
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # before this measurement
                rows.append({**measure(root, classes, workers, split, batch, passes), "load_avg_1m": load,
                             "note": "shared machine: compare rows of one run only"})
    base = {r["split"]: r["images_per_s"] for r in rows if r["workers"] == 0}
    for r in rows:
        r["speedup_vs_0_workers"] = round(r["images_per_s"] / base[r["split"]], 2)
    best = {s: max((r for r in rows if r["split"] == s), key=lambda r: r["images_per_s"]) for s in ("train", "val")}
    write_result(
        "imagefolder", rows,
        "; ".join(f"{s}: {best[s]['images_per_s']:.0f} img/s at {best[s]['workers']} workers "
                  f"({next(r['images_per_s'] for r in rows if r['split'] == s and r['workers'] == 0):.0f} in-process)"
                  for s in ("train", "val"))
        + f" ({SRC_W}x{SRC_H} JPEG -> 224 crops, uint8 batches)",
    )


if __name__ == "__main__":
    main()
