"""PeleeNet and the Table 1 ablation family: CSPPeleeNet, SPeleeNet, PeleeNeXt.

All four are one network, :class:`PeleeNet`, with one set of design rules; the registered timm
entrypoints only pick the stage type.

PeleeNet (Wang et al. 2018)
    Stem block (stride 4, 32 channels); four stages of [3, 4, 8, 6] 2-way dense layers, growth
    rate 32, bottleneck widths [1, 2, 4, 4] (bottleneck rule of the official PyTorch port, see
    :func:`~csp_ablate.models.layers.bottleneck_channels`); each stage ends in a 1x1 transition
    without compression (widths 128/256/512/704) and, in stages 1-3, a 2x2 average pool; global
    average pool and a linear classifier. Every conv is conv(no bias) -> BN -> activation;
    activation ``leaky`` (slope 0.1, darknet) by default.

CSPPeleeNet (CSPNet paper, Figure 3) -- design rules, the same for every fusion and γ
    * Every stage (all four) is partial. The stage input, ``c`` channels, is split along channels:
      the first ``c_b = clamp(floor(γ·c + 0.5), 1, c - 1)`` channels bypass the dense block, the
      other ``c_d = c - c_b`` go through it (m layers, growth k). So any γ in (0, 1) gives
      integer widths >= 1 (exact quarters for γ in {0.25, 0.5, 0.75}: c = 32/128/256/512).
    * Layer widths are PeleeNet's: each dense layer's bottleneck is sized as in the single-path
      stage (the official cap evaluated on the un-split input ``c + (i-1)·k``), i.e. 16/32/64/64
      per stage. A variant changes what a layer reads, never how wide it is. (Re-applying the
      cap to the thinner split input instead would narrow stage-1 bottlenecks: γ=0.5 CSP
      0.876 BFLOPs, γ=0.5 last −26 %; the rule kept here matches FACTS.md's reading exactly.)
    * Partial transition: 1x1, keeps the dense output width ``c_d + m·k``, at full resolution.
    * Merge: ``concat(dense path, bypass)`` -> 2x2 average pool (stages 1-3) -> final 1x1
      transition at HALF resolution (the reading that reproduces the published cost; PeleeNet's
      own order, transition then pool, costs +10.6 % BFLOPs, see FACTS.md).
    * The final transition keeps the width, so every fusion's stage outputs are 128/256/512/704,
      as in PeleeNet, and the head is unchanged.
    * Fusions: ``none`` (3a) = plain PeleeNet stage (dense -> transition -> pool; γ is unused);
      ``csp`` (3b) = dense -> partial transition -> concat -> pool -> transition;
      ``first`` (3c) = dense -> concat -> pool -> transition (no partial transition);
      ``last`` (3d) = dense -> partial transition -> concat -> pool (no final transition).

SPeleeNet (the README's SparsePeleeNet, 2.39M / 0.904 BFLOPs)
    PeleeNet whose dense layers aggregate sparsely as in SparseNet (Zhu et al. 2018): layer i
    reads only the features at offsets 1, 2, 4, 8, ... back (feature 0 = the block input), and
    keeps PeleeNet's layer widths (rule above). The block output is still the full
    concatenation (stage widths 128/256/512/704), so only the layers' 1x1 convs read less. (The
    strict SparseNet reading, where the block output is also sparse, shrinks the stage widths
    to 96/96/128/96 and the model far below the published size.)

PeleeNeXt (no published cost)
    PeleeNet with ResNeXt-style group convolution in the dense layers' three 3x3 convs,
    ``groups=4`` by default (4-channel groups on the k/2 = 16-channel outputs), widths unchanged.

Measured cost of every variant against the paper: ``docs/fidelity.md`` (regenerate with
``python -m csp_ablate.profile fidelity=true``).

Feature taps (``features_only``, ``forward_intermediates``): index i = stage i's output BEFORE
its 2x2 pool, as timm's DenseNet taps each dense block before its transition's pool: 128/256/
512/704 channels at strides 4/8/16/32 (strictly increasing; the stem, also at stride 4, is no
tap). For ``none``/``last`` the tap is the (partial) transition's output concatenated with the
bypass; for ``csp``/``first`` the final transition runs after the pool, so the tap is the
concatenation it reads (same width). The last stage has no pool: its tap is the stage output.
``features_only`` wraps the model with timm's ``FeatureGetterNet`` (``forward_intermediates``).
A detector that wants strides 8, 16, 32 uses ``out_indices=(1, 2, 3)``: stage 3's 512 channels
at stride 16 instead of the pooled 256 of stage 2.
"""

import numbers
from typing import List, Optional, Sequence, Tuple, Type, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import MATCH_PREV_GROUP, checkpoint_seq
from torch import nn

from csp_ablate.errors import ConfigError
from csp_ablate.models.layers import (
    DEFAULT_ACTIVATION,
    ConvNormAct,
    DenseBlock,
    StemBlock,
    get_act_layer,
)

__all__ = ["PeleeNet", "PeleeStage", "FUSIONS", "split_channels", "check_gamma", "check_fusion"]

FUSIONS: tuple[str, ...] = ("none", "csp", "first", "last")
CONNECTIVITY: tuple[str, ...] = ("dense", "sparse")


def check_gamma(gamma: object) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 < float(gamma) < 1.0:
        raise ConfigError.bad_value("gamma", gamma, "a number in the open interval (0, 1), e.g. 0.25, 0.5, 0.75")
    return float(gamma)


def check_fusion(fusion: object) -> str:
    if fusion not in FUSIONS:
        raise ConfigError.bad_value("fusion", fusion, FUSIONS)
    return str(fusion)


def split_channels(chs: int, gamma: float) -> int:
    """Bypass width of a partial stage: ``γ·chs`` rounded half up, clamped to [1, chs - 1]."""
    return min(max(int(gamma * chs + 0.5), 1), chs - 1)


class PeleeStage(nn.Module):
    """One (partial) dense stage: see the module docstring for the fusion rules.

    Layout: ``blocks`` -> ``transition_pre`` (full resolution) -> concat bypass -> ``pool`` ->
    ``transition_post`` (half resolution). Unused parts are ``nn.Identity``. :meth:`forward_pre`
    runs up to the pool (the feature tap), :meth:`forward_post` the pool and what follows.
    """

    def __init__(
        self,
        in_chs: int,
        num_layers: int,
        growth_rate: int = 32,
        bottleneck_width: float = 1,
        fusion: str = "none",
        gamma: float = 0.5,
        downsample: bool = True,
        connectivity: str = "dense",
        groups: int = 1,
        act_layer: Optional[Type[nn.Module]] = None,
    ) -> None:
        super().__init__()
        act_layer = act_layer or get_act_layer(DEFAULT_ACTIVATION)
        self.fusion = check_fusion(fusion)
        self.bypass_chs = 0 if fusion == "none" else split_channels(in_chs, check_gamma(gamma))
        self.dense_chs = in_chs - self.bypass_chs
        self.blocks = DenseBlock(
            self.dense_chs, num_layers, growth_rate, bottleneck_width, connectivity, groups, act_layer,
            width_ref_chs=in_chs,
        )
        dense_out = self.blocks.out_chs
        self.out_chs = dense_out + self.bypass_chs
        pre = fusion in ("none", "csp", "last")
        post = fusion in ("csp", "first")
        self.transition_pre = ConvNormAct(dense_out, dense_out, 1, act_layer=act_layer) if pre else nn.Identity()
        self.pool = (
            nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False) if downsample else nn.Identity()
        )
        self.transition_post = (
            ConvNormAct(self.out_chs, self.out_chs, 1, act_layer=act_layer) if post else nn.Identity()
        )
        self.in_chs = in_chs

    def forward_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Dense path, partial transition and bypass merge, at the stage's input resolution."""
        if self.bypass_chs > 0:
            parts = torch.split(x, [self.bypass_chs, self.dense_chs], dim=1)
            return torch.cat([self.transition_pre(self.blocks(parts[1])), parts[0]], dim=1)
        return self.transition_pre(self.blocks(x))

    def forward_post(self, x: torch.Tensor) -> torch.Tensor:
        """The 2x2 pool (stages 1-3) and the final transition (``csp``/``first``)."""
        return self.transition_post(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_post(self.forward_pre(x))


class PeleeNet(nn.Module):
    """PeleeNet / CSPPeleeNet / SPeleeNet / PeleeNeXt with timm's model API.

    Args:
        in_chans, num_classes, global_pool, drop_rate: as in timm (``drop_rate`` before the fc).
        activation: ``leaky`` (default), ``relu``, ``swish`` or ``mish``.
        fusion: ``none`` (PeleeNet), ``csp``, ``first`` or ``last``; applies to every stage.
        gamma: share of each stage's input channels that bypasses the dense block (0 < γ < 1).
        connectivity: ``dense`` (PeleeNet) or ``sparse`` (SparseNet aggregation).
        groups: groups of the dense layers' 3x3 convs (1 = PeleeNet).
        growth_rate, block_config, bottleneck_width, stem_chs: PeleeNet's architecture.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        activation: str = DEFAULT_ACTIVATION,
        fusion: str = "none",
        gamma: float = 0.5,
        connectivity: str = "dense",
        groups: int = 1,
        growth_rate: int = 32,
        block_config: Sequence[int] = (3, 4, 8, 6),
        bottleneck_width: Sequence[float] = (1, 2, 4, 4),
        stem_chs: int = 32,
    ) -> None:
        super().__init__()
        act_layer = get_act_layer(activation)
        check_fusion(fusion)
        if fusion != "none":
            check_gamma(gamma)
        if connectivity not in CONNECTIVITY:
            raise ConfigError.bad_value("connectivity", connectivity, CONNECTIVITY)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.activation, self.fusion, self.gamma = activation, fusion, gamma
        self.grad_checkpointing = False

        self.stem = StemBlock(in_chans, stem_chs, act_layer)
        stages, feature_info, chs, reduction = [], [], stem_chs, 4
        for i, (num_layers, bw) in enumerate(zip(block_config, bottleneck_width)):
            downsample = i < len(block_config) - 1
            stage = PeleeStage(
                chs, num_layers, growth_rate, bw, fusion, gamma, downsample, connectivity, groups, act_layer
            )
            stages.append(stage)
            chs = stage.out_chs
            feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"stages.{i}"))  # before its pool
            reduction *= 2 if downsample else 1
        self.feature_info = feature_info
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = chs
        self.head = ClassifierHead(chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # --- timm model API ------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        fine = [(r"^stages\.(\d+)\.blocks\.layers\.(\d+)", None), (r"^stages\.(\d+)\.transition", MATCH_PREV_GROUP)]
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else fine)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features at the ``feature_info`` taps (stage i before its pool); timm's signature.

        ``indices``: how many of the last taps (an int) or which taps (a list); all by default.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates: List[torch.Tensor] = []
        x = self.stem(x)
        last = max_index if stop_early or intermediates_only else len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if i > last:
                break
            x = stage.forward_pre(x)
            if i in take_indices:
                intermediates.append(x)
            if i == last and last < len(self.stages) - 1:
                break  # nothing after this tap is needed: the pool of a truncated model is skipped
            x = stage.forward_post(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last tap in ``indices`` (and the head); returns the taps."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[: max_index + 1]
        if max_index < len(self.feature_info) - 1:
            last = self.stages[max_index]  # its tap sits before the pool: pool and final transition go
            last.pool, last.transition_post = nn.Identity(), nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type="")
            self.num_classes = 0
        return take_indices


# --- timm registration ---------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem1.conv",
        "classifier": "head.fc",
        "license": "none (architecture only, no weights)",
        **kwargs,
    }


default_cfgs = {name: _cfg() for name in ("peleenet", "csppeleenet", "speleenet", "peleenext")}

DEFAULT_OUT_INDICES = (0, 1, 2, 3)


def _create(variant: str, pretrained: bool, allowed_axes: set[str], fixed: dict, **kwargs) -> PeleeNet:
    if pretrained:
        hint = f"No pretrained weights exist for '{variant}'; train it from scratch."
        raise ConfigError.bad_value("pretrained", pretrained, [False], hint=hint)
    for key in ("gamma", "fusion", "connectivity", "groups"):
        if key in kwargs and key not in allowed_axes:
            raise ConfigError(
                f"Invalid key '{key}' for model '{variant}': it does not apply to this model. "
                f"Allowed: {', '.join(sorted(allowed_axes | {'activation'}))}."
            )
    out_indices = kwargs.pop("out_indices", DEFAULT_OUT_INDICES)
    return build_model_with_cfg(
        PeleeNet,
        variant,
        False,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **fixed,
        **kwargs,
    )


@register_model
def peleenet(pretrained: bool = False, **kwargs) -> PeleeNet:
    """PeleeNet (Wang et al. 2018): 2.80M params, 1.016 BFLOPs."""
    return _create("peleenet", pretrained, set(), dict(fusion="none"), **kwargs)


@register_model
def csppeleenet(pretrained: bool = False, gamma: float = 0.5, fusion: str = "csp", **kwargs) -> PeleeNet:
    """CSPPeleeNet: partial dense stages, ``gamma`` bypass share, ``fusion`` in none/csp/first/last."""
    return _create(
        "csppeleenet", pretrained, {"gamma", "fusion"}, dict(gamma=check_gamma(gamma), fusion=check_fusion(fusion)),
        **kwargs,
    )


@register_model
def speleenet(pretrained: bool = False, **kwargs) -> PeleeNet:
    """SPeleeNet: PeleeNet with SparseNet-style sparse aggregation in the dense blocks."""
    return _create("speleenet", pretrained, set(), dict(fusion="none", connectivity="sparse"), **kwargs)


@register_model
def peleenext(pretrained: bool = False, groups: int = 4, **kwargs) -> PeleeNet:
    """PeleeNeXt: PeleeNet with group convolution (default 4 groups) in the dense layers' 3x3 convs."""
    return _create("peleenext", pretrained, {"groups"}, dict(fusion="none", groups=groups), **kwargs)
