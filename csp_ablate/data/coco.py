"""COCO-format detection data: the one loader for real COCO 2017 and the ``fashion_det`` proxy set.

Why one code path: the proxy tier must exercise exactly what the paper tier runs, so the
generated proxy set is written in COCO's own format and read by this module, and AP is computed
by pycocotools against the same JSON (:mod:`csp_ablate.coco_eval`).

Geometry (letterbox): every image is resized keeping its aspect ratio so that its longer side
is ``img_size``, then padded with 0 to ``img_size x img_size``, centered. Boxes are returned in
network-input pixels; ``meta`` keeps ``scale`` and ``pad`` so detections map back to the
original image (``x_orig = (x - pad_x) / scale``). Images come as float32 in [0, 1] (no
mean/std: the detector's stem sees what darknet feeds YOLO). ``channels=3`` replicates grey
images, ``channels=1`` converts colour images to luminance.

Splits: COCO has no labelled test split (test-dev is scored by the COCO server only), so both
``val_dataloader`` and ``test_dataloader`` serve the val split; ``val_coco`` is the ground truth
restricted to the images actually served, so AP is never diluted by images not evaluated.

Bad data, and what happens:

* missing annotation file, image dir or image file -> :class:`ConfigError` naming the path and
  the fix (``data.root=...``; for ``data=fashion_det`` the set is generated on first use);
* annotation JSON that is not JSON, or has no ``annotations`` key -> :class:`ConfigError` naming
  the file (image-info files such as ``image_info_test-dev2017.json`` have no labels and cannot
  be used for training or validation);
* undecodable/truncated image, or one whose size disagrees with the JSON -> :class:`ConfigError`
  naming the file (raised when the image is first decoded: at setup with ``cache_images``);
* boxes partly outside the image are clipped; boxes with zero area (after clipping) and crowd
  boxes (``iscrowd=1``) are dropped from the training targets (counts logged once per split at
  setup; ``val_coco`` keeps them, COCOeval treats crowd boxes as "ignore" regions);
* images without any box are kept as negatives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from csp_ablate.data.coco_json import COCO_FIX as _COCO_FIX
from csp_ablate.data.coco_json import load_coco, restrict_coco, subset_ids  # noqa: F401  (re-exported)
from csp_ablate.data.sampling import ResumableTrainOrder, item_generator, loader_generator
from csp_ablate.errors import ConfigError

log = logging.getLogger(__name__)

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class _Record:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [n, 5]: class index, x1, y1, x2, y2 in original pixels


def letterbox_params(width: int, height: int, img_size: int) -> tuple[float, int, int, int, int]:
    """``(scale, new_w, new_h, pad_x, pad_y)``: longer side to ``img_size``, centered padding."""
    scale = img_size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, new_w, new_h, (img_size - new_w) // 2, (img_size - new_h) // 2


class CocoDetectionDataset(Dataset):
    """One split of a COCO-format detection set, letterboxed to ``img_size``.

    Item: ``(image float32 [C,S,S] in [0,1], boxes float32 [n,5] = (class, x1, y1, x2, y2) in
    network-input pixels, meta {image_id, scale, pad: (px, py), orig_size: (w, h)})``.

    ``keep_coco=False`` frees the pycocotools index once the per-image box arrays are built
    (train2017's dicts take GBs, and forked workers would copy them as refcounts touch pages).

    ``hflip`` flips with p=0.5: a training item ``(index, sample_seed)`` draws from its own seed
    (exact resume, any ``num_workers``); a plain index from ``generator`` or torch's global RNG.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        img_size: int,
        channels: int = 3,
        *,
        hflip: bool = False,
        cache_images: bool = False,
        subset: int | None = None,
        subset_seed: int = 0,
        generator: torch.Generator | None = None,
        coco=None,
        keep_coco: bool = True,
        fix: str = _COCO_FIX,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError.bad_value("data.channels", channels, (1, 3))
        if not isinstance(img_size, int) or img_size < 1:
            raise ConfigError.bad_value("data.img_size", img_size, "a positive integer")
        self.images_dir, self.annotation_file = Path(images_dir), Path(annotation_file)
        self.img_size, self.channels, self.hflip, self.generator, self._fix = img_size, channels, hflip, generator, fix
        self.coco = coco if coco is not None else load_coco(self.annotation_file, fix)
        if not self.images_dir.is_dir():
            raise ConfigError(f"COCO image directory {self.images_dir} not found. {fix}")
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        self.class_names: list[str] = [self.coco.cats[c].get("name", str(c)) for c in self.category_ids]
        self.cat_to_index = {c: i for i, c in enumerate(self.category_ids)}
        self.image_ids: list[int] = subset_ids(sorted(self.coco.getImgIds()), subset, subset_seed)
        self.records = self._build_records()
        if not keep_coco:  # the training split needs only the records: free the JSON's dicts
            self.coco = None
        self._cache: torch.Tensor | list[torch.Tensor] | None = self._decode_all() if cache_images else None

    # ---- annotations ----------------------------------------------------------------------
    def _build_records(self) -> list[_Record]:
        crowd = empty = clipped = kept = 0
        records = []
        for image_id in self.image_ids:
            info = self.coco.imgs[image_id]
            w, h = int(info["width"]), int(info["height"])
            rows = []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0):
                    crowd += 1
                    continue
                if ann["category_id"] not in self.cat_to_index:
                    raise ConfigError(
                        f"COCO annotation file {self.annotation_file}: annotation {ann.get('id')} has "
                        f"category_id {ann['category_id']}, which is not in its 'categories' list."
                    )
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                box = np.clip([x, y, x + bw, y + bh], 0.0, [w, h, w, h])
                if box[2] <= box[0] or box[3] <= box[1]:
                    empty += 1
                    continue
                clipped += not np.allclose(box, [x, y, x + bw, y + bh])
                rows.append([self.cat_to_index[ann["category_id"]], *box])
            kept += len(rows)
            boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
            records.append(_Record(image_id, self.images_dir / info["file_name"], w, h, boxes))
        negatives = sum(len(r.boxes) == 0 for r in records)
        log.info(
            "COCO %s: %d images (%d without boxes), %d boxes; clipped %d partly outside, dropped %d crowd "
            "and %d zero-area boxes", self.annotation_file.name, len(records), negatives, kept, clipped, crowd, empty,
        )
        return records

    def boxes_wh(self) -> torch.Tensor:
        """Widths/heights [N, 2] of all boxes in network-input pixels (for k-means anchors)."""
        parts = [
            (r.boxes[:, 3:5] - r.boxes[:, 1:3]) * letterbox_params(r.width, r.height, self.img_size)[0]
            for r in self.records if len(r.boxes)
        ]
        return torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)).float()

    # ---- images ---------------------------------------------------------------------------
    def _decode(self, rec: _Record) -> torch.Tensor:
        """Decode + letterbox one image to uint8 [c, S, S] (c = 1 for grey, 3 for colour)."""
        from PIL import Image

        if not rec.path.is_file():
            raise ConfigError(
                f"Image file {rec.path} (image_id {rec.image_id} of {self.annotation_file}) not found. {self._fix}"
            )
        try:
            with Image.open(rec.path) as img:
                img.load()
                grey = self.channels == 1 or img.mode in _GREY_MODES
                img = img.convert("L" if grey else "RGB")
        except (OSError, SyntaxError, ValueError) as err:  # PIL reports broken files with all three
            raise ConfigError(f"Cannot decode image {rec.path}: {err}. Remove or replace the file.") from err
        if img.size != (rec.width, rec.height):
            raise ConfigError(
                f"Image {rec.path} is {img.size[0]}x{img.size[1]} but {self.annotation_file} says "
                f"{rec.width}x{rec.height}: the image and the annotation file do not belong together."
            )
        _, new_w, new_h, px, py = letterbox_params(rec.width, rec.height, self.img_size)
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), Image.BILINEAR)
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        arr = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
        if new_w == new_h == self.img_size:
            return arr.contiguous()
        out = torch.zeros((arr.shape[0], self.img_size, self.img_size), dtype=torch.uint8)
        out[:, py : py + new_h, px : px + new_w] = arr
        return out

    def _decode_all(self) -> torch.Tensor | list[torch.Tensor]:
        start = time.perf_counter()
        images = [self._decode(rec) for rec in self.records]
        if images and len({im.shape for im in images}) == 1:
            images = torch.stack(images)  # one block: cheap to index, one storage to share with workers
        log.info("COCO %s: cached %d images in %.1fs", self.annotation_file.name, len(images), time.perf_counter() - start)
        return images

    # ---- items ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        index, sample_seed = item if isinstance(item, tuple) else (item, None)  # train: (i, seed)
        generator = item_generator(sample_seed) if sample_seed is not None else self.generator
        rec = self.records[index]
        img = self._cache[index] if self._cache is not None else self._decode(rec)
        if img.shape[0] != self.channels:
            img = img.expand(self.channels, -1, -1)
        image = img.float().div_(255.0)  # a fresh contiguous tensor, never a view of the cache
        scale, _, _, px, py = letterbox_params(rec.width, rec.height, self.img_size)
        boxes = torch.from_numpy(rec.boxes.copy())
        boxes[:, 1:] = boxes[:, 1:] * scale + torch.tensor([px, py, px, py], dtype=torch.float32)
        if self.hflip and torch.rand(1, generator=generator).item() < 0.5:
            image = image.flip(-1)
            boxes[:, [1, 3]] = self.img_size - boxes[:, [3, 1]]
        meta = {"image_id": rec.image_id, "scale": scale, "pad": (px, py), "orig_size": (rec.width, rec.height)}
        return image, boxes, meta


def collate_detection(batch) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """``(images [B,C,S,S], targets [N,6] = (batch_index, class, x1, y1, x2, y2), metas)``."""
    images, boxes, metas = zip(*batch)
    targets = [torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
    return torch.stack(images), torch.cat(targets).reshape(-1, 6), list(metas)


class CocoDataModule(ResumableTrainOrder, L.LightningDataModule):
    """COCO-format train/val splits (``data=coco``); test = val (COCO has no labelled test split)."""

    dataset_fix = _COCO_FIX  # subclasses say how *their* files come about

    def __init__(
        self,
        root: str | None = None,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        img_size: int = 416,
        channels: int = 3,
        num_classes: int = 80,
        batch_size: int = 64,
        eval_batch_size: int = 64,
        num_workers: int = 4,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        split_seed: int = 0,
        hflip: bool = True,
        cache_images: bool = False,
        download: bool = False,
    ) -> None:
        super().__init__()
        # checked in setup(), not here: Hydra wraps constructor errors, hiding the clear message
        self.root = Path(root).expanduser() if root else None
        self.train_images, self.train_annotations = train_images, train_annotations
        self.val_images, self.val_annotations = val_images, val_annotations
        self.img_size, self.channels, self.num_classes = img_size, channels, num_classes
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.train_subset, self.eval_subset, self.split_seed = train_subset, eval_subset, split_seed
        self.hflip, self.cache_images, self.download = hflip, cache_images, download
        self.category_ids: list[int] = []
        self.class_names: list[str] = []
        self.train_set: CocoDetectionDataset | None = None
        self.val_set: CocoDetectionDataset | None = None
        self.val_coco = None

    def _check_root(self) -> Path:
        if self.download:
            raise ConfigError(
                "data.download=true: COCO is never downloaded automatically (about 20 GB). " + _COCO_FIX
                + " Then set data.download=false."
            )
        if self.root is None:
            raise ConfigError(f"data=coco needs data.root=<dir>. {_COCO_FIX}")
        if not self.root.is_dir():
            raise ConfigError(f"COCO data.root={self.root} does not exist. {_COCO_FIX}")
        return self.root

    def prepare_data(self) -> None:
        """Fail fast (before a W&B run opens) on a missing root, image dir or annotation file."""
        root = self._check_root()
        for rel in (self.train_images, self.val_images, self.train_annotations, self.val_annotations):
            if not (root / rel).exists():
                raise ConfigError(f"COCO file or directory {root / rel} does not exist. {_COCO_FIX}")

    def _split(self, images: str, annotations: str, train: bool) -> CocoDetectionDataset:
        root = self._check_root()
        return CocoDetectionDataset(
            root / images, root / annotations, self.img_size, self.channels,
            hflip=train and self.hflip, cache_images=self.cache_images,
            subset=self.train_subset if train else self.eval_subset, subset_seed=self.split_seed,
            keep_coco=not train, fix=self.dataset_fix,
        )

    def _check_classes(self, ds: CocoDetectionDataset) -> None:
        if len(ds.category_ids) != self.num_classes:
            raise ConfigError.bad_value(
                "data.num_classes", self.num_classes, (len(ds.category_ids),),
                f"{ds.annotation_file} lists {len(ds.category_ids)} categories.",
            )
        if self.category_ids and ds.category_ids != self.category_ids:
            raise ConfigError(
                f"{ds.annotation_file} lists category ids {ds.category_ids[:10]}... but the other split "
                f"lists {self.category_ids[:10]}...: train and val need the same categories."
            )
        self.category_ids, self.class_names = ds.category_ids, ds.class_names

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = self._split(self.val_images, self.val_annotations, train=False)
            self._check_classes(self.val_set)
            self.val_coco = restrict_coco(self.val_set.coco, self.val_set.image_ids)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._split(self.train_images, self.train_annotations, train=True)
            self._check_classes(self.train_set)

    def train_boxes_wh(self) -> torch.Tensor:
        """Training box widths/heights [N, 2] in network-input pixels (k-means anchors)."""
        if self.train_set is None:
            self.setup("fit")
        return self.train_set.boxes_wh()

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        common = {"collate_fn": collate_detection, "num_workers": self.num_workers,
                  "persistent_workers": self.num_workers > 0, "generator": loader_generator(self.train_seed)}
        if train:  # order and flips = f(seed, epoch, position), resumable mid-epoch (data/sampling.py)
            order = self.train_batch_sampler(len(dataset), batch_size, with_seeds=True)
            return DataLoader(dataset, batch_sampler=order, **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """The val split again: COCO's test-dev has no public labels (see the module docstring)."""
        if self.val_set is None:
            self.setup("test")
        return self._loader(self.val_set, self.eval_batch_size, train=False)
