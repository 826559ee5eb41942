"""Detector parts (issue 6): necks, extras, head, loss, decoding, and the CLI's detection errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from csp_ablate.errors import ConfigError
from csp_ablate.models.detector import (
    DetectorInference, build_detection_backbone, build_detector, check_extras, detection_taps,
)
from csp_ablate.models.heads import (
    YOLOV3_ANCHORS, YoloLoss, decode_boxes, giou_loss, kmeans_anchors, postprocess, shape_iou,
)
from csp_ablate.models.necks import CEMSAM, EFM, GFM, NECKS, PRN, SPP, SpatialAttention, YOLOv3Neck

from conftest import run_cli

CSP = {"name": "csppeleenet", "gamma": 0.5, "fusion": "csp", "activation": "leaky"}
ANCHORS_128 = [[(a[0] * 128 / 416, a[1] * 128 / 416) for a in scale] for scale in YOLOV3_ANCHORS]
IN_CHANNELS = [16, 24, 40]


def _feats(batch: int = 2, size: int = 64) -> list[torch.Tensor]:
    return [torch.randn(batch, c, size // s, size // s, requires_grad=True) for c, s in zip(IN_CHANNELS, (8, 16, 32))]


@pytest.mark.parametrize("neck_cls", [PRN, CEMSAM, GFM, EFM])
def test_neck_shapes_and_gradient_reach_every_input(neck_cls):
    torch.manual_seed(0)
    neck = neck_cls(IN_CHANNELS, 32)
    feats = _feats()
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    assert neck.out_channels == [32, 32, 32]
    sum(o.square().mean() for o in outs).backward()
    for f in feats:  # every neck uses all three backbone scales (EFM: each through a neighbour)
        assert f.grad is not None and f.grad.abs().sum() > 0


def test_efm_fuses_only_neighbouring_scales():
    """Scale 0 (stride 8) of EFM must not see scale 2 (stride 32); GFM's does."""
    assert EFM.neighbours(0) == [0, 1] and EFM.neighbours(1) == [0, 1, 2] and EFM.neighbours(2) == [1, 2]
    for cls, sees_far in ((EFM, False), (GFM, True)):
        torch.manual_seed(0)
        neck = cls(IN_CHANNELS, 16).eval()
        feats = _feats(batch=1)
        neck(feats)[0].sum().backward()
        far = feats[2].grad
        assert (far is not None and bool(far.abs().sum() > 0)) is sees_far, cls.__name__


def test_efm_maxout_is_the_elementwise_max_of_the_candidates():
    neck = EFM(IN_CHANNELS, 8).eval()
    neck.smooth = torch.nn.ModuleList(torch.nn.Identity() for _ in range(3))
    feats = [f.detach() for f in _feats(batch=1)]
    lat = [conv(f) for conv, f in zip(neck.laterals, feats)]
    mid = neck(feats)[1]
    expected = torch.maximum(torch.maximum(torch.nn.functional.adaptive_max_pool2d(lat[0], 4), lat[1]),
                             torch.nn.functional.interpolate(lat[2], size=(4, 4), mode="nearest"))
    torch.testing.assert_close(mid, expected)


def test_spp_and_sam_keep_shapes_and_pass_gradients():
    x = torch.randn(2, 40, 5, 5, requires_grad=True)
    y = SPP(40)(x)
    assert y.shape == x.shape
    z = SpatialAttention(40)(y)
    assert z.shape == x.shape
    z.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("neck", ["prn", "cem_sam", "gfm", "efm", "yolov3"])
@pytest.mark.parametrize("extras", [[], ["spp", "sam", "swish"]])
def test_detector_outputs_all_scales_and_trains_the_backbone(neck, extras):
    torch.manual_seed(0)
    model = build_detector(CSP, neck, extras, num_classes=10, anchors=ANCHORS_128, neck_channels=16)
    x = torch.randn(2, 3, 128, 128)
    preds = model(x)
    assert [tuple(p.shape) for p in preds] == [(2, 3, 16, 16, 15), (2, 3, 8, 8, 15), (2, 3, 4, 4, 15)]
    targets = torch.tensor([[0, 1, 10, 10, 40, 50], [1, 3, 60, 60, 120, 100]], dtype=torch.float32)
    YoloLoss(model.anchors, 10)(preds, targets, img_size=128)["loss"].backward()
    stem_grad = next(model.backbone.parameters()).grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert (model.spp is not None) == ("spp" in extras) and (model.sam is not None) == ("sam" in extras)
    acts = {type(m).__name__ for m in model.neck.modules()}
    assert ("SiLU" in acts) == ("swish" in extras)


def test_detection_taps_pick_the_last_map_of_each_stride():
    info = [{"reduction": r} for r in (4, 8, 16, 32, 32)]
    assert detection_taps(info) == [1, 2, 4]
    with pytest.raises(ConfigError, match="stride 32"):
        detection_taps([{"reduction": r} for r in (4, 8, 16)])
    backbone = build_detection_backbone("peleenet")
    assert backbone.feature_info.reduction() == [8, 16, 32]


def test_classification_only_backbone_is_a_clear_error(monkeypatch):
    """A model timm cannot build with features_only (a classifier-only net) names the fix."""
    import csp_ablate.models as models

    def classifier_only(name, **kwargs):
        if kwargs.get("features_only"):
            raise RuntimeError("features_only not implemented for this model")
        return nn.Linear(1, 1)

    monkeypatch.setattr(models, "create_backbone", classifier_only)
    with pytest.raises(ConfigError, match=r"model=plainnet cannot serve as a detection backbone.*features_only.*model=csppeleenet"):
        build_detection_backbone("plainnet")


def test_unknown_extra_or_neck_is_a_config_error():
    assert check_extras(["sam", "giou", "sam"]) == ["giou", "sam"]
    with pytest.raises(ConfigError, match=r"'extras'.*'foo'.*giou, spp, sam, swish"):
        check_extras(["foo"])
    with pytest.raises(ConfigError, match=r"'neck'.*'bifpn'"):
        build_detector(CSP, "bifpn", [], 10, ANCHORS_128)


def test_giou_loss_matches_hand_computed_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0]])
    # (1) IoU 1/7, hull 3x3=9, union 7: GIoU = 1/7 - 2/9.  (2) identical: 0.  (3) disjoint unit boxes,
    # hull 3x3: GIoU = 0 - (9 - 2)/9
    expected = torch.tensor([1 - (1 / 7 - 2 / 9), 0.0, 1 + 7 / 9])
    torch.testing.assert_close(giou_loss(pred, target), expected)


def test_yolo_loss_giou_term_uses_the_decoded_box():
    """With zero logits the box decodes to the anchor centred in its cell: check the GIoU term."""
    anchors = torch.tensor(ANCHORS_128)
    preds = [torch.zeros(1, 3, 128 // s, 128 // s, 15) for s in (8, 16, 32)]
    a = anchors[1, 1]  # the (62, 45)-shaped anchor at stride 16, scaled to 128
    gt = torch.tensor([[0, 2, 64 - a[0] / 2, 64 - a[1] / 2, 64 + a[0] / 2, 64 + a[1] / 2]])  # centre (64, 64)
    loss = YoloLoss(anchors, 10, box_loss="giou", match_iou=1.0)
    rows, anchor_idx = loss.assign(gt)[1]
    assert rows.tolist() == [0] and anchor_idx.tolist() == [1]
    parts = loss(preds, gt, img_size=128)
    # decoded centre = (4 + 0.5) * 16 = 72, size = anchor: shifted by 8 px in x and y
    pb = torch.tensor([[72 - a[0] / 2, 72 - a[1] / 2, 72 + a[0] / 2, 72 + a[1] / 2]])
    torch.testing.assert_close(parts["box"], giou_loss(pb, gt[:, 2:6])[0])
    assert parts["n_pos"].item() == 1


def test_loss_prefers_the_right_prediction():
    """A prediction placing the box and class correctly has a lower loss than the all-zero one."""
    anchors = torch.tensor(ANCHORS_128)
    gt = torch.tensor([[0, 2, 40.0, 40.0, 60.0, 60.0]])
    loss = YoloLoss(anchors, 10, match_iou=1.0)
    zero = [torch.zeros(1, 3, 128 // s, 128 // s, 15) for s in (8, 16, 32)]
    good = [p.clone() for p in zero]
    level = next(i for i, (r, _) in enumerate(loss.assign(gt)) if len(r))
    _, a = loss.assign(gt)[level]
    stride = (8, 16, 32)[level]
    cell = int(50 // stride)
    good[level][0, a, cell, cell, 4] = 8.0
    good[level][0, a, cell, cell, 5 + 2] = 8.0
    for p in good:
        p[..., 4] = torch.where(p[..., 4] == 8.0, p[..., 4], torch.full_like(p[..., 4], -8.0))
    assert loss(good, gt, 128)["loss"] < loss(zero, gt, 128)["loss"]


def test_decode_and_postprocess_recover_a_confident_box():
    anchors = torch.tensor(ANCHORS_128)
    preds = [torch.full((1, 3, 128 // s, 128 // s, 15), -10.0) for s in (8, 16, 32)]
    preds[2][0, 2, 1, 2, :4] = 0.0          # centre of cell (x=2, y=1) at stride 32, anchor size
    preds[2][0, 2, 1, 2, 4] = 10.0
    preds[2][0, 2, 1, 2, 5 + 7] = 10.0
    out = postprocess(preds, anchors, conf_thresh=0.5)[0]
    w, h = anchors[2, 2].tolist()
    assert out["labels"].tolist() == [7]
    cx, cy = 2.5 * 32, 1.5 * 32
    torch.testing.assert_close(out["boxes"][0], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    box = decode_boxes(preds[2], anchors[2], 32)[0, 2, 1, 2]
    torch.testing.assert_close(box, out["boxes"][0])


def test_detector_inference_runs_decode_and_nms():
    model = build_detector(CSP, "efm", ["sam"], 10, ANCHORS_128, neck_channels=16).eval()
    with torch.no_grad():
        results = DetectorInference(model, max_det=7)(torch.rand(2, 3, 96, 96))
    assert len(results) == 2 and all(len(r["boxes"]) <= 7 for r in results)


def test_kmeans_anchors_are_deterministic_sorted_and_fit_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[8.0, 8.0], [16, 32], [32, 16], [40, 40], [60, 30], [30, 60], [80, 80], [100, 60], [60, 100]])
    wh = (centres.repeat(50, 1) * (1 + 0.05 * torch.randn(450, 2))).abs()
    first, second = kmeans_anchors(wh, seed=0), kmeans_anchors(wh, seed=0)
    assert first == second
    flat = torch.tensor([a for scale in first for a in scale])
    assert (flat.prod(1)[1:] >= flat.prod(1)[:-1]).all()  # finest scale first
    assert shape_iou(centres, flat).amax(1).min() > 0.85  # every true cluster is found


def test_neck_registry_names_the_paper_rows():
    assert {"prn", "cem_sam", "gfm", "efm"} <= set(NECKS) and NECKS["fpn"] is PRN


def test_yolov3_neck_keeps_darknet_widths_and_the_head_doubles_them():
    neck = YOLOv3Neck(IN_CHANNELS, 16)
    outs = neck(_feats())
    assert [o.shape[1] for o in outs] == neck.out_channels == [16, 32, 64]
    model = build_detector(CSP, "yolov3", [], 10, ANCHORS_128, neck_channels=16)
    assert [seq[0].conv.out_channels for seq in model.head.convs] == [32, 64, 128]


def test_figure7_detection_profile_writes_tables_and_the_cut(tmp_path):
    from csp_ablate.profile.figure7 import detection_figure7

    summary = detection_figure7(tmp_path, img_size=64, num_classes=80)
    assert list(summary["detector"]) == ["PeleeNet-YOLO", "PeleeNet-PRN", "CSPPeleeNet-EFM"]
    yolo, _, efm = summary.to_dict("records")
    assert yolo["bottleneck_cut_pct_vs_yolo"] == 0.0
    expected = 100 * (efm["bottleneck_bflops"] / yolo["bottleneck_bflops"] - 1)
    assert efm["bottleneck_cut_pct_vs_yolo"] == pytest.approx(expected)
    assert efm["paper_cut_pct"] == -80.0 and efm["bflops"] < yolo["bflops"]
    for name in ("figure7_detection.csv", "figure7_detection.md", "figure7_detection.png",
                 "per_layer_csppeleenet-efm-64.csv"):
        assert (tmp_path / name).exists(), name


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["task=detection", "extras=[foo]"], r"Invalid value for 'extras': 'foo'\. Allowed: giou, spp, sam, swish"),
        (["task=detection", "neck=bifpn"], r"'bifpn' for 'neck'. Allowed: "),
        (["neck=efm"], r"neck=efm' applies to task=detection only"),
        (["extras=[sam]"], r"applies to task=detection only"),
    ],
)
def test_bad_detection_input_is_one_clear_error(args, pattern, tmp_path):
    # the run dir is the test's own: a failed record must not land in the clone's results/runs
    proc = run_cli(*args, "logger=none", "tier=smoke", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "Traceback" not in err
    import re

    assert re.search(pattern, err), err


def test_smoke_detection_run_writes_a_record_with_finite_ap(tmp_path, tiny_fmnist):
    out = tmp_path / "run"
    proc = run_cli(
        "task=detection", "tier=smoke", "logger=none", f"hydra.run.dir={out}", f"data.root={tiny_fmnist}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.n_train=64", "data.n_val=32", "threads=1", timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "completed" and record["task"] == "detection"
    assert record["neck"] == "efm" and record["extras"] == "" and record["dataset"]
    for key in ("ap", "ap50", "params_m", "bflops", "bflops_train"):
        assert isinstance(record[key], float) and math.isfinite(record[key]), key
    assert 0.0 <= record["ap"] <= record["ap50"] <= 100.0
    assert record["top1"] is None
    assert "ap=" in proc.stdout


def test_coco_prepare_data_names_the_missing_file(tmp_path):
    from csp_ablate.data.coco import CocoDataModule

    (tmp_path / "train2017").mkdir()
    dm = CocoDataModule(root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"val2017 does not exist"):
        dm.prepare_data()


def test_early_wandb_run_is_closed_when_the_job_fails_before_training(tmp_path, compose):
    import wandb

    from csp_ablate.tracking import start_wandb_early

    cfg = compose("logger=wandb", "logger.mode=offline", f"output_dir={tmp_path}")
    early = start_wandb_early(cfg, {"run_id": "r1", "sweep": None, "model": "peleenet"})
    assert early is not None
    run = early.result()
    assert wandb.run is run
    early.abort()
    assert wandb.run is None  # a later job in the same worker process opens a new run
