"""COCO annotation files: read one with a clear error, restrict it to the evaluated images, and
pick a deterministic subset. Helpers of :mod:`csp_ablate.data.coco` (the data module
and dataset live there); :mod:`csp_ablate.coco_eval` scores against the objects built here.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from csp_ablate.errors import ConfigError

COCO_FIX = (
    "Expected the COCO 2017 layout <data.root>/train2017/, <data.root>/val2017/ and "
    "<data.root>/annotations/instances_{train,val}2017.json (download train2017.zip, val2017.zip and "
    "annotations_trainval2017.zip from https://cocodataset.org/#download and unzip them into data.root)."
)


def _quiet_coco(dataset: dict[str, Any]):
    """A pycocotools COCO over an in-memory dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(path: Path, fix: str = COCO_FIX):
    """Read a COCO ``instances_*.json``; clear errors name the file (and the fix)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"COCO annotation file {path} not found. {fix}")
    try:
        with open(path) as fh:
            dataset = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"COCO annotation file {path} is not readable JSON ({err}). Re-download or regenerate it.") from err
    if not isinstance(dataset, dict) or "images" not in dataset or "categories" not in dataset:
        raise ConfigError(
            f"COCO annotation file {path} has no 'images'/'categories' lists: not a COCO instances file."
        )
    if "annotations" not in dataset:
        raise ConfigError(
            f"COCO annotation file {path} has no 'annotations' key: it is an image-info file (like "
            f"image_info_test-dev2017.json), which holds no labels and cannot be used for training or "
            f"validation. Point the annotation key at an instances_*.json file instead."
        )
    for ann in dataset["annotations"]:  # COCOeval needs both; hand-made files may lack them
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return _quiet_coco(dataset)


def restrict_coco(coco, image_ids: list[int]):
    """A COCO object holding only ``image_ids`` (and their annotations): the evaluated images."""
    keep = set(image_ids)
    if keep == set(coco.getImgIds()):
        return coco
    dataset = {
        **{k: v for k, v in coco.dataset.items() if k not in ("images", "annotations")},
        "images": [img for img in coco.dataset["images"] if img["id"] in keep],
        "annotations": [ann for ann in coco.dataset["annotations"] if ann["image_id"] in keep],
    }
    return _quiet_coco(dataset)


def subset_ids(image_ids: list[int], n: int | None, seed: int) -> list[int]:
    """The first ``n`` of ``image_ids`` after a fixed-seed shuffle, back in id order (deterministic)."""
    if not n or n >= len(image_ids):
        return list(image_ids)
    perm = torch.randperm(len(image_ids), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(image_ids[i] for i in perm.tolist())
