"""Building blocks shared by the PeleeNet family.

* :func:`get_act_layer` maps the project's ``activation`` axis to an ``nn.Module`` class.
  ``leaky`` (the default) is darknet's leaky ReLU with slope 0.1, not PyTorch's 0.01.
* :class:`ConvNormAct`: conv (no bias) -> BatchNorm -> activation, the darknet/PeleeNet unit.
* :class:`StemBlock`: PeleeNet's stem (stride 4).
* :class:`TwoWayDenseLayer` and :class:`DenseBlock`: PeleeNet's 2-way dense layer and a dense
  block with dense (DenseNet) or sparse (SparseNet) aggregation.

Every module is TorchScript-compatible (``torch.jit.script`` and FX -> script, timm's model
contract): no ``from __future__ import annotations`` (TorchScript resolves annotations at
runtime), ``typing`` generics in the forward signatures, no nested comprehensions in ``forward``.
"""

from typing import List, Optional, Tuple, Type

import torch
from torch import nn

from csp_ablate.errors import ConfigError

ACTIVATIONS: tuple[str, ...] = ("leaky", "relu", "swish", "mish")
DEFAULT_ACTIVATION = "leaky"
LEAKY_SLOPE = 0.1  # darknet's "leaky" activation


class LeakyReLU01(nn.LeakyReLU):
    """Darknet's leaky ReLU (negative slope 0.1), constructible as ``act_layer(inplace=...)``."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(negative_slope=LEAKY_SLOPE, inplace=inplace)


_ACT_LAYERS: dict[str, Type[nn.Module]] = {
    "leaky": LeakyReLU01,
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
}


def get_act_layer(name: Optional[str] = DEFAULT_ACTIVATION) -> Type[nn.Module]:
    """Activation class for an ``activation`` axis value (``None`` means the default, leaky)."""
    if name is None:
        name = DEFAULT_ACTIVATION
    layer = _ACT_LAYERS.get(name) if isinstance(name, str) else None
    if layer is None:
        raise ConfigError.bad_value("activation", name, ACTIVATIONS)
    return layer


class ConvNormAct(nn.Sequential):
    """``conv(bias=False) -> BatchNorm2d -> act``; 'same' padding for odd kernels."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: Type[nn.Module] = LeakyReLU01,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act_layer(inplace=True)
        self.in_chs, self.out_chs = in_chs, out_chs


class StemBlock(nn.Module):
    """PeleeNet stem: 3x3 s2 conv, then [2x2 max-pool s2 | 1x1 -> 3x3 s2] concat, then 1x1.

    Output stride 4, ``out_chs`` channels (32 in PeleeNet). The max-pool uses ``ceil_mode`` (as
    Caffe/darknet do) so both branches agree in size for any input size.
    """

    def __init__(self, in_chs: int = 3, out_chs: int = 32, act_layer: Type[nn.Module] = LeakyReLU01) -> None:
        super().__init__()
        mid = out_chs // 2
        self.stem1 = ConvNormAct(in_chs, out_chs, 3, stride=2, act_layer=act_layer)
        self.stem2a = ConvNormAct(out_chs, mid, 1, act_layer=act_layer)
        self.stem2b = ConvNormAct(mid, out_chs, 3, stride=2, act_layer=act_layer)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem3 = ConvNormAct(2 * out_chs, out_chs, 1, act_layer=act_layer)
        self.out_chs = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem1(x)
        return self.stem3(torch.cat([self.pool(x), self.stem2b(self.stem2a(x))], 1))


def bottleneck_channels(in_chs: int, growth_rate: int, bottleneck_width: float) -> int:
    """Bottleneck width of a 2-way dense layer, the rule of the official PeleeNet PyTorch port.

    ``int(k/2 * bw / 4) * 4``, capped to ``int(in/8) * 4`` when it exceeds half the input
    width ``in``; floored at 4. The Table 1 variants pass the width the layer has in the
    single-path PeleeNet (see :class:`DenseBlock`), so they keep PeleeNet's bottlenecks.
    """
    inter = int(growth_rate // 2 * bottleneck_width / 4) * 4
    if inter > in_chs / 2:
        inter = int(in_chs / 8) * 4
    return max(inter, 4)


class TwoWayDenseLayer(nn.Module):
    """PeleeNet's 2-way dense layer; returns only its ``growth_rate`` new channels.

    Branch 1: 1x1 -> 3x3 (k/2 channels); branch 2: 1x1 -> 3x3 -> 3x3 (k/2 channels). ``groups``
    applies to the 3x3 convs only (PeleeNeXt). The two branch 1x1 convs read the same input and
    are computed as one conv with ``2 * inter`` outputs: identical maths, parameters and FLOPs,
    one pass over the (large) concatenated input instead of two.
    """

    def __init__(
        self,
        in_chs: int,
        growth_rate: int = 32,
        bottleneck_width: float = 1,
        groups: int = 1,
        act_layer: Type[nn.Module] = LeakyReLU01,
        width_ref_chs: Optional[int] = None,
    ) -> None:
        super().__init__()
        half = growth_rate // 2
        inter = bottleneck_channels(width_ref_chs or in_chs, growth_rate, bottleneck_width)
        if inter % groups or half % groups:
            raise ConfigError.bad_value(
                "groups", groups, f"a divisor of the 3x3 conv widths ({inter}, {half})"
            )
        self.inter_chs = inter
        self.conv1x1 = ConvNormAct(in_chs, 2 * inter, 1, act_layer=act_layer)
        self.branch1 = ConvNormAct(inter, half, 3, groups=groups, act_layer=act_layer)
        self.branch2 = nn.Sequential(
            ConvNormAct(inter, half, 3, groups=groups, act_layer=act_layer),
            ConvNormAct(half, half, 3, groups=groups, act_layer=act_layer),
        )
        self.in_chs, self.out_chs = in_chs, 2 * half

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        a, b = self.conv1x1(x).chunk(2, dim=1)
        return self.branch1(a), self.branch2(b)


def sparse_sources(layer_idx: int) -> List[int]:
    """Indices aggregated by layer ``layer_idx`` (1-based) in SparseNet (Zhu et al. 2018).

    Feature 0 is the block input, feature j the output of layer j; layer i reads the features at
    exponentially spaced offsets 1, 2, 4, 8, ... back from itself: ``i - 2**t >= 0``.
    """
    sources, offset = [], 1
    while layer_idx - offset >= 0:
        sources.append(layer_idx - offset)
        offset *= 2
    return sorted(sources)


class DenseBlock(nn.Module):
    """A stack of 2-way dense layers; output = concat(block input, every layer's new features).

    ``connectivity='dense'``: each layer reads everything before it (PeleeNet).
    ``connectivity='sparse'``: each layer reads :func:`sparse_sources` only (SparsePeleeNet);
    the block output is still the full concatenation, which the transition reads.
    ``width_ref_chs``: block input width of the single-path PeleeNet stage (default ``in_chs``).
    Layer i's bottleneck is sized as in that stage (input ``width_ref_chs + (i-1)·k``), so the
    variants (partial input, sparse inputs) change what a 1x1 reads, never the layer widths.

    Every layer consumes a concatenation of earlier features anyway, so one ``torch.cat`` per
    layer input is unavoidable; the block output is built with a single final ``torch.cat``. A
    preallocated buffer written in place would trip autograd's version checks (earlier convs
    saved views of the same storage), so it is not used. The forward keeps one flat list of
    tensors (the block input, then each layer's two branch outputs) and reads it through
    :attr:`flat_sources`, precomputed here, so it is a plain loop TorchScript compiles.
    """

    def __init__(
        self,
        in_chs: int,
        num_layers: int,
        growth_rate: int = 32,
        bottleneck_width: float = 1,
        connectivity: str = "dense",
        groups: int = 1,
        act_layer: Type[nn.Module] = LeakyReLU01,
        width_ref_chs: Optional[int] = None,
    ) -> None:
        super().__init__()
        if connectivity not in ("dense", "sparse"):
            raise ConfigError.bad_value("connectivity", connectivity, ("dense", "sparse"))
        widths = [in_chs] + [growth_rate] * num_layers
        ref = width_ref_chs or in_chs  # block input width of the single-path PeleeNet stage
        sources: List[List[int]] = []
        # flat tensor indices: feature 0 = tensor 0 (the input), feature j = tensors 2j-1, 2j (two branches)
        flat_sources: List[List[int]] = []
        layers = []
        for i in range(1, num_layers + 1):
            src = list(range(i)) if connectivity == "dense" else sparse_sources(i)
            sources.append(src)
            flat_sources.append([t for j in src for t in ([0] if j == 0 else [2 * j - 1, 2 * j])])
            layers.append(
                TwoWayDenseLayer(
                    sum(widths[j] for j in src), growth_rate, bottleneck_width, groups, act_layer,
                    width_ref_chs=ref + (i - 1) * growth_rate,
                )
            )
        self.layers = nn.ModuleList(layers)
        self.sources, self.flat_sources = sources, flat_sources
        self.in_chs, self.out_chs = in_chs, sum(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: List[torch.Tensor] = [x]
        for i, layer in enumerate(self.layers):
            parts = [feats[j] for j in self.flat_sources[i]]
            a, b = layer(parts[0] if len(parts) == 1 else torch.cat(parts, 1))
            feats.append(a)
            feats.append(b)
        return torch.cat(feats, 1)
