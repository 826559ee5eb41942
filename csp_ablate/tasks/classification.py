"""Image classification as in the paper's ImageNet experiments (Table 1, Figure 4).

Cross-entropy, SGD with momentum and weight decay, and darknet's polynomial LR decay
``lr * (1 - step / max_steps) ** power`` stepped per batch (the paper trains for a number of
steps, not epochs), with an optional linear warm-up (darknet's ``burn_in``); both from
:mod:`csp_ablate.tasks.optim`, shared with detection. Accuracy is reported in percent, like
the paper.

The task's factory functions (:mod:`csp_ablate.tasks`): :func:`build` (a timm classifier from
the ``model`` group, costed at 224², 1000 classes), :func:`evaluate` (``val_top1`` and the
test split's ``top1``) and :func:`inference` (the classifier itself, for fps).

Under DDP the metrics are torchmetrics states, synchronised when computed: ``val/top1`` and
``test/top1`` are over the whole set, and ``val/n`` / ``test/n`` count the images behind them
(the evidence that no shard was missed or counted twice).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from csp_ablate.tasks import Built, Evaluated, cost_fields, metric
from csp_ablate.tasks.optim import sgd_with_schedule


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
        return sgd_with_schedule(self.model, int(self.trainer.estimated_stepping_batches), lr=hp.lr,
                                 momentum=hp.momentum, weight_decay=hp.weight_decay,
                                 warmup_steps=hp.warmup_steps, poly_power=hp.poly_power)


# ---- the task's factory functions (csp_ablate.tasks) ---------------------------------------------
def build_model(cfg: DictConfig, num_classes: int, in_chans: int) -> nn.Module:
    """timm model from the ``model`` group: every key but ``name`` is a constructor kwarg."""
    from csp_ablate.models import create_backbone

    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    name = kwargs.pop("name")
    return create_backbone(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def build(cfg: DictConfig, datamodule: Any, rank_zero: bool) -> Built:
    """The classifier to train; rank 0 also costs it at the paper's input (224², 1000 classes)."""
    model = build_model(cfg, num_classes=cfg.data.num_classes, in_chans=cfg.data.channels)
    if not rank_zero:
        return Built(model)
    paper = build_model(cfg, num_classes=cfg.profile.paper_num_classes, in_chans=3)
    return Built(model, cost=cost_fields(cfg, paper, model))


def evaluate(trainer: L.Trainer, module: L.LightningModule, data: Any, resumed: bool) -> Evaluated:
    """``val_top1`` from the last validation, ``top1`` from one pass over the test split."""
    if resumed and "val/top1" not in trainer.callback_metrics:  # resumed at the end: no fit epoch ran
        trainer.validate(module, datamodule=data, verbose=False)
    val_top1, n_val = metric(trainer, "val/top1"), metric(trainer, "val/n")
    test_metrics = (trainer.test(module, datamodule=data, verbose=False) or [{}])[0]  # [] for 0 batches
    n_test = int(test_metrics.get("test/n", 0))
    top1 = round(float(test_metrics["test/top1"]), 4) if n_test else None
    return Evaluated({"val_top1": val_top1, "top1": top1}, n_val, n_test, "test")


def inference(cfg: DictConfig, model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """The classifier as trained, timed at the training input size."""
    return model, int(cfg.data.img_size)
