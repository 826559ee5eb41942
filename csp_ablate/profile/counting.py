"""Counting the cost of one forward pass: params, MACs / BFLOPs, CIO, per-layer table.

Two counters, independent of each other: :func:`layer_costs` (ours) hooks every
``Conv*d``/``ConvTranspose*d``/``Linear`` module and derives MACs from the weight shape and the
output size (grouped convs through ``in_channels / groups``), plus CIO from the activation
shapes; :func:`count_bflops` runs ``torch.utils.flop_counter.FlopCounterMode`` (operator level).
They agree within 1 % on every registered model (``tests/test_profile.py``). Conventions (BFLOPs
= 2 x MACs / 1e9, conv and fc layers only; CIO = conv input + output activations) and what they
measure: ``docs/fidelity.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONV_TYPES = (nn.modules.conv._ConvNd,)
LINEAR_TYPES = (nn.Linear,)


def count_params_m(model: nn.Module) -> float:
    """Parameters in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


@torch.no_grad()
def count_bflops(model: nn.Module, img_size: int, in_chans: int = 3) -> float:
    """2 x MACs / 1e9 of one forward pass on a 1 x C x H x W input (``FlopCounterMode``)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, img_size, img_size, device=_device_of(model))
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


@dataclass
class LayerCost:
    """One executed conv/linear module, per image."""

    index: int
    name: str
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: str
    stride: str
    groups: int
    params: int
    macs: int
    cio: int  # input + output activation size (conv layers; 0 for linear layers)

    @property
    def bflops(self) -> float:
        return 2 * self.macs / 1e9


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    weight = module.weight
    kernel_numel = math.prod(weight.shape[2:])
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # every input element is scattered through (out_channels / groups) x kernel weights
        return inp.numel() * weight.shape[1] * kernel_numel
    return out.numel() * weight.shape[1] * kernel_numel  # weight.shape[1] = in_channels / groups


@torch.no_grad()
def layer_costs(model: nn.Module, img_size: int, in_chans: int = 3) -> list[LayerCost]:
    """Our counter: every conv/linear module call of one forward pass at batch 1, in order."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    rows: list[LayerCost] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        inp = args[0] if args else next(iter(kwargs.values()))
        name = names[module] or type(module).__name__
        calls[name] = calls.get(name, 0) + 1
        if calls[name] > 1:  # a module called twice (weight sharing) is two layers
            name = f"{name}#{calls[name]}"
        is_conv = isinstance(module, CONV_TYPES)
        pair = (lambda v: "x".join(str(i) for i in v)) if is_conv else (lambda v: "")
        rows.append(
            LayerCost(
                index=len(rows),
                name=name,
                type=type(module).__name__,
                in_shape=tuple(inp.shape[1:]),
                out_shape=tuple(out.shape[1:]),
                kernel=pair(module.kernel_size) if is_conv else "",
                stride=pair(module.stride) if is_conv else "",
                groups=int(getattr(module, "groups", 1)),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=_layer_macs(module, inp, out),
                cio=inp.numel() + out.numel() if is_conv else 0,
            )
        )

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, CONV_TYPES + LINEAR_TYPES)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_chans, img_size, img_size, device=_device_of(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def model_cost(model: nn.Module, img_size: int, in_chans: int = 3) -> dict[str, float]:
    """Cost of one image: ``params_m``, ``macs_g``, ``bflops`` (2 x MACs / 1e9) and ``cio_m``.

    The public entry for the training code (``record['cio_m']``); our hook counter, whose
    BFLOPs agree with :func:`count_bflops` within 1 % on every registered model.
    """
    layers = layer_costs(model, img_size, in_chans)
    macs = sum(layer.macs for layer in layers)
    return {
        "params_m": count_params_m(model),
        "macs_g": macs / 1e9,
        "bflops": 2 * macs / 1e9,
        "cio_m": sum(layer.cio for layer in layers) / 1e6,
    }


def per_layer_table(model: nn.Module, img_size: int, in_chans: int = 3):
    """Per-layer cost (paper Figure 7) as a DataFrame in execution order; sums to the model total."""
    import pandas as pd

    layers = layer_costs(model, img_size, in_chans)
    df = pd.DataFrame([{**asdict(layer), "bflops": layer.bflops} for layer in layers])
    for col in ("in_shape", "out_shape"):
        df[col] = df[col].map(lambda s: "x".join(str(i) for i in s))
    df["macs_m"] = df["macs"] / 1e6
    df["cio_m"] = df["cio"] / 1e6
    df["share_pct"] = 100 * df["macs"] / df["macs"].sum()
    df["stage"] = df["name"].map(_stage_of)
    return df[["index", "name", "stage", "type", "in_shape", "out_shape", "kernel", "stride", "groups",
               "params", "macs_m", "bflops", "share_pct", "cio_m"]]


def _stage_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "stages" and len(parts) > 1:
        return f"stages.{parts[1]}"
    return parts[0]


def bottleneck(table) -> dict[str, Any]:
    """The computational bottleneck: the single layer with the most BFLOPs."""
    row = table.loc[table["bflops"].idxmax()]
    return {"layer": row["name"], "bflops": float(row["bflops"]), "share_pct": float(row["share_pct"])}


def dense_block_cio(c: int, m: int, d: int) -> float:
    """FACTS.md's CIO per pixel of a dense block: base width c, m layers of growth d."""
    return c * m + (m * m + m) * d / 2


def partial_dense_block_cio(c: int, m: int, d: int) -> float:
    """FACTS.md's CIO per pixel of a partial dense block (half of the c base channels go in)."""
    return (c * m + (m * m + m) * d) / 2


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
