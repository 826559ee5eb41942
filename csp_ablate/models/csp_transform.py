"""CSP as a transform: γ and fusion on the stages of a timm backbone (DenseNet, ResNet/ResNeXt, DarkNet).

:func:`csp_transform` rewrites the stages of an already built timm model in place;
``timm.create_model('csp_<base>', gamma=…, fusion=…)`` (``csp_densenet121``, ``csp_resnet50``,
``csp_resnext50_32x4d``, ``csp_darknet53``) builds timm's ``<base>`` with the same kwargs and
transforms it, ``features_only``/``out_indices``/``num_classes``/``in_chans`` included.

Design rules -- one set for every family (CSPPeleeNet's :class:`~csp_ablate.models.peleenet.PeleeStage`
is this same stage with an empty entry and a dense block; it is not rebuilt on this helper only
because it predates it)
    * A stage is ``entry -> blocks -> exit``. The *entry* is what changes the stage's
      resolution or width before its blocks (DarkNet's ``conv_down``; ResNet's first bottleneck
      with its projection shortcut; nothing in DenseNet). It stays whole: its output is the
      stage's *base feature map*, as in the authors' CSPDarkNet/CSPResNeXt, where a
      down-sampling conv precedes the split.
    * Split: the first ``c_b = clamp(floor(γ·c + 0.5), 1, c - 1)`` of the base map's ``c``
      channels bypass the blocks (:func:`~csp_ablate.models.peleenet.split_channels`), the
      other ``c_d = c - c_b`` go through them.
    * Blocks are rebuilt with timm's own constructors (``DenseBlock``, ``Bottleneck``,
      ``DarkBlock``): a variant changes what a block reads, never how wide it is inside. A dense
      block reads ``c_d`` and keeps its growth rate and bottleneck; a residual block (whose
      output is added to its input) reads and writes ``c_d`` and keeps its bottleneck width
      (ResNe(X)t's ``width``, DarkNet's ``mid``) -- exactly CSPDarkNet-53's and CSPResNeXt-50's
      blocks at γ=0.5.
    * Every fusion keeps every stage's output width ``w`` (the untransformed stage's), so the
      next stage and the head are unchanged. Partial transition (csp, last): a 1x1 on the block
      path, at its resolution, keeping its width -- except in ``last``, where it writes
      ``w - c_b`` so that the concat is ``w`` (it takes over the compression of DenseNet's
      transition; in PeleeNet, DarkNet and ResNet ``w - c_b`` *is* the block path's width).
    * Merge: ``concat(block path, bypass)``, then the stage's exit down-sampling (DenseNet's
      2x2 average pool) and only then the final 1x1 transition (csp, first) to ``w``, at the
      output resolution (CSPPeleeNet's reading that reproduces the published cost).
    * Fusions: ``none`` (3a) = the untransformed backbone (γ unused; the model is returned
      untouched, bit-identical); ``csp`` (3b) = blocks -> partial transition -> concat -> final
      transition; ``first`` (3c) = blocks -> concat -> final transition; ``last`` (3d) =
      blocks -> partial transition -> concat.
    * 1x1 transitions follow the family's conv style: conv-BN-act (DarkNet, ResNet) or
      pre-activation BN-act-conv (DenseNet), with the backbone's own activation and norm.
      New convs get kaiming-normal (fan-out) init, BNs 1/0; rebuilt residual blocks are
      zero-initialised last where the backbone's were.
    * ``split='conv'`` (fidelity only) splits like the authors' darknet cfgs: a 1x1 conv-BN-act
      from ``c`` to ``expand·c`` channels before the split (timm's ``conv_exp``).

Feature taps (``features_only``) are the backbone's own (``feature_info`` module names); a tap
on a transformed stage sees its output (DenseNet: the concat before the exit, whose width is
``w`` for ``last``). Measured cost of every γ × fusion: ``python -m csp_ablate.profile transform=true``.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from timm.layers import BatchNormAct2d, ConvNormAct
from timm.models import build_model_with_cfg, register_model
from torch import nn

# CSP_BASES: timm backbones with a registered ``csp_<name>`` wrapper (any ResNet/ResNeXt with
# bottleneck blocks, DenseNet or DarkNet built by timm can be passed to csp_transform directly);
# an axis value (``model=<base> gamma=... fusion=...``), so its one list is the torch-free axes'.
from csp_ablate.axes import CSP_BASES
from csp_ablate.errors import ConfigError
from csp_ablate.models.peleenet import check_fusion, check_gamma, split_channels

__all__ = ["CSP_BASES", "SPLITS", "CrossStagePartial", "build_csp_stage", "csp_transform", "csp_name"]

SPLITS: tuple[str, ...] = ("slice", "conv")

Conv1x1 = Callable[[int, int], nn.Module]


def csp_name(base: str) -> str:
    """Registered timm name of the transformed ``base`` (``densenet121`` -> ``csp_densenet121``)."""
    return f"csp_{base}"


class CrossStagePartial(nn.Module):
    """``entry -> split_conv -> (bypass | blocks -> transition_pre) -> concat -> exit``.

    ``exit`` holds the exit pool and the final transition (``nn.Identity`` when they live in the
    backbone's own transition slot, as DenseNet's do).
    """

    def __init__(self, entry: nn.Module, split_conv: nn.Module, bypass_chs: int, block_chs: int,
                 blocks: nn.Module, transition_pre: nn.Module, exit: nn.Module, merge_chs: int) -> None:
        super().__init__()
        self.entry, self.split_conv, self.blocks = entry, split_conv, blocks
        self.transition_pre, self.exit = transition_pre, exit
        self.bypass_chs, self.block_chs, self.merge_chs = bypass_chs, block_chs, merge_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bypass, x = self.split_conv(self.entry(x)).split([self.bypass_chs, self.block_chs], dim=1)
        return self.exit(torch.cat([self.transition_pre(self.blocks(x)), bypass], dim=1))


def build_csp_stage(
    *, entry: nn.Module, base_chs: int, out_chs: int, gamma: float, fusion: str,
    make_blocks: Callable[[int], tuple[nn.Module, int]], make_conv: Conv1x1,
    pool: nn.Module | None = None, exit_in_slot: bool = False, split: str = "slice", expand: float = 1.0,
) -> tuple[CrossStagePartial, nn.Module | None]:
    """One CSP stage by the module's rules; returns it and, with ``exit_in_slot``, its exit.

    Args:
        entry: the stage's untouched entry (``nn.Identity()`` if none); writes ``base_chs``.
        out_chs: the untransformed stage's output width ``w``.
        make_blocks: ``c_d -> (blocks reading c_d, their output width)``.
        make_conv: ``(in, out) -> 1x1 transition`` in the family's style.
        pool: the stage's exit down-sampling (before the final transition), if any.
        exit_in_slot: return ``pool -> final transition`` separately (for a backbone whose
            transition is its own module, e.g. DenseNet's ``features.transitionN``).
    """
    if split not in SPLITS:
        raise ConfigError.bad_value("split", split, SPLITS)
    split_chs = base_chs if split == "slice" else int(round(expand * base_chs))
    split_conv = nn.Identity() if split == "slice" else make_conv(base_chs, split_chs)
    bypass = split_channels(split_chs, gamma)
    blocks, block_out = make_blocks(split_chs - bypass)
    pre_out = out_chs - bypass if fusion == "last" else block_out
    if pre_out < 1:
        raise ConfigError(f"fusion=last at γ={gamma}: the bypass ({bypass} ch) is as wide as the stage output "
                          f"({out_chs} ch), so the partial transition would have no channels; use a smaller γ.")
    pre = make_conv(block_out, pre_out) if fusion in ("csp", "last") else nn.Identity()
    merged = pre_out + bypass
    parts = [pool] if pool is not None else []
    if fusion in ("csp", "first"):
        parts.append(make_conv(merged, out_chs))
    exit = nn.Sequential(*parts) if parts else nn.Identity()
    _init_new([split_conv, pre, exit])
    stage = CrossStagePartial(entry, split_conv, bypass, split_chs - bypass, blocks, pre,
                              nn.Identity() if exit_in_slot else exit, merged)
    return stage, (exit if exit_in_slot else None)


def _init_new(modules: Sequence[nn.Module]) -> None:
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _act_like(act: nn.Module) -> Callable[..., nn.Module]:
    """Factory of copies of ``act`` (class and arguments, e.g. a LeakyReLU's slope)."""
    def make(*_args, **_kwargs) -> nn.Module:
        return copy.deepcopy(act)
    return make


def _bn_like(bn: nn.BatchNorm2d) -> Callable[..., nn.Module]:
    return functools.partial(nn.BatchNorm2d, eps=bn.eps, momentum=bn.momentum)


def _drop_path(block: nn.Module) -> float:
    return float(getattr(getattr(block, "drop_path", None), "drop_prob", 0.0) or 0.0)


def _finish_blocks(new: list[nn.Module], old: Sequence[nn.Module], last_bn: Callable[[nn.Module], nn.Module]):
    """Init rebuilt residual blocks like the backbone's (zero last BN where it was zero)."""
    _init_new(new)
    for n, o in zip(new, old):
        weight = last_bn(o).weight  # on the meta device (cost counting) there are no values to copy
        if hasattr(n, "zero_init_last") and not weight.is_meta and not weight.detach().any():
            n.zero_init_last()
    return nn.Sequential(*new)


# --- family adapters: find the stages, rebuild their blocks ----------------------------------------
def _darknet(model: nn.Module, gamma: float, fusion: str, split: str, expand: Sequence[float]) -> None:
    from timm.models.cspnet import DarkBlock, DarkStage

    for i, stage in enumerate(model.stages):
        if not isinstance(stage, DarkStage) or not all(isinstance(b, DarkBlock) for b in stage.blocks):
            raise ConfigError(f"CSP transform: stage {i} of this CspNet is {type(stage).__name__}, not a DarkStage of "
                              "DarkBlocks (it may already be cross-stage partial, e.g. timm's cspdarknet53).")
        old = list(stage.blocks)
        ref = old[0]
        act, bn = _act_like(ref.conv1.bn.act), _bn_like(ref.conv1.bn)
        mid, chs = ref.conv1.conv.out_channels, ref.conv1.conv.in_channels

        def make_blocks(c_d: int, old=old, mid=mid, act=act, bn=bn) -> tuple[nn.Module, int]:
            new = [DarkBlock(c_d, c_d, dilation=o.conv2.conv.dilation[0], bottle_ratio=mid / c_d,
                             groups=o.conv2.conv.groups, act_layer=act, norm_layer=bn, drop_path=_drop_path(o))
                   for o in old]
            return _finish_blocks(new, old, lambda b: b.conv2.bn), c_d

        conv = functools.partial(_conv_norm_act, act=act, bn=bn)
        model.stages[i], _ = build_csp_stage(entry=stage.conv_down, base_chs=chs, out_chs=chs, gamma=gamma,
                                             fusion=fusion, make_blocks=make_blocks, make_conv=conv,
                                             split=split, expand=expand[i])


def _conv_norm_act(in_chs: int, out_chs: int, act: Callable[..., nn.Module], bn: Callable[..., nn.Module]):
    return ConvNormAct(in_chs, out_chs, 1, act_layer=act, norm_layer=bn)


def _resnet(model: nn.Module, gamma: float, fusion: str, split: str, expand: Sequence[float]) -> None:
    from timm.models.resnet import Bottleneck

    for i, name in enumerate(f"layer{j}" for j in range(1, 5)):
        layer = getattr(model, name)
        old = list(layer)[1:]
        if not all(isinstance(b, Bottleneck) and b.se is None and isinstance(b.aa, nn.Identity) for b in layer):
            raise ConfigError(f"CSP transform: ResNet {name} is not made of plain Bottleneck blocks (BasicBlock, "
                              "attention or anti-aliasing have no transform rule here).")
        entry = layer[0]
        chs = entry.conv3.out_channels
        ref = old[0] if old else entry
        width, card = ref.conv2.out_channels, ref.conv2.groups
        act, bn = _act_like(ref.act1), _bn_like(ref.bn1)

        def make_blocks(c_d: int, old=old, width=width, card=card, act=act, bn=bn) -> tuple[nn.Module, int]:
            if c_d % Bottleneck.expansion:
                raise ConfigError(f"CSP transform: γ={gamma} leaves {c_d} block channels in a ResNet stage, not "
                                  f"a multiple of the bottleneck expansion {Bottleneck.expansion}; use γ in "
                                  "0.25/0.5/0.75.")
            planes = c_d // Bottleneck.expansion  # out = planes·4 = c_d; base_width keeps the inner width
            new = [Bottleneck(c_d, planes, cardinality=card, base_width=64 * width / (card * planes) + 1e-6,
                              dilation=o.conv2.dilation[0], act_layer=act, norm_layer=bn,
                              drop_path=copy.deepcopy(o.drop_path))
                   for o in old]
            assert all(b.conv2.out_channels == width for b in new), "bottleneck width not kept"
            return _finish_blocks(new, old, lambda b: b.bn3), c_d

        conv = functools.partial(_conv_norm_act, act=act, bn=bn)
        stage, _ = build_csp_stage(entry=entry, base_chs=chs, out_chs=chs, gamma=gamma, fusion=fusion,
                                   make_blocks=make_blocks, make_conv=conv, split=split, expand=expand[i])
        setattr(model, name, stage)


def _densenet(model: nn.Module, gamma: float, fusion: str, split: str, expand: Sequence[float]) -> None:
    from timm.models.densenet import DenseBlock, DenseTransition

    feats = model.features
    names = [n for n, m in feats.named_children() if isinstance(m, DenseBlock)]
    for i, name in enumerate(names):
        block, trans_name = getattr(feats, name), f"transition{name[len('denseblock'):]}"
        trans = getattr(feats, trans_name, None)
        layers = list(block.values())
        ref = layers[0]
        chs, growth = ref.conv1.in_channels, ref.conv2.out_channels
        bn_size = ref.conv1.out_channels // growth
        norm = functools.partial(BatchNormAct2d, eps=ref.norm1.eps, momentum=ref.norm1.momentum,
                                 act_layer=_act_like(ref.norm1.act))
        dense_out = chs + len(layers) * growth
        if trans is not None and not isinstance(trans, DenseTransition):
            raise ConfigError(f"CSP transform: DenseNet {trans_name} is {type(trans).__name__}, not a DenseTransition.")
        out_chs = trans.conv.out_channels if trans is not None else dense_out

        def make_blocks(c_d: int, layers=layers, bn_size=bn_size, growth=growth, norm=norm) -> tuple[nn.Module, int]:
            new = DenseBlock(len(layers), c_d, bn_size, growth, norm_layer=norm, drop_rate=layers[0].drop_rate,
                             grad_checkpointing=layers[0].grad_checkpointing)
            _init_new([new])
            return new, c_d + len(layers) * growth

        def make_conv(in_chs: int, out: int, norm=norm) -> nn.Module:
            return nn.Sequential(OrderedDict(norm=norm(in_chs), conv=nn.Conv2d(in_chs, out, 1, bias=False)))

        pool = None if trans is None else copy.deepcopy(trans.pool)
        stage, exit = build_csp_stage(entry=nn.Identity(), base_chs=chs, out_chs=out_chs, gamma=gamma, fusion=fusion,
                                      make_blocks=make_blocks, make_conv=make_conv, pool=pool,
                                      exit_in_slot=trans is not None, split=split, expand=expand[i])
        setattr(feats, name, stage)
        if exit is not None:
            setattr(feats, trans_name, exit)
        for info in model.feature_info:  # a tap on the block now sees the concat
            if info["module"] == f"features.{name}":
                info["num_chs"] = stage.merge_chs


def _adapter(model: nn.Module) -> Callable[..., None]:
    from timm.models.cspnet import CspNet
    from timm.models.densenet import DenseNet
    from timm.models.resnet import ResNet

    for cls, fn in ((CspNet, _darknet), (ResNet, _resnet), (DenseNet, _densenet)):
        if isinstance(model, cls):
            return fn
    raise ConfigError(
        f"CSP transform: timm model {type(model).__name__} has none of the stage layouts it can split: "
        "`stages[i]` DarkStages with `conv_down` + `blocks` (CspNet DarkNet), `layer1..layer4` of Bottleneck "
        "blocks (ResNet/ResNeXt), or `features.denseblockN` + `transitionN` (DenseNet)."
    )


def csp_transform(model: nn.Module, gamma: float | None, fusion: str, split: str = "slice",
                  expand: float | Sequence[float] = 1.0) -> nn.Module:
    """Turn every stage of a timm backbone into a CSP stage (in place); see the module rules.

    ``fusion='none'`` returns ``model`` untouched. ``expand`` (with ``split='conv'``) is one
    factor or one per stage. Raises :class:`ConfigError` for a backbone it cannot handle.
    """
    fusion = check_fusion(fusion)
    if fusion == "none":
        return model
    gamma = check_gamma(gamma)
    adapter = _adapter(model)
    n_stages = len(model.feature_info)
    factors = [float(expand)] * n_stages if isinstance(expand, (int, float)) else [float(e) for e in expand]
    if split == "slice" and any(f != 1.0 for f in factors):
        raise ConfigError.bad_value("expand", expand, "1.0 with split='slice' (only split='conv' expands)")
    adapter(model, gamma, fusion, split, factors + [1.0] * n_stages)
    model.csp_gamma, model.csp_fusion = gamma, fusion
    return model


# --- timm registration ---------------------------------------------------------------------------
def _build(base: str, gamma: float | None, fusion: str, split: str, expand, **kwargs) -> nn.Module:
    import timm

    return csp_transform(timm.create_model(base, pretrained=False, **kwargs), gamma, fusion, split, expand)


def _base_cfg(base: str) -> dict:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(base).to_dict()
    cfg.update(url="", hf_hub_id=None, license="none (architecture only, no weights)")
    return cfg


default_cfgs = {csp_name(b): _base_cfg(b) for b in CSP_BASES}
#: darknet's features include the stride-1 stem, as timm's own ``_create_cspnet`` sets.
_OUT_INDICES = {"darknet53": (0, 1, 2, 3, 4, 5)}


def _create(base: str, pretrained: bool, gamma: float | None, fusion: str, split: str = "slice",
            expand: float | Sequence[float] = 1.0, **kwargs) -> nn.Module:
    if pretrained:
        raise ConfigError.bad_value("pretrained", pretrained, [False], hint="The transform has no weights.")
    feature_cfg = dict(flatten_sequential=True)
    if base in _OUT_INDICES:
        feature_cfg["out_indices"] = kwargs.pop("out_indices", _OUT_INDICES[base])
    return build_model_with_cfg(_build, csp_name(base), False, feature_cfg=feature_cfg, base=base,
                                gamma=gamma, fusion=fusion, split=split, expand=expand, **kwargs)


@register_model
def csp_densenet121(pretrained: bool = False, gamma: float | None = 0.5, fusion: str = "csp", **kwargs):
    """timm's DenseNet-121 with CSP stages (``gamma``, ``fusion``; ``fusion='none'``: DenseNet-121)."""
    return _create("densenet121", pretrained, gamma, fusion, **kwargs)


@register_model
def csp_resnet50(pretrained: bool = False, gamma: float | None = 0.5, fusion: str = "csp", **kwargs):
    """timm's ResNet-50 with CSP stages (not timm's darknet-derived ``cspresnet50``)."""
    return _create("resnet50", pretrained, gamma, fusion, **kwargs)


@register_model
def csp_resnext50_32x4d(pretrained: bool = False, gamma: float | None = 0.5, fusion: str = "csp", **kwargs):
    """timm's ResNeXt-50 32x4d with CSP stages (not timm's darknet-derived ``cspresnext50``)."""
    return _create("resnext50_32x4d", pretrained, gamma, fusion, **kwargs)


@register_model
def csp_darknet53(pretrained: bool = False, gamma: float | None = 0.5, fusion: str = "csp", **kwargs):
    """timm's DarkNet-53 with CSP stages; ``split='conv', expand=(2, 1, 1, 1, 1)`` at γ=0.5 csp is
    timm's ``cspdarknet53`` layer for layer (see :mod:`csp_ablate.profile.transform`)."""
    return _create("darknet53", pretrained, gamma, fusion, **kwargs)
