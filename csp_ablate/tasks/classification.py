"""Image classification as in the paper's ImageNet experiments (Table 1, Figure 4).

Cross-entropy, SGD with momentum and weight decay, and darknet's polynomial LR decay
``lr * (1 - step / max_steps) ** power`` stepped per batch (the paper trains for a number of
steps, not epochs), with an optional linear warm-up (darknet's ``burn_in``). Accuracy is
reported in percent, like the paper.

Under DDP the metrics are torchmetrics states, synchronised when computed: ``val/top1`` and
``test/top1`` are over the whole set, and ``val/n`` / ``test/n`` count the images behind them
(the evidence that no shard was missed or counted twice).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric
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
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "channels_last"])
        self.model = model
        # NHWC is ~1.25x faster for these small convs on CPU (benchmarks/bench_train_speed.py);
        # the model's weights are converted once in train.py, the batches in forward().
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.val_top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.val_n, self.test_n = SumMetric(), SumMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str, metric: MulticlassAccuracy, count: SumMetric) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=False, sync_dist=True, batch_size=len(y))
        metric.update(logits, y)
        count.update(torch.tensor(float(len(y)), device=y.device))

    def _eval_epoch_end(self, stage: str, metric: MulticlassAccuracy, count: SumMetric) -> None:
        self.log(f"{stage}/top1", metric.compute() * 100.0, prog_bar=stage == "val")
        self.log(f"{stage}/n", count.compute())
        metric.reset()
        count.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_top1, self.val_n)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_top1, self.val_n)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_top1, self.test_n)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_top1, self.test_n)

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
