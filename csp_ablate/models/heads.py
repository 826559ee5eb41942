"""YOLOv3-style detection head: anchors, raw predictions, decoding + NMS, and the loss.

Per scale the head predicts, for each of ``A`` anchors and each grid cell, ``(tx, ty, tw, th,
objectness, K class logits)`` (YOLOv3: box centre ``(sigmoid(t_xy) + cell) * stride``, size
``anchor * exp(t_wh)``, independent logistic classes). Anchors are in input pixels, three per
scale, finest scale first; :func:`kmeans_anchors` derives them from the training boxes (the
YOLOv2/v3 recipe: k-means with ``1 - IoU`` as the distance).

The loss follows YOLOv3: every ground-truth box is assigned to the anchor whose shape matches
it best (plus every other anchor above ``match_iou``, which gives the tiny proxy more
positives), objectness is binary cross-entropy with predictions that already overlap a box by
``ignore_iou`` left out of the negatives, classes are BCE. The default box loss is YOLOv3's
squared error on the raw offsets, weighted by ``2 - w·h/S²``; ``extras=[giou]`` replaces it by
``1 - GIoU`` (Rezatofighi et al. 2019), as the paper's EFM (GIoU) row does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss

from csp_ablate.models.layers import ConvNormAct, LeakyReLU01

#: YOLOv3's COCO anchors at 416×416 (w, h), finest scale first.
YOLOV3_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
STRIDES: tuple[int, ...] = (8, 16, 32)


def kmeans_anchors(wh: torch.Tensor, k: int = 9, per_scale: int = 3, iters: int = 100,
                   seed: int = 0, restarts: int = 5) -> list[list[tuple[float, float]]]:
    """k-means on box (w, h) with ``1 - IoU`` distance; sorted by area, split finest first.

    k-means++ seeding and ``restarts`` tries (the one with the best mean IoU wins), because
    plain random seeding often merges two clusters. Deterministic for a given ``seed``.
    """
    wh = wh.float().reshape(-1, 2)
    wh = wh[(wh > 0).all(dim=1)]
    if len(wh) == 0:
        raise ValueError("k-means anchors need at least one training box with positive size")
    gen = torch.Generator().manual_seed(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        centres = _kmeanspp_init(wh, k, gen)
        for _ in range(iters):
            assign = shape_iou(wh, centres).argmax(dim=1)
            new = torch.stack([wh[assign == j].median(dim=0).values if (assign == j).any() else centres[j]
                               for j in range(k)])
            if torch.allclose(new, centres):
                break
            centres = new
        fit = float(shape_iou(wh, centres).amax(dim=1).mean())
        if fit > best_fit:
            best, best_fit = centres, fit
    best = best[best.prod(dim=1).argsort()]
    return [[(round(float(w), 1), round(float(h), 1)) for w, h in best[i:i + per_scale]]
            for i in range(0, k, per_scale)]


def _kmeanspp_init(wh: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++: each next centre drawn with probability ∝ (1 - IoU to the nearest centre)²."""
    centres = [wh[torch.randint(len(wh), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        dist = (1.0 - shape_iou(wh, torch.stack(centres)).amax(dim=1)).clamp(min=0) ** 2
        if float(dist.sum()) <= 0:  # fewer distinct shapes than k: repeat one
            centres.append(centres[-1])
            continue
        centres.append(wh[torch.multinomial(dist, 1, generator=gen)].squeeze(0))
    return torch.stack(centres)


def shape_iou(wh_a: torch.Tensor, wh_b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes aligned at a common centre (shapes only): ``[N, 2] x [M, 2] -> [N, M]``."""
    inter = torch.min(wh_a[:, None], wh_b[None]).prod(dim=2)
    return inter / (wh_a.prod(dim=1)[:, None] + wh_b.prod(dim=1)[None] - inter)


class YoloHead(nn.Module):
    """Per scale: 3×3 conv (``expand`` × the input width), then a 1×1 conv to ``A·(5+K)`` outputs.

    Returns ``[B, A, H, W, 5+K]`` per scale.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, anchors: Sequence[Sequence[Sequence[float]]],
                 act_layer: type[nn.Module] = LeakyReLU01, expand: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32), persistent=True)
        self.num_anchors = self.anchors.shape[1]
        outputs = self.num_anchors * (5 + num_classes)
        self.convs = nn.ModuleList(
            nn.Sequential(ConvNormAct(c, expand * c, 3, act_layer=act_layer), nn.Conv2d(expand * c, outputs, 1))
            for c in in_channels
        )
        self._init_priors()

    def _init_priors(self) -> None:
        """Objectness prior 1 % and class prior 1/K (RetinaNet/YOLOv5 bias init): a stable start."""
        for seq in self.convs:
            bias = seq[-1].bias.detach().view(self.num_anchors, -1)
            bias.zero_()
            bias[:, 4] = math.log(0.01 / 0.99)
            bias[:, 5:] = math.log(1.0 / max(self.num_classes - 0.99, 1.0))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for conv, f in zip(self.convs, feats):
            p = conv(f)
            b, _, h, w = p.shape
            outs.append(p.view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2))
        return outs


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of paired (x1, y1, x2, y2) boxes ``[N, 4]`` (Rezatofighi et al. 2019), per pair."""
    return generalized_box_iou_loss(pred, target, reduction="none")


def _grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((gx, gy), dim=-1).float()  # [H, W, 2] as (x, y)


def decode_boxes(pred: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """Raw ``[B, A, H, W, 5+K]`` -> boxes ``[B, A, H, W, 4]`` as (x1, y1, x2, y2) in input pixels."""
    _, _, h, w, _ = pred.shape
    xy = (torch.sigmoid(pred[..., :2]) + _grid(h, w, pred.device)) * stride
    wh = torch.exp(pred[..., 2:4].float().clamp(max=8.0)) * anchors.view(1, -1, 1, 1, 2)
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


@torch.no_grad()
def postprocess(preds: Sequence[torch.Tensor], anchors: torch.Tensor, conf_thresh: float = 0.005,
                nms_iou: float = 0.45, max_det: int = 100, pre_nms_topk: int = 1000,
                img_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Decode + class-aware NMS (``torchvision.ops.batched_nms``): per image boxes/scores/labels.

    Scores are ``objectness · class probability`` for every class above ``conf_thresh``
    (multi-label, like YOLOv3's evaluation), so a box may be kept for two classes.
    """
    boxes, scores = [], []
    for level, p in enumerate(preds):
        p = p.float()  # bf16 outputs (trainer=gpu) would tie scores and shift boxes
        b = p.shape[0]
        boxes.append(decode_boxes(p, anchors[level], STRIDES[level]).reshape(b, -1, 4))
        scores.append((torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])).reshape(b, -1, p.shape[-1] - 5))
    boxes_all, scores_all = torch.cat(boxes, dim=1), torch.cat(scores, dim=1)
    if img_size is not None:
        boxes_all = boxes_all.clamp(0, img_size)
    results = []
    for bx, sc in zip(boxes_all, scores_all):
        idx, cls = (sc > conf_thresh).nonzero(as_tuple=True)
        s = sc[idx, cls]
        if len(s) > pre_nms_topk:
            s, top = s.topk(pre_nms_topk)
            idx, cls = idx[top], cls[top]
        bxs = bx[idx].float()
        keep = batched_nms(bxs, s.float(), cls, nms_iou)[:max_det]
        results.append({"boxes": bxs[keep], "scores": s[keep].float(), "labels": cls[keep]})
    return results


class YoloLoss(nn.Module):
    """YOLOv3 loss with a switchable box term (``mse`` | ``giou``); returns total and parts.

    Args:
        anchors: ``[3, A, 2]`` anchors in input pixels, finest scale first.
        box_loss: ``mse`` (YOLOv3's squared error on offsets) or ``giou`` (``1 - GIoU``).
        match_iou: also assign a box to every anchor whose shape IoU exceeds this (1.0 = best only).
        ignore_iou: predictions overlapping any box by more than this are not negatives.
        box_weight, obj_weight, cls_weight: term weights; ``obj_balance`` weights the
            objectness term per scale (many more cells at stride 8 than at stride 32).
    """

    def __init__(self, anchors: torch.Tensor, num_classes: int, box_loss: str = "mse", match_iou: float = 0.5,
                 ignore_iou: float = 0.5, box_weight: float = 0.05, obj_weight: float = 1.0,
                 cls_weight: float = 0.5, obj_balance: Sequence[float] = (4.0, 1.0, 0.4)) -> None:
        super().__init__()
        if box_loss not in ("mse", "giou"):
            raise ValueError(f"box_loss must be 'mse' or 'giou', got {box_loss!r}")
        self.anchors = anchors
        self.num_classes = num_classes
        self.box_loss, self.match_iou, self.ignore_iou = box_loss, match_iou, ignore_iou
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight
        self.obj_balance = tuple(obj_balance)

    def assign(self, targets: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per scale: (target row, anchor index) pairs of the positives."""
        anchors = self.anchors.to(targets.device)
        a_per = anchors.shape[1]
        wh = targets[:, 4:6] - targets[:, 2:4]
        ious = shape_iou(wh, anchors.view(-1, 2))  # [N, 3*A]
        best = ious.argmax(dim=1)
        positive = ious > self.match_iou
        positive[torch.arange(len(targets), device=targets.device), best] = True
        out = []
        for level in range(anchors.shape[0]):
            rows, a = positive[:, level * a_per:(level + 1) * a_per].nonzero(as_tuple=True)
            out.append((rows, a))
        return out

    def forward(self, preds: Sequence[torch.Tensor], targets: torch.Tensor, img_size: int) -> dict[str, torch.Tensor]:
        device = preds[0].device
        anchors = self.anchors.to(device)
        zero = preds[0].sum() * 0.0
        box_l, obj_l, cls_l = zero.clone(), zero.clone(), zero.clone()
        n_pos = 0
        assignments = self.assign(targets) if len(targets) else [None] * len(preds)
        for level, p in enumerate(preds):
            p = p.float()
            b, a_n, h, w, _ = p.shape
            stride = STRIDES[level]
            obj_target = torch.zeros(p.shape[:4], device=device)
            obj_weight = torch.ones(p.shape[:4], device=device)
            pred_boxes = decode_boxes(p, anchors[level], stride)
            if len(targets):
                # ignore: predictions already overlapping some box of their image are not negatives
                with torch.no_grad():
                    for img in range(b):
                        gt = targets[targets[:, 0] == img, 2:6]
                        if len(gt):
                            best = box_iou(pred_boxes[img].reshape(-1, 4), gt).amax(dim=1)
                            obj_weight[img].view(-1)[best > self.ignore_iou] = 0.0
                rows, a = assignments[level]
                if len(rows):
                    t = targets[rows]
                    bi = t[:, 0].long()
                    cxy = (t[:, 2:4] + t[:, 4:6]) / 2
                    gwh = (t[:, 4:6] - t[:, 2:4]).clamp(min=1e-3)
                    gx = (cxy[:, 0] / stride).long().clamp(0, w - 1)
                    gy = (cxy[:, 1] / stride).long().clamp(0, h - 1)
                    ps = p[bi, a, gy, gx]
                    if self.box_loss == "giou":
                        pb = pred_boxes[bi, a, gy, gx]
                        box_l = box_l + giou_loss(pb, t[:, 2:6]).sum()
                    else:
                        txy = cxy / stride - torch.stack((gx, gy), dim=1).float()
                        twh = torch.log(gwh / anchors[level][a])
                        scale = 2.0 - gwh.prod(dim=1) / float(img_size * img_size)
                        err = (torch.sigmoid(ps[:, :2]) - txy).pow(2).sum(1) + (ps[:, 2:4] - twh).pow(2).sum(1)
                        box_l = box_l + (scale * err).sum()
                    cls_t = F.one_hot(t[:, 1].long(), self.num_classes).float()
                    cls_l = cls_l + F.binary_cross_entropy_with_logits(ps[:, 5:], cls_t, reduction="sum") / self.num_classes
                    obj_target[bi, a, gy, gx] = 1.0
                    obj_weight[bi, a, gy, gx] = 1.0
                    n_pos += len(rows)
            bce = F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none")
            obj_l = obj_l + self.obj_balance[level] * (bce * obj_weight).sum() / obj_weight.sum().clamp(min=1.0)
        n = max(n_pos, 1)
        batch = preds[0].shape[0]
        box_l, cls_l = box_l / n, cls_l / n
        total = (self.box_weight * box_l + self.obj_weight * obj_l + self.cls_weight * cls_l) * batch
        return {"loss": total, "box": box_l.detach(), "obj": obj_l.detach(), "cls": cls_l.detach(),
                "n_pos": torch.tensor(float(n_pos))}
