"""Object detection as in the paper's Table 2: YOLOv3-style training, COCO AP evaluation.

Training: :class:`csp_ablate.models.heads.YoloLoss` (``box_loss=giou`` for ``extras=[giou]``),
SGD with momentum, linear warm-up (darknet's ``burn_in``), then either darknet's step decay at
``lr_milestones`` (the paper's COCO schedule, ``tier=paper``) or a polynomial decay to zero
(the short proxy schedule). ``multi_scale=[lo, hi, step]`` is darknet's ``random=1``: every
``multi_scale_every`` steps the batch is resized to a random multiple of ``step`` in
``[lo, hi]`` (the boxes with it); the draw depends only on the step, so DDP ranks agree.

Evaluation: decoded + NMS'd detections are mapped back to the original image coordinates and
scored with pycocotools' COCOeval against the datamodule's ``val_coco``: ``val/ap`` and
``val/ap50`` in percent (``test/*`` on the same split: COCO has no labelled test set). Under
DDP each rank's detections are gathered on every rank before COCOeval.

The task's factory functions (:mod:`csp_ablate.tasks`): :func:`build` (anchors, the whole
detector, costed at 320², 80 classes), :func:`evaluate` (the final val AP/AP50) and
:func:`inference` (forward + decode + NMS, for fps at the paper's input).
"""

from __future__ import annotations

import random
from typing import Any

import logging

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from csp_ablate.coco_eval import coco_ap, detections_to_coco
from csp_ablate.errors import ConfigError
from csp_ablate.models.detector import YoloDetector
from csp_ablate.models.heads import YoloLoss, postprocess
from csp_ablate.tasks import Built, Evaluated, cost_fields, metric
from csp_ablate.tasks.optim import sgd_with_schedule

log = logging.getLogger("csp_ablate")


def multi_scale_size(step: int, every: int, lo: int, hi: int, stride: int, seed: int = 0) -> int:
    """darknet's ``random=1``: a size in ``{lo, lo+stride, ..., hi}`` fixed for ``every`` steps."""
    sizes = list(range(lo, hi + 1, stride))
    return random.Random(seed * 1_000_003 + step // max(every, 1)).choice(sizes)


class DetectionTask(L.LightningModule):
    """Wraps a :class:`YoloDetector`; logs ``train/loss`` (+ parts), ``val/ap``, ``val/ap50``."""

    def __init__(
        self,
        model: YoloDetector,
        num_classes: int,
        box_loss: str = "mse",
        lr: float = 0.01,
        momentum: float = 0.937,
        weight_decay: float = 5e-4,
        warmup_steps: int = 0,
        poly_power: float = 1.0,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        multi_scale: list[int] | None = None,
        multi_scale_every: int = 10,
        match_iou: float = 0.5,
        ignore_iou: float = 0.5,
        box_weight: float = 0.05,
        obj_weight: float = 1.0,
        cls_weight: float = 0.5,
        conf_thresh: float = 0.005,
        nms_iou: float = 0.45,
        max_det: int = 100,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "channels_last"])
        self.model = model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.criterion = YoloLoss(model.anchors, num_classes, box_loss=box_loss, match_iou=match_iou,
                                  ignore_iou=ignore_iou, box_weight=box_weight, obj_weight=obj_weight,
                                  cls_weight=cls_weight)
        self._detections: list[dict[str, Any]] = []
        self._images = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x.contiguous(memory_format=self.memory_format))

    # ---- training ---------------------------------------------------------------------------
    def _rescale(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        if not hp.multi_scale:
            return images, targets
        lo, hi, stride = hp.multi_scale
        size = multi_scale_size(self.global_step, hp.multi_scale_every, lo, hi, stride, hp.seed)
        if size == images.shape[-1]:
            return images, targets
        ratio = size / images.shape[-1]
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        targets = torch.cat((targets[:, :2], targets[:, 2:] * ratio), dim=1)
        return images, targets

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        images, targets = self._rescale(images, targets)
        self.criterion.anchors = self.model.anchors
        parts = self.criterion(self(images), targets, img_size=images.shape[-1])
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        for key in ("box", "obj", "cls"):
            self.log(f"train/{key}", parts[key])
        return loss

    # ---- evaluation -------------------------------------------------------------------------
    def _datamodule(self):
        dm = self.trainer.datamodule
        return getattr(dm, "inner", dm)  # ShardedDataModule (DDP) wraps the real one

    def _eval_step(self, batch) -> None:
        images, _, metas = batch
        hp = self.hparams
        results = postprocess(self(images), self.model.anchors, conf_thresh=hp.conf_thresh, nms_iou=hp.nms_iou,
                              max_det=hp.max_det, img_size=images.shape[-1])
        category_ids = self._datamodule().category_ids
        for res, meta in zip(results, metas):
            self._detections += detections_to_coco(res["boxes"].cpu(), res["scores"].cpu(), res["labels"].cpu(),
                                                   meta, category_ids)
        self._images += len(metas)

    def _eval_epoch_end(self, stage: str) -> None:
        detections, images = self._detections, self._images
        self._detections, self._images = [], 0
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (detections, images))
            detections = [d for part, _ in gathered for d in part]
            images = sum(n for _, n in gathered)
        if self.trainer.sanity_checking:
            return
        scores = coco_ap(self._datamodule().val_coco, detections)
        self.log(f"{stage}/ap", scores["ap"], prog_bar=stage == "val")
        self.log(f"{stage}/ap50", scores["ap50"], prog_bar=stage == "val")
        self.log(f"{stage}/n", float(images))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        return sgd_with_schedule(self.model, int(self.trainer.estimated_stepping_batches), lr=hp.lr,
                                 momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True,
                                 warmup_steps=hp.warmup_steps, poly_power=hp.poly_power,
                                 milestones=hp.lr_milestones, decay=hp.lr_gamma)


# ---- the task's factory functions (csp_ablate.tasks) ---------------------------------------------
def resolve_anchors(cfg: DictConfig, datamodule: Any) -> list[list[list[float]]]:
    """``detector.anchors``: explicit pixels, or ``auto`` = k-means on the training boxes."""
    anchors = cfg.detector.get("anchors", "auto")
    if anchors in (None, "auto"):
        from csp_ablate.models.heads import kmeans_anchors

        boxes = datamodule.train_boxes_wh()
        found = kmeans_anchors(boxes, seed=0)
        log.info("anchors (k-means on %d training boxes, input pixels): %s", len(boxes), found)
        return [[list(a) for a in scale] for scale in found]
    anchors = OmegaConf.to_container(anchors, resolve=True) if not isinstance(anchors, list) else anchors
    if (len(anchors) != 3 or len({len(scale) for scale in anchors}) != 1 or not anchors[0]
            or any(len(a) != 2 for scale in anchors for a in scale)):
        raise ConfigError.bad_value("detector.anchors", anchors,
                                    "auto, or 3 scales with the same number of [w, h] pairs (input pixels)")
    return anchors


def build_detector_from_cfg(cfg: DictConfig, num_classes: int, anchors: Any, in_chans: int) -> nn.Module:
    """Backbone (``model`` group) + ``neck`` + ``extras`` + YOLOv3 head, as the config asks."""
    from csp_ablate.models.detector import build_detector

    return build_detector(
        OmegaConf.to_container(cfg.model, resolve=True), cfg.neck, list(cfg.get("extras") or []),
        num_classes=num_classes, anchors=anchors, in_chans=in_chans,
        neck_channels=int(cfg.detector.get("neck_channels", 128)),
    )


def build(cfg: DictConfig, datamodule: Any, rank_zero: bool) -> Built:
    """The detector to train; rank 0 also costs the whole detector at 320², 80 classes."""
    anchors = resolve_anchors(cfg, datamodule)
    model = build_detector_from_cfg(cfg, datamodule.num_classes, anchors, in_chans=cfg.data.channels)
    box_loss = "giou" if "giou" in (cfg.get("extras") or []) else "mse"
    kwargs = {"box_loss": box_loss, "seed": int(cfg.seed)}
    if not rank_zero:
        return Built(model, kwargs)
    paper = build_detector_from_cfg(cfg, cfg.profile.paper_num_classes, anchors, in_chans=3)
    return Built(model, kwargs, cost_fields(cfg, paper, model))


def evaluate(trainer: L.Trainer, module: L.LightningModule, data: Any, resumed: bool) -> Evaluated:
    """The final val AP/AP50: COCO has no labelled test split, so the record's AP is val's."""
    if "val/ap" not in trainer.callback_metrics:
        trainer.validate(module, datamodule=data, verbose=False)
    n_val = metric(trainer, "val/n")
    return Evaluated({"ap": metric(trainer, "val/ap"), "ap50": metric(trainer, "val/ap50")},
                     n_val, int(n_val or 0), "val")


def inference(cfg: DictConfig, model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """The whole detector (forward + decode + NMS), timed at the paper's input (320²)."""
    from csp_ablate.models.detector import DetectorInference

    infer = DetectorInference(model, conf_thresh=cfg.task.conf_thresh, nms_iou=cfg.task.nms_iou,
                              max_det=cfg.task.max_det)
    return infer.to(device), int(cfg.profile.paper_img_size)
