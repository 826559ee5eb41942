"""``data=fashion_det``: a small COCO-format detection set generated from Fashion-MNIST.

Why: the proxy tier needs detection data that is always there (no 20 GB COCO download), small
enough to train on a CPU, and still exercises what the paper's detection ablation is about:
objects at three scales, so all three detection strides (8/16/32) of a YOLOv3-style head matter.
Everything downstream (loader, AP) is the real-COCO code path: the set is written in COCO's own
format and read by :class:`csp_ablate.data.coco.CocoDataModule`.

The recipe (:func:`generate_fashion_det`): ``canvas x canvas`` grey canvases (black background),
each with ``min_items..max_items`` Fashion-MNIST items. Each item is resized (PIL bilinear) to a
side drawn from one of three scale bands (default small 12-22, medium 26-44, large 52-84 px at
canvas 128, scaled with the canvas; band chosen uniformly), pasted with max-blending at a random
position; a placement whose box IoU with an already placed item exceeds 0.3, or that covers (or
is covered by) more than half of one (a small item inside a large one would vanish under
max-blending), is retried a few times, then the item is skipped (so a canvas may hold fewer
than ``min_items``). The COCO box is
the tight box of the item's pixels above a small threshold (a trouser is narrow, not a square);
``area`` is the box area. Train canvases draw items from Fashion-MNIST's train split, val
canvases from its t10k split, so no item is shared (each annotation records ``fmnist_index``
and each image ``fmnist_split``). Categories: Fashion-MNIST's 10 class names, ids 1..10.

Determinism: the same parameters and seed (``data.seed``, the *data* seed, independent of the
run's ``seed``) give byte-identical JSON and PNGs. The set lives in
``<cache_dir>/fashion_det/<hash of the parameters and of the Fashion-MNIST label files>/`` and
is generated on first use by ``prepare_data()`` (under a file lock, into a temp dir renamed
atomically: a killed generation never leaves a half set behind), then reused.

Cost (defaults: 12000 train + 2000 val canvases of 128 px, 46k + 7.7k boxes), measured on the
project's 2-core dev machine at nice 19 while a training sweep held both cores: generation
~11 s wall (9.5 s CPU), 52 MB on disk; decoding it into memory at setup (``cache_images``,
~230 MB uint8) ~3.3 s; one pass over the training loader (batch 32, no workers) ~1.1 s
(~340 batches/s), i.e. data loading is negligible next to any detector step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csp_ablate.data.coco import CocoDataModule
from csp_ablate.data.fashion_mnist import (
    _FIX as _FMNIST_FIX,
    CLASSES,
    DEFAULT_ROOT,
    FILES,
    _find,
    download_fashion_mnist,
    load_fashion_mnist,
)
from csp_ablate.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the recipe changes: the cache hash changes with it
DEFAULT_BANDS_128 = ((12, 22), (26, 44), (52, 84))  # item side ranges (px) at canvas 128
MAX_IOU = 0.3  # placements overlapping an earlier item's box more than this are retried
MAX_COVER = 0.5  # ... and so are placements covering (or covered by) more than half of one
RETRIES = 10
PIXEL_THRESHOLD = 20  # uint8 level above which a resized item pixel belongs to its tight box


def default_bands(canvas: int) -> list[list[int]]:
    """The three default scale bands, scaled from canvas 128 to ``canvas``."""
    return [[max(1, round(lo * canvas / 128)), max(1, round(hi * canvas / 128))] for lo, hi in DEFAULT_BANDS_128]


def _validate(n_train: int, n_val: int, canvas: int, min_items: int, max_items: int, bands) -> list[list[int]]:
    for key, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError.bad_value(f"data.{key}", value, "a positive integer")
    if isinstance(canvas, bool) or not isinstance(canvas, int) or canvas < 16:
        raise ConfigError.bad_value("data.canvas", canvas, "an integer >= 16")
    if not (isinstance(min_items, int) and isinstance(max_items, int) and 1 <= min_items <= max_items):
        raise ConfigError.bad_value(
            "data.min_items/max_items", (min_items, max_items), "integers with 1 <= min_items <= max_items"
        )
    bands = default_bands(canvas) if bands is None else [[int(lo), int(hi)] for lo, hi in bands]
    if not bands or any(not 1 <= lo <= hi <= canvas for lo, hi in bands):
        raise ConfigError.bad_value("data.bands", bands, f"[[lo, hi], ...] with 1 <= lo <= hi <= canvas ({canvas})")
    return bands


def _overlaps(box: np.ndarray, others: np.ndarray) -> bool:
    """Whether xyxy ``box`` overlaps a row of ``others`` [n, 4] too much to place it.

    IoU > MAX_IOU, or one box covered more than MAX_COVER by the other: IoU alone lets a small
    item land inside a large one, where max-blending hides it -- an invisible, unlearnable box.
    """
    if not len(others):
        return False
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    a, b = area(box), area(others)
    return bool(((inter / (a + b - inter)) > MAX_IOU).any() or ((inter / np.minimum(a, b)) > MAX_COVER).any())


def _item_stream(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Source indices without repetition until the pool is used up, then a fresh permutation."""
    while True:
        yield from rng.permutation(n).tolist()


def _make_split(
    images: np.ndarray, labels: np.ndarray, n: int, canvas: int, min_items: int, max_items: int,
    bands: list[list[int]], rng: np.random.Generator, image_dir: Path, fmnist_split: str,
) -> dict[str, list]:
    from PIL import Image

    stream = _item_stream(len(images), rng)
    coco_images, annotations = [], []
    for i in range(n):
        img = np.zeros((canvas, canvas), dtype=np.uint8)
        placed = np.zeros((0, 4), dtype=np.float64)
        for _ in range(int(rng.integers(min_items, max_items + 1))):
            src = next(stream)
            lo, hi = bands[int(rng.integers(len(bands)))]
            side = int(rng.integers(lo, hi + 1))
            item = np.asarray(Image.fromarray(images[src]).resize((side, side), Image.BILINEAR))
            ys, xs = np.nonzero(item > PIXEL_THRESHOLD)
            if len(xs) == 0:
                continue
            tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
            for _attempt in range(RETRIES):
                x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
                box = tight + [x, y, x, y]
                if _overlaps(box, placed):
                    continue
                np.maximum(img[y : y + side, x : x + side], item, out=img[y : y + side, x : x + side])
                placed = np.vstack([placed, box])
                bx, by, bw, bh = int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1])
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(labels[src]) + 1,
                    "bbox": [bx, by, bw, bh], "area": bw * bh, "iscrowd": 0, "fmnist_index": src,
                })
                break
        name = f"{i + 1:06d}.png"
        Image.fromarray(img).save(image_dir / name, format="PNG", compress_level=1)
        coco_images.append({"id": i + 1, "file_name": name, "width": canvas, "height": canvas, "fmnist_split": fmnist_split})
    return {"images": coco_images, "annotations": annotations}


def generate_fashion_det(
    fmnist_root: str | Path,
    out_dir: str | Path,
    *,
    n_train: int = 12000,
    n_val: int = 2000,
    canvas: int = 128,
    min_items: int = 2,
    max_items: int = 6,
    bands: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
) -> Path:
    """Write the proxy detection set (COCO format) to ``out_dir``; returns ``out_dir``.

    Layout: ``annotations/instances_{train,val}.json``, ``images/{train,val}/*.png`` (1-channel),
    ``generation.json`` (the parameters). Written into a temp dir next to ``out_dir`` and renamed
    into place; an existing ``out_dir`` is an error (the caller decides about reuse).
    """
    bands = _validate(n_train, n_val, canvas, min_items, max_items, bands)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: delete it to regenerate, or use another out_dir.")
    arrays = load_fashion_mnist(Path(fmnist_root))
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        categories = [{"id": k + 1, "name": name, "supercategory": "fashion"} for k, name in enumerate(CLASSES)]
        counts = {}
        for split_idx, (split, key, n) in enumerate((("train", "train", n_train), ("val", "test", n_val))):
            image_dir = tmp / "images" / split
            image_dir.mkdir(parents=True)
            rng = np.random.default_rng([seed, split_idx])
            fmnist_split = "train" if key == "train" else "t10k"
            parts = _make_split(
                arrays[f"{key}_images"], arrays[f"{key}_labels"], n, canvas, min_items, max_items, bands, rng,
                image_dir, fmnist_split,
            )
            dataset = {
                "info": {"description": f"fashion_det proxy detection set ({split}), from Fashion-MNIST {fmnist_split}",
                         "version": str(FORMAT_VERSION)},
                **parts,
                "categories": categories,
            }
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset, separators=(",", ":")))
            counts[split] = {"images": n, "boxes": len(parts["annotations"])}
        params = {"format_version": FORMAT_VERSION, "n_train": n_train, "n_val": n_val, "canvas": canvas,
                  "min_items": min_items, "max_items": max_items, "bands": bands, "seed": seed}
        (tmp / "generation.json").write_text(json.dumps({**params, "counts": counts}, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fashion_det: generated %s in %.1fs (%s)", out_dir, time.perf_counter() - start, counts)
    return out_dir


def _locate_fmnist(root: Path) -> Path:
    """Where the idx files are: root itself, or torchvision's download layout below it."""
    for cand in (root, root / "FashionMNIST" / "raw"):
        if all(_find(cand, s) is not None for s in FILES.values()):
            return cand
    return root


def default_cache_dir() -> Path:
    """``$CSP_ABLATE_CACHE`` or ``~/.cache/csp_ablate``."""
    return Path(os.environ.get("CSP_ABLATE_CACHE") or Path.home() / ".cache" / "csp_ablate").expanduser()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock: parallel sweep jobs generate a set once, not each."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class FashionDetDataModule(CocoDataModule):
    """The generated proxy detection set (``data=fashion_det``), read through the COCO loader."""

    dataset_fix = (
        "data=fashion_det generates this set on first use (prepare_data): delete the generated "
        "directory to regenerate it, or set data.cache_dir=<writable dir>."
    )

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        cache_dir: str | None = None,
        n_train: int = 12000,
        n_val: int = 2000,
        canvas: int = 128,
        min_items: int = 2,
        max_items: int = 6,
        bands: Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        img_size: int = 128,
        channels: int = 3,
        num_classes: int = 10,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        split_seed: int = 0,
        hflip: bool = True,
        cache_images: bool = True,
    ) -> None:
        super().__init__(
            root=None, train_images="images/train", train_annotations="annotations/instances_train.json",
            val_images="images/val", val_annotations="annotations/instances_val.json",
            img_size=img_size, channels=channels, num_classes=num_classes, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, train_subset=train_subset,
            eval_subset=eval_subset, split_seed=split_seed, hflip=hflip, cache_images=cache_images,
        )
        self.fmnist_root = Path(root).expanduser() if root else DEFAULT_ROOT
        self.fmnist_download = download
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.generation: dict[str, Any] = {
            "n_train": n_train, "n_val": n_val, "canvas": canvas, "min_items": min_items,
            "max_items": max_items, "bands": bands, "seed": seed,
        }

    def _source(self) -> Path:
        """The Fashion-MNIST dir; a clear error (as for data=fashion_mnist) when files are missing."""
        src = _locate_fmnist(self.fmnist_root)
        missing = [stem for stem in FILES.values() if _find(src, stem) is None]
        if missing:
            raise ConfigError(
                f"data=fashion_det is generated from Fashion-MNIST, not found in data.root={self.fmnist_root} "
                f"(missing {', '.join(m + '[.gz]' for m in missing)}). {_FMNIST_FIX}"
            )
        return src

    def dataset_dir(self) -> Path:
        """``<cache_dir>/fashion_det/<hash>``: the hash covers the recipe and the source's labels."""
        g = self.generation
        params = {**g, "bands": _validate(g["n_train"], g["n_val"], g["canvas"], g["min_items"], g["max_items"], g["bands"]),
                  "format_version": FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
        src = self._source()
        for stem in (FILES["train_labels"], FILES["test_labels"]):  # tiny files that tell sources apart
            digest.update(_find(src, stem).read_bytes())
        return self.cache_dir / "fashion_det" / digest.hexdigest()[:12]

    def _ensure_generated(self) -> Path:
        out = self.dataset_dir()
        if (out / "generation.json").is_file():
            return out
        with _file_lock(out.parent / f".{out.name}.lock"):
            if not (out / "generation.json").is_file():  # another job may have finished meanwhile
                for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed generation
                    shutil.rmtree(stale, ignore_errors=True)
                if out.exists():  # no generation.json: not ours or broken; never reuse half a set
                    shutil.rmtree(out)
                log.info("fashion_det: generating %s from %s", out, self.fmnist_root)
                generate_fashion_det(self._source(), out, **self.generation)
        return out

    def prepare_data(self) -> None:
        if self.fmnist_download and any(_find(_locate_fmnist(self.fmnist_root), s) is None for s in FILES.values()):
            download_fashion_mnist(self.fmnist_root)
        self._ensure_generated()

    def _check_root(self) -> Path:
        # setup() without prepare_data() (scripts, other ranks) still finds or makes the set
        return self._ensure_generated()
