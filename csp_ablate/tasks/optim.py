"""The one optimizer and LR schedule both tasks train with (darknet's, as the paper's cfgs).

SGD with momentum, weight decay on the weights only (BatchNorm scales and biases are not
decayed), and a multiplier on the LR stepped per optimizer step (the paper counts steps, not
epochs): an optional linear warm-up (darknet's ``burn_in``), then either darknet's step decay
(``policy=steps``: times ``decay`` at each of ``milestones``) or its polynomial decay to zero
(``policy=poly``: ``(1 - step / max_steps) ** power``). Classification uses the polynomial
decay (``power=4``, the authors' PeleeNet cfg); detection the step decay on the paper's COCO
schedule and the polynomial one on the short proxy schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def poly_lr_factor(step: int, max_steps: int, power: float, warmup_steps: int = 0) -> float:
    """LR multiplier at ``step``: linear warm-up, then polynomial decay to 0 at ``max_steps``."""
    return lr_factor(step, max_steps, warmup_steps=warmup_steps, poly_power=power)


def lr_factor(step: int, max_steps: int, warmup_steps: int = 0, poly_power: float = 1.0,
              milestones: Sequence[int] | None = None, decay: float = 0.1) -> float:
    """LR multiplier at ``step``: linear warm-up, then step decay or polynomial decay.

    ``decay`` is the LR's factor at each milestone (darknet's ``scales``, torch's StepLR
    ``gamma``); it is not the paper's γ (the partial ratio of a CSP stage).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if milestones:
        return decay ** sum(step >= m for m in milestones)
    progress = min(step, max_steps) / max(1, max_steps)
    return (1.0 - progress) ** poly_power


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: decayed weights, and the undecayed BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd_with_schedule(model: nn.Module, max_steps: int, *, lr: float, momentum: float, weight_decay: float,
                      nesterov: bool = False, warmup_steps: int = 0, poly_power: float = 1.0,
                      milestones: Sequence[int] | None = None, decay: float = 0.1) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns: SGD + the per-step LR multiplier."""
    optimizer = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)
    steps = list(milestones) if milestones else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, max_steps, warmup_steps, poly_power, steps, decay)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
