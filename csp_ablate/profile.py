"""Cost of a model: parameters, BFLOPs (the paper's darknet convention) and throughput.

BFLOPs = 2 x multiply-accumulates / 1e9, counted at the paper's input (224x224, 1000 classes)
for ``bflops`` and at the trained input for ``bflops_train``. ``torch.utils.flop_counter``
counts a convolution or matmul as 2 x MACs, which is exactly darknet's convention.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@torch.no_grad()
def count_bflops(model: nn.Module, img_size: int, in_chans: int = 3) -> float:
    """2 x MACs / 1e9 of one forward pass on a 1 x C x H x W input."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, img_size, img_size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def measure_fps(
    model: nn.Module, img_size: int, in_chans: int = 3, batch: int = 1, warmup: int = 5, repeats: int = 20
) -> float:
    """Images per second: warm-up, then the median of ``repeats`` timed forward passes."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch, in_chans, img_size, img_size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    return batch / statistics.median(times)
