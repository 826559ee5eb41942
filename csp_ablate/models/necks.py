"""Feature-pyramid necks of the paper's Table 2, one module each, one interface.

Every neck takes the backbone's feature maps at strides 8, 16, 32 (``in_channels``, finest
first) and returns three maps at the same strides with ``out_channels`` channels each, so the
YOLOv3-style head (:mod:`csp_ablate.models.heads`) and the ``sam`` extra never care which neck
ran (the mmdetection neck contract). The paper describes the necks in one paragraph and a
figure (CSPNet §3.2, Fig. 6); where it is silent we follow the cited designs and say so:

* :class:`PRN` (``neck=prn``, the paper's baseline; also plain FPN): top-down fusion of the
  current and the previous (coarser) scale only, FPN style -- a 1×1 lateral per scale, the
  upsampled coarser result *added*, a 3×3 smoothing conv. The PRN paper's partial residual
  connections live in the authors' darknet cfg, not in the CSPNet text; FPN's sum is the
  "current and previous scale" fusion the text names.
* :class:`CEMSAM` (``neck=cem_sam``): ThunderNet's Context Enhancement Module -- C4, the
  upsampled C5 and the global average pool of C5, each projected by a 1×1 conv, *summed* at
  stride 16 -- followed by ThunderNet's Spatial Attention Module, which re-weights the context
  map with ``sigmoid(BN(1×1(rpn)))`` where ``rpn`` is ThunderNet's light RPN trunk (5×5
  depthwise + 1×1). ThunderNet is two-stage and single-scale; for our three-scale head the
  stride-8 map is the upsampled attended map plus a C3 lateral, the stride-32 map a stride-2
  3×3 conv of it (our choice, documented in the README).
* :class:`GFM` (``neck=gfm``): Global Fusion Model -- every output scale concatenates *all*
  input scales (1×1-projected, resized by nearest upsampling or max-pool downsampling), then a
  1×1 fuses the 3·C channels and a 3×3 smooths.
* :class:`EFM` (``neck=efm``): Exact Fusion Model -- output scale ``s`` takes only scales
  ``s-1, s, s+1`` (those that exist) and compresses them with **Maxout**: the candidates are
  stacked and the channel-wise maximum is kept (what darknet's ``[maxpool] maxpool_depth=1
  out_channels=C`` does on a route of the three maps), then a 3×3 conv. The paper applies
  Maxout to the raw maps; ours are first 1×1-projected to ``C`` because Maxout needs equal
  widths.

* :class:`YOLOv3Neck` (``neck=yolov3``, not a Table 2 row): YOLOv3's own neck -- five-conv sets
  (1×1/3×3 alternating) per scale, widths 128/256/512, top-down by 1×1 + upsample + concat --
  for the paper's Figure 7 "PeleeNet-YOLO" (its head doubles the width in the 3×3 conv).

The ``swish`` extra is passed in as ``act_layer`` (SiLU instead of leaky ReLU in neck + head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from csp_ablate.models.layers import ConvNormAct, LeakyReLU01

NUM_LEVELS = 3  # strides 8, 16, 32


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling to a finer scale, max-pool to a coarser one (no-op when equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] < size[0]:
        return F.interpolate(x, size=size, mode="nearest")
    return F.adaptive_max_pool2d(x, size)


class Neck(nn.Module):
    """Common constructor and contract: ``forward(list of 3 maps) -> list of 3 maps``."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128,
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__()
        if len(in_channels) != NUM_LEVELS:
            raise ValueError(f"{type(self).__name__} needs {NUM_LEVELS} input scales, got {len(in_channels)}")
        self.in_channels = list(in_channels)
        self.out_channels = [out_channels] * NUM_LEVELS
        self.laterals = nn.ModuleList(ConvNormAct(c, out_channels, 1, act_layer=act_layer) for c in in_channels)

    def _check(self, feats: Sequence[torch.Tensor]) -> None:
        if len(feats) != NUM_LEVELS:
            raise ValueError(f"{type(self).__name__} expects {NUM_LEVELS} feature maps, got {len(feats)}")


class PRN(Neck):
    """FPN-style top-down path: scale s = lateral(s) + upsample(result of s+1), then 3×3."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128,
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__(in_channels, out_channels, act_layer)
        self.smooth = nn.ModuleList(ConvNormAct(out_channels, out_channels, 3, act_layer=act_layer)
                                    for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(feats)
        lat = [conv(f) for conv, f in zip(self.laterals, feats)]
        top = lat[-1]
        merged = [top]
        for level in range(NUM_LEVELS - 2, -1, -1):
            top = lat[level] + resize_to(top, lat[level].shape[-2:])
            merged.insert(0, top)
        return [conv(m) for conv, m in zip(self.smooth, merged)]


class CEMSAM(nn.Module):
    """ThunderNet's CEM (C4 + up(C5) + GAP(C5) at stride 16) and SAM, spread to three scales."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128,
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__()
        if len(in_channels) != NUM_LEVELS:
            raise ValueError(f"CEMSAM needs {NUM_LEVELS} input scales, got {len(in_channels)}")
        c3, c4, c5 = in_channels
        c = out_channels
        self.in_channels, self.out_channels = list(in_channels), [c] * NUM_LEVELS
        # CEM: three 1x1 projections summed (ThunderNet uses linear 1x1s; BN keeps training stable)
        self.cem_c4 = ConvNormAct(c4, c, 1, act_layer=nn.Identity)
        self.cem_c5 = ConvNormAct(c5, c, 1, act_layer=nn.Identity)
        self.cem_glb = ConvNormAct(c5, c, 1, act_layer=nn.Identity)
        # SAM: ThunderNet's RPN trunk (5x5 depthwise + 1x1) -> 1x1 + BN -> sigmoid re-weighting
        self.rpn = nn.Sequential(ConvNormAct(c, c, 5, groups=c, act_layer=act_layer),
                                 ConvNormAct(c, c, 1, act_layer=act_layer))
        self.sam = ConvNormAct(c, c, 1, act_layer=nn.Identity)
        self.lateral3 = ConvNormAct(c3, c, 1, act_layer=act_layer)
        self.out8 = ConvNormAct(c, c, 3, act_layer=act_layer)
        self.out16 = ConvNormAct(c, c, 3, act_layer=act_layer)
        self.out32 = ConvNormAct(c, c, 3, stride=2, act_layer=act_layer)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != NUM_LEVELS:
            raise ValueError(f"CEMSAM expects {NUM_LEVELS} feature maps, got {len(feats)}")
        f3, f4, f5 = feats
        size16 = f4.shape[-2:]
        glb = self.cem_glb(F.adaptive_avg_pool2d(f5, 1))
        cem = self.cem_c4(f4) + resize_to(self.cem_c5(f5), size16) + glb  # GAP broadcast over HxW
        attended = cem * torch.sigmoid(self.sam(self.rpn(cem)))
        p8 = self.out8(self.lateral3(f3) + resize_to(attended, f3.shape[-2:]))
        p16 = self.out16(attended)
        p32 = self.out32(attended)
        if p32.shape[-2:] != f5.shape[-2:]:  # odd sizes: keep the head's strides exact
            p32 = resize_to(p32, f5.shape[-2:])
        return [p8, p16, p32]


class GFM(Neck):
    """Global fusion: every output scale concatenates all three (resized) input scales."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128,
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__(in_channels, out_channels, act_layer)
        c = out_channels
        self.fuse = nn.ModuleList(
            nn.Sequential(ConvNormAct(NUM_LEVELS * c, c, 1, act_layer=act_layer),
                          ConvNormAct(c, c, 3, act_layer=act_layer))
            for _ in in_channels
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(feats)
        lat = [conv(f) for conv, f in zip(self.laterals, feats)]
        return [
            fuse(torch.cat([resize_to(x, lat[s].shape[-2:]) for x in lat], dim=1))
            for s, fuse in enumerate(self.fuse)
        ]


class EFM(Neck):
    """Exact fusion: scale s takes scales s-1, s, s+1 and keeps their channel-wise max (Maxout)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128,
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__(in_channels, out_channels, act_layer)
        self.smooth = nn.ModuleList(ConvNormAct(out_channels, out_channels, 3, act_layer=act_layer)
                                    for _ in in_channels)

    @staticmethod
    def neighbours(level: int) -> list[int]:
        """The scales output ``level`` fuses: ``level-1, level, level+1`` clipped to 0..2."""
        return [t for t in (level - 1, level, level + 1) if 0 <= t < NUM_LEVELS]

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(feats)
        lat = [conv(f) for conv, f in zip(self.laterals, feats)]
        outs = []
        for s, smooth in enumerate(self.smooth):
            size = lat[s].shape[-2:]
            stacked = torch.stack([resize_to(lat[t], size) for t in self.neighbours(s)], dim=0)
            outs.append(smooth(stacked.amax(dim=0)))  # Maxout over the candidate maps
        return outs


class YOLOv3Neck(nn.Module):
    """YOLOv3's neck (darknet ``yolov3.cfg``): per scale a 5-conv set, coarse to fine, with routes.

    ``out_channels`` is ignored in favour of YOLOv3's widths ``(128, 256, 512)`` scaled by
    ``width / 128`` so that PeleeNet-YOLO keeps darknet's proportions; the YOLOv3 head doubles
    them in its 3×3 conv (``head_expand=2``).
    """

    head_expand = 2

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128,
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__()
        if len(in_channels) != NUM_LEVELS:
            raise ValueError(f"YOLOv3Neck needs {NUM_LEVELS} input scales, got {len(in_channels)}")
        widths = [out_channels * f for f in (1, 2, 4)]
        self.in_channels, self.out_channels = list(in_channels), widths

        def conv_set(c_in: int, c: int) -> nn.Sequential:  # 1x1 c, 3x3 2c, 1x1 c, 3x3 2c, 1x1 c
            return nn.Sequential(*(ConvNormAct(c_in if i == 0 else (2 * c if i % 2 == 0 else c),
                                               c if i % 2 == 0 else 2 * c, 1 if i % 2 == 0 else 3,
                                               act_layer=act_layer) for i in range(5)))

        self.sets = nn.ModuleList([
            conv_set(in_channels[0] + widths[0], widths[0]),
            conv_set(in_channels[1] + widths[1], widths[1]),
            conv_set(in_channels[2], widths[2]),
        ])
        self.routes = nn.ModuleList([ConvNormAct(widths[1], widths[0], 1, act_layer=act_layer),
                                     ConvNormAct(widths[2], widths[1], 1, act_layer=act_layer)])

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != NUM_LEVELS:
            raise ValueError(f"YOLOv3Neck expects {NUM_LEVELS} feature maps, got {len(feats)}")
        p32 = self.sets[2](feats[2])
        p16 = self.sets[1](torch.cat([feats[1], resize_to(self.routes[1](p32), feats[1].shape[-2:])], dim=1))
        p8 = self.sets[0](torch.cat([feats[0], resize_to(self.routes[0](p16), feats[0].shape[-2:])], dim=1))
        return [p8, p16, p32]


NECKS: dict[str, type[nn.Module]] = {
    "prn": PRN, "cem_sam": CEMSAM, "gfm": GFM, "efm": EFM,
    "fpn": PRN,            # the same module under FPN's name
    "yolov3": YOLOv3Neck,  # Figure 7's PeleeNet-YOLO
}


class SPP(nn.Module):
    """``extras=[spp]``: YOLOv3-SPP's block on the deepest map (1×1, max-pools 5/9/13, concat, 1×1).

    Keeps the channel count, so any neck accepts its output unchanged.
    """

    def __init__(self, channels: int, pool_sizes: Sequence[int] = (5, 9, 13),
                 act_layer: type[nn.Module] = LeakyReLU01) -> None:
        super().__init__()
        hidden = channels // 2
        self.reduce = ConvNormAct(channels, hidden, 1, act_layer=act_layer)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in pool_sizes)
        self.expand = ConvNormAct(hidden * (len(pool_sizes) + 1), channels, 1, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.expand(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


class SpatialAttention(nn.Module):
    """``extras=[sam]``: point-wise spatial attention ``x * sigmoid(BN(1×1(x)))`` on a neck output.

    ThunderNet's SAM re-weights with a map computed from its RPN features; a one-stage detector
    has none, so the map is computed from the feature itself (as YOLOv4's modified SAM does).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = ConvNormAct(channels, channels, 1, act_layer=nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))
