"""COCO box AP with pycocotools: the metric of the paper's Table 2 (AP, AP50), at every val epoch.

Why pycocotools and not a re-implementation: AP numbers are only comparable to the paper's when
computed by the reference COCOeval (101-point interpolation, crowd boxes as ignore regions,
at most ``maxDets=100`` detections). COCOeval applies that cap per image AND per class: it
evaluates each (image, category) pair on its 100 best-scoring detections of that category, so an
image may contribute 100 detections of every class. Cost per call on the 2000 fashion_det val
images (2-core dev box, both cores busy with another job): 2.3 s at 10 detections per image,
7.4 s at 100. Two things keep it there: each (image, category) pair is cut to its 100 best
detections before pycocotools sees them (exactly the detections COCOeval would keep: it discards
the rest after paying for their IoUs, so AP is unchanged), and pycocotools' prints are
swallowed. A cap of 100 per image across classes would drop detections COCOeval scores and
lower AP (``tests/test_coco_eval.py``: an image with 180 boxes of two classes).

Coordinates: the detector works in letterboxed network-input pixels; :func:`detections_to_coco`
undoes the letterbox with the ``meta`` of :class:`csp_ablate.data.coco.CocoDetectionDataset`
(``x_orig = (x - pad_x) / scale``), clips to the original image and writes COCO's
``[x, y, w, h]`` with the dataset's own category ids.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_DETS = 100  # COCO's detection cap per image and category (COCOeval's maxDets[-1])


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detections_to_coco(
    boxes_xyxy: Any, scores: Any, labels: Any, meta: Mapping[str, Any], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """One image's detections (network-input xyxy, contiguous class indices) as COCO results.

    Boxes that vanish after clipping to the original image (entirely in the padding) are dropped.
    """
    boxes = _np(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    scores, labels = _np(scores).astype(np.float64).reshape(-1), _np(labels).astype(np.int64).reshape(-1)
    if len(boxes) == 0:
        return []
    pad_x, pad_y = meta["pad"]
    width, height = meta["orig_size"]
    scale = float(meta["scale"])
    boxes = (boxes - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float64)) / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0.0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0.0, height)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh > 0).all(axis=1)
    cats = np.asarray(category_ids, dtype=np.int64)[labels]
    image_id = int(meta["image_id"])
    return [
        {
            "image_id": image_id,
            "category_id": int(c),
            "bbox": [round(float(x), 3), round(float(y), 3), round(float(w), 3), round(float(h), 3)],
            "score": float(s),
        }
        for (x, y), (w, h), c, s, k in zip(boxes[:, :2], wh, cats, scores, keep)
        if k
    ]


def _top_per_image_and_class(
    detections: list[dict[str, Any]], image_ids: set[int], k: int
) -> list[dict[str, Any]]:
    """The ``k`` best-scoring detections of each (image, category) pair of ``image_ids``.

    COCOeval's own cut (``evaluateImg`` keeps ``dt[:maxDet]`` per image and category after a
    stable sort by score), so ties are broken the same way: by input order. Fresh dicts are
    returned because ``loadRes`` mutates them.
    """
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for det in detections:
        if det["image_id"] in image_ids:
            groups[det["image_id"], det["category_id"]].append(det)
    out = []
    for dets in groups.values():
        if len(dets) > k:
            dets = sorted(dets, key=lambda d: -d["score"])[:k]  # sorted() is stable, like mergesort
        out.extend(dict(d) for d in dets)
    return out


def coco_ap(coco_gt, detections: list[dict[str, Any]]) -> dict[str, float]:
    """``{"ap": AP@[.5:.95], "ap50": AP@.5}`` in percent over the images of ``coco_gt``.

    Detections of other images are ignored; no detections (or no ground truth boxes at all, where
    COCOeval says -1 = undefined) give 0.0 rather than an error, so an untrained first epoch
    still logs a number.
    """
    from pycocotools.cocoeval import COCOeval

    image_ids = set(coco_gt.getImgIds())  # COCOeval's params.imgIds default to these too
    dets = _top_per_image_and_class(detections, image_ids, MAX_DETS)
    if not dets or not coco_gt.getAnnIds():
        return {"ap": 0.0, "ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = (max(0.0, float(v)) for v in evaluator.stats[:2])
    return {"ap": 100.0 * ap, "ap50": 100.0 * ap50}
