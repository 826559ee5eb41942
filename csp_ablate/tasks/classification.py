"""Image classification as in the paper's ImageNet experiments (Table 1, Figure 4).

Cross-entropy, SGD with momentum and weight decay, and darknet's polynomial LR decay
``lr * (1 - step / max_steps) ** power`` stepped per batch (the paper trains for a number of
steps, not epochs), with an optional linear warm-up (darknet's ``burn_in``). Accuracy is
reported in percent, like the paper.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


def poly_lr_factor(step: int, max_steps: int, power: float, warmup_steps: int = 0) -> float:
    """LR multiplier at ``step``: linear warm-up, then polynomial decay to 0 at ``max_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(step, max_steps) / max(1, max_steps)
    return (1.0 - progress) ** power


class ClassificationTask(L.LightningModule):
    """Wraps a timm classifier; logs ``train/loss``, ``val/top1``, ``test/top1`` (percent)."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 4.0,
        warmup_steps: int = 0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.val_top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.model(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=False, sync_dist=True)
        metric.update(logits, y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_top1)

    def on_validation_epoch_end(self) -> None:
        self.log("val/top1", self.val_top1.compute() * 100.0, prog_bar=True)
        self.val_top1.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_top1)

    def on_test_epoch_end(self) -> None:
        self.log("test/top1", self.test_top1.compute() * 100.0)
        self.test_top1.reset()

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on BN and biases
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, momentum=hp.momentum,
        )
        max_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_lr_factor(step, max_steps, hp.poly_power, hp.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
