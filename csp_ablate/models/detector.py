"""The YOLOv3-style detector of Table 2: backbone → [SPP] → neck → [SAM] → head (mmdetection order).

:func:`build_detector` is the one place that turns the config's axes (``model``, ``neck``,
``extras``, ``activation``) into a module: any registered backbone with ``features_only``
support gives its last feature map at strides 8, 16 and 32; ``extras`` toggle SPP on the
deepest map, SAM on each neck output and swish in neck and head (``giou`` is a loss option,
see :class:`csp_ablate.models.heads.YoloLoss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from csp_ablate.errors import ConfigError
from csp_ablate.models.heads import STRIDES, YoloHead, postprocess
from csp_ablate.models.layers import get_act_layer
from csp_ablate.models.necks import NECKS, SPP, SpatialAttention

EXTRAS: tuple[str, ...] = ("giou", "spp", "sam", "swish")


def detection_taps(feature_info: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the last feature map at each of the strides 8, 16, 32."""
    taps = []
    for stride in STRIDES:
        matches = [i for i, f in enumerate(feature_info) if f["reduction"] == stride]
        if not matches:
            raise ConfigError(
                f"The backbone has no feature map at stride {stride} (it has "
                f"{sorted({f['reduction'] for f in feature_info})}); the detector needs strides 8, 16, 32."
            )
        taps.append(matches[-1])
    return taps


def build_detection_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A registered model as a feature extractor at strides 8/16/32 (timm's ``features_only``)."""
    from csp_ablate.models import create_backbone

    try:
        probe = create_backbone(name, features_only=True, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # timm raises various errors for models without feature taps
        raise ConfigError(
            f"model={name} cannot serve as a detection backbone: it does not support timm's "
            f"features_only ({type(exc).__name__}: {exc}). Use model=csppeleenet or peleenet."
        ) from None
    info = getattr(probe.feature_info, "info", None) or list(probe.feature_info)  # every tap, not just the taken
    taps = detection_taps(info)
    return create_backbone(name, features_only=True, out_indices=tuple(taps), **kwargs)


class YoloDetector(nn.Module):
    """Backbone, optional SPP, neck, optional SAM, YOLOv3 head; ``forward`` returns raw maps."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: YoloHead, spp: nn.Module | None = None,
                 sam: nn.ModuleList | None = None) -> None:
        super().__init__()
        self.backbone, self.spp, self.neck, self.sam, self.head = backbone, spp, neck, sam, head

    @property
    def anchors(self) -> torch.Tensor:
        return self.head.anchors

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.backbone(x))
        if self.spp is not None:
            feats[-1] = self.spp(feats[-1])
        outs = self.neck(feats)
        if self.sam is not None:
            outs = [att(o) for att, o in zip(self.sam, outs)]
        return self.head(outs)


class DetectorInference(nn.Module):
    """Whole-detector inference (forward + decode + NMS): what ``fps`` measures."""

    def __init__(self, detector: YoloDetector, **postprocess_kwargs: Any) -> None:
        super().__init__()
        self.detector = detector
        self.kwargs = postprocess_kwargs

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return postprocess(self.detector(x), self.detector.anchors, img_size=x.shape[-1], **self.kwargs)


def check_extras(extras: Sequence[str]) -> list[str]:
    """Sorted, de-duplicated extras; unknown names are a :class:`ConfigError`."""
    extras = [str(e) for e in (extras or [])]
    for e in extras:
        if e not in EXTRAS:
            raise ConfigError.bad_value("extras", e, EXTRAS, "e.g. extras=[giou,sam]")
    return sorted(set(extras))


def build_detector(model_cfg: dict[str, Any], neck: str, extras: Sequence[str], num_classes: int,
                   anchors: Sequence[Sequence[Sequence[float]]], in_chans: int = 3,
                   neck_channels: int = 128) -> YoloDetector:
    """Assemble the detector from config values (``model_cfg``: the ``model`` group as a dict)."""
    kwargs = dict(model_cfg)
    name = kwargs.pop("name")
    kwargs.pop("drop_rate", None)
    extras = check_extras(extras)
    if neck not in NECKS:
        raise ConfigError.bad_value("neck", neck, list(NECKS))
    backbone = build_detection_backbone(name, in_chans=in_chans, **kwargs)
    channels = backbone.feature_info.channels()
    act = get_act_layer("swish" if "swish" in extras else (kwargs.get("activation") or "leaky"))
    spp = SPP(channels[-1], act_layer=act) if "spp" in extras else None
    neck_module = NECKS[neck](channels, neck_channels, act_layer=act)
    sam = nn.ModuleList(SpatialAttention(c) for c in neck_module.out_channels) if "sam" in extras else None
    head = YoloHead(neck_module.out_channels, num_classes, anchors, act_layer=act,
                    expand=getattr(neck_module, "head_expand", 1))
    return YoloDetector(backbone, neck_module, head, spp=spp, sam=sam)
