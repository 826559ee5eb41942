"""COCO AP via pycocotools: known predictions give known AP / AP50; letterbox undo is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from csp_ablate.coco_eval import coco_ap, detections_to_coco
from csp_ablate.data.coco import load_coco, restrict_coco

# 3 images, two categories with non-contiguous ids, boxes [x, y, w, h]
GT = {
    1: [(1, [10, 10, 40, 30]), (5, [60, 20, 20, 50])],
    2: [(5, [5, 5, 80, 60])],
    3: [(1, [30, 40, 25, 25]), (1, [0, 0, 10, 12]), (5, [50, 50, 40, 40])],
}


@pytest.fixture
def coco_gt(tmp_path):
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in GT],
        "categories": [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, anns in GT.items() for k, (c, b) in enumerate(anns)
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco(path)


def dets(shift: float = 0.0, category=None, score: float = 0.9) -> list[dict]:
    """Every ground-truth box as a detection, moved right by ``shift`` x its width."""
    return [
        {"image_id": i, "category_id": category or c, "bbox": [x + shift * w, y, w, h], "score": score}
        for i, anns in GT.items() for c, (x, y, w, h) in anns
    ]


def test_perfect_predictions(coco_gt):
    assert coco_ap(coco_gt, dets()) == {"ap": pytest.approx(100.0), "ap50": pytest.approx(100.0)}


def test_shift_to_iou_074_keeps_ap50_and_halves_ap(coco_gt):
    # a shift of 0.15 w gives IoU = 0.85 / 1.15 = 0.739: a match at IoU thresholds 0.50..0.70 (5 of 10)
    res = coco_ap(coco_gt, dets(shift=0.15))
    assert res["ap50"] == pytest.approx(100.0)
    assert res["ap"] == pytest.approx(50.0, abs=0.5)


def test_large_shift_gives_zero_ap50(coco_gt):
    res = coco_ap(coco_gt, dets(shift=0.5))  # IoU = 0.5 / 1.5 = 0.33
    assert res["ap50"] == pytest.approx(0.0) and res["ap"] == pytest.approx(0.0)


def test_no_detections_and_wrong_class(coco_gt):
    assert coco_ap(coco_gt, []) == {"ap": 0.0, "ap50": 0.0}
    wrong = [{**d, "category_id": 6 - d["category_id"]} for d in dets()]  # 1 <-> 5
    assert coco_ap(coco_gt, wrong) == {"ap": pytest.approx(0.0), "ap50": pytest.approx(0.0)}


def test_restricted_to_gt_images_and_low_score_junk(coco_gt):
    only_1_2 = restrict_coco(coco_gt, [1, 2])
    assert sorted(only_1_2.getImgIds()) == [1, 2]
    # image 3 gets only false positives: ignored, since it is not among the evaluated images
    preds = [d for d in dets() if d["image_id"] != 3] + [
        {"image_id": 3, "category_id": 1, "bbox": [70, 70, 5, 5], "score": 0.99}
    ]
    assert coco_ap(only_1_2, preds)["ap"] == pytest.approx(100.0)
    assert coco_ap(coco_gt, preds)["ap"] < 70.0  # over all images the misses count
    # 150 low-score false positives per image: beyond the 100 cap or ranked last, AP stays 100
    rng = np.random.default_rng(0)
    junk = [
        {"image_id": i, "category_id": 1, "bbox": [*rng.uniform(0, 80, 2).tolist(), 3.0, 3.0], "score": 0.01}
        for i in GT for _ in range(150)
    ]
    assert coco_ap(coco_gt, dets() + junk)["ap"] == pytest.approx(100.0)
    assert len(junk) == 450 and all("id" not in d for d in junk)  # the caller's dicts are not mutated


def test_detections_to_coco_undoes_the_letterbox():
    meta = {"image_id": 7, "scale": 0.5, "pad": (0, 30), "orig_size": (200, 100)}  # 200x100 -> 100x50 in 100x100
    boxes = torch.tensor([
        [10.0, 40.0, 30.0, 60.0],     # inside: -> [20, 20, 60, 60] xyxy
        [90.0, 25.0, 120.0, 50.0],    # crosses the right edge and the top padding: clipped
        [10.0, 0.0, 20.0, 20.0],      # entirely in the padding: dropped
    ])
    out = detections_to_coco(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 0, 0]), meta, [3, 9])
    assert len(out) == 2
    assert out[0] == {"image_id": 7, "category_id": 9, "bbox": [20.0, 20.0, 40.0, 40.0], "score": pytest.approx(0.9)}
    assert out[1]["category_id"] == 3 and out[1]["bbox"] == pytest.approx([180.0, 0.0, 20.0, 40.0])
    assert detections_to_coco(np.zeros((0, 4)), np.zeros(0), np.zeros(0), meta, [3, 9]) == []


def _coco_eval_ap(coco_gt, detections: list[dict]) -> float:
    """AP@[.5:.95] (%) of pycocotools' COCOeval on ``detections`` as given (no pre-cut)."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in detections]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100.0 * float(evaluator.stats[0])


@pytest.fixture
def crowded_image(tmp_path):
    """One 1000x1000 image with 120 boxes of category 1 and 60 of category 5 (180 in all), and one
    detection per box: most are good, the lower-scored ones are off by 30 % of the width."""
    rng = np.random.default_rng(1)
    cells = [(20 + 60 * (n % 15), 20 + 60 * (n // 15)) for n in range(180)]
    anns, detections = [], []
    for n, (x, y) in enumerate(cells):
        cat = 1 if n < 120 else 5
        anns.append({"id": n + 1, "image_id": 1, "category_id": cat, "bbox": [x, y, 40, 40], "area": 1600,
                     "iscrowd": 0})
        score = float(rng.uniform(0.05, 1.0))
        shift = 0.0 if score > 0.4 else 12.0  # IoU 0.54 for the weak ones: a match only at low thresholds
        detections.append({"image_id": 1, "category_id": cat, "bbox": [x + shift, y, 40, 40], "score": score})
    data = {"images": [{"id": 1, "file_name": "1.png", "width": 1000, "height": 1000}],
            "categories": [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}], "annotations": anns}
    path = tmp_path / "crowded.json"
    path.write_text(json.dumps(data))
    return load_coco(path), detections


def test_cap_is_per_image_and_class_like_cocoeval(crowded_image):
    coco_gt, detections = crowded_image
    assert len(detections) == 180
    reference = _coco_eval_ap(coco_gt, detections)  # COCOeval on every detection: its own per-class cap
    assert coco_ap(coco_gt, detections)["ap"] == pytest.approx(reference, abs=1e-9)
    # the old cut (100 best of the image across classes) drops detections COCOeval scores: AP falls
    top100 = sorted(detections, key=lambda d: -d["score"])[:100]
    assert _coco_eval_ap(coco_gt, top100) < reference - 1.0
