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
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from csp_ablate.coco_eval import coco_ap, detections_to_coco
from csp_ablate.models.detector import YoloDetector
from csp_ablate.models.heads import YoloLoss, postprocess
from csp_ablate.tasks.classification import poly_lr_factor


def lr_factor(step: int, max_steps: int, warmup_steps: int = 0, poly_power: float = 1.0,
              milestones: list[int] | None = None, gamma: float = 0.1) -> float:
    """LR multiplier: linear warm-up, then step decay at ``milestones`` or polynomial decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if milestones:
        return gamma ** sum(step >= m for m in milestones)
    return poly_lr_factor(step, max_steps, poly_power)


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
        decay, no_decay = [], []
        for param in self.model.parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on BN and biases
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, momentum=hp.momentum, nesterov=True,
        )
        max_steps = int(self.trainer.estimated_stepping_batches)
        milestones = list(hp.lr_milestones) if hp.lr_milestones else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, max_steps, hp.warmup_steps, hp.poly_power, milestones, hp.lr_gamma)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
