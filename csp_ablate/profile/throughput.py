"""Inference throughput (images/s): eval mode, ``torch.inference_mode``, warm-up, median of timed passes.

Repeats shrink to fit ``max_time_s`` (never below 3); device, thread count and load average are
recorded with the number. On a shared CPU the numbers are indicative: compare rows of one run.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
from torch import nn

from csp_ablate.profile.counting import _device_of

@torch.inference_mode()
def measure_throughput(
    model: nn.Module,
    img_size: int,
    in_chans: int = 3,
    batch: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    channels_last: bool = False,
    max_time_s: float | None = None,
) -> dict[str, Any]:
    """Images per second of ``model`` in eval mode: warm-up, then the median of timed passes.

    ``max_time_s`` caps the timed part: the repeats shrink to fit it (never below 3). With
    ``channels_last`` the model is converted for the measurement and converted back after.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    x = torch.randn(batch, in_chans, img_size, img_size, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        last = 0.0
        for _ in range(max(warmup, 1)):
            start = time.perf_counter()
            model(x)
            sync()
            last = time.perf_counter() - start
        if max_time_s is not None and last > 0:
            repeats = max(3, min(repeats, int(max_time_s / last)))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    median = statistics.median(times)
    return {
        "fps": batch / median,
        "latency_ms": 1000 * median,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def measure_fps(
    model: nn.Module, img_size: int, in_chans: int = 3, batch: int = 1, warmup: int = 5, repeats: int = 20
) -> float:
    """Images per second: warm-up, then the median of ``repeats`` timed forward passes."""
    return measure_throughput(model, img_size, in_chans, batch=batch, warmup=warmup, repeats=repeats)["fps"]
