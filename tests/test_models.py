"""Model zoo: published cost, CSP channel bookkeeping, timm API, axes and errors.

Cost is counted with ``torch.utils.flop_counter.FlopCounterMode`` (independent of the project's
profiler): BFLOPs = counter total / 1e9 (the counter already reports 2 x MACs).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import csp_ablate.models as models
from csp_ablate.errors import ConfigError
from csp_ablate.models.layers import (
    DenseBlock,
    LeakyReLU01,
    TwoWayDenseLayer,
    bottleneck_channels,
    get_act_layer,
    sparse_sources,
)
from csp_ablate.models.peleenet import FUSIONS, PeleeStage, split_channels

GAMMAS = (0.25, 0.5, 0.75)
STAGE_WIDTHS = [128, 256, 512, 704]
STAGE_INPUTS = [32, 128, 256, 512]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: with other jobs on the 2 cores, 2 OpenMP threads run ~15x slower than 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cost(name: str, **kwargs) -> tuple[float, float]:
    """(params in M, BFLOPs) at 1x3x224x224, 1000 classes."""
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224))
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 1e9


@pytest.fixture(scope="module")
def peleenet_cost() -> tuple[float, float]:
    return _cost("peleenet")


# --- published cost ---------------------------------------------------------------------------
def test_peleenet_cost_matches_paper(peleenet_cost):
    params, bflops = peleenet_cost
    assert params == pytest.approx(2.79, rel=0.02)
    assert bflops == pytest.approx(1.017, rel=0.02)
    # the exact reading of FACTS.md (stem block, 2-way dense layers, no compression)
    assert params == pytest.approx(2.802, abs=0.002)
    assert bflops == pytest.approx(1.016, abs=0.002)


def test_csppeleenet_cost_matches_paper(peleenet_cost):
    params, bflops = _cost("csppeleenet", gamma=0.5, fusion="csp")
    assert params == pytest.approx(2.83, rel=0.03)
    assert bflops == pytest.approx(0.888, rel=0.03)
    delta = 100 * (bflops / peleenet_cost[1] - 1)
    assert delta == pytest.approx(-13, abs=4)


def test_speleenet_cost_matches_readme():
    params, bflops = _cost("speleenet")
    assert params == pytest.approx(2.39, rel=0.05)
    assert bflops == pytest.approx(0.904, rel=0.05)


@pytest.mark.parametrize(
    ("gamma", "fusion", "paper_delta"),
    [(0.25, "csp", -3), (0.25, "last", -11), (0.5, "last", -21)],
)
def test_csp_compute_deltas_match_paper(peleenet_cost, gamma, fusion, paper_delta):
    _, bflops = _cost("csppeleenet", gamma=gamma, fusion=fusion)
    assert 100 * (bflops / peleenet_cost[1] - 1) == pytest.approx(paper_delta, abs=4)


def test_fusion_none_is_peleenet():
    torch.manual_seed(0)
    plain = timm.create_model("peleenet", num_classes=10).eval()
    single = timm.create_model("csppeleenet", fusion="none", num_classes=10).eval()
    single.load_state_dict(plain.state_dict())  # same modules, same shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(single(x), plain(x))


# --- CSP channel bookkeeping ------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_stage_widths_and_wiring(gamma, fusion):
    model = timm.create_model("csppeleenet", gamma=gamma, fusion=fusion, num_classes=10)
    assert [f["num_chs"] for f in model.feature_info] == STAGE_WIDTHS
    assert model.num_features == 704
    for stage, c_in, c_out in zip(model.stages, STAGE_INPUTS, STAGE_WIDTHS):
        bypass = 0 if fusion == "none" else int(gamma * c_in)
        assert stage.bypass_chs == bypass and stage.dense_chs == c_in - bypass
        assert stage.blocks.out_chs == c_out - bypass
        assert stage.out_chs == c_out
        has_pre, has_post = not isinstance(stage.transition_pre, nn.Identity), not isinstance(
            stage.transition_post, nn.Identity
        )
        assert (has_pre, has_post) == {
            "none": (True, False), "csp": (True, True), "first": (False, True), "last": (True, False)
        }[fusion]
        if has_pre:  # the partial transition keeps the dense output width
            assert stage.transition_pre.conv.in_channels == stage.transition_pre.conv.out_channels
            assert stage.transition_pre.conv.in_channels == c_out - bypass
        if has_post:
            assert stage.transition_post.conv.in_channels == stage.transition_post.conv.out_channels == c_out
    feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 704, 2, 2)


def test_csp_pool_sits_before_the_final_transition():
    stage = PeleeStage(32, 2, fusion="csp", gamma=0.5).eval()
    calls = []
    for name in ("transition_pre", "pool", "transition_post"):
        getattr(stage, name).register_forward_hook(lambda m, i, o, n=name: calls.append((n, o.shape[-1])))
    with torch.no_grad():
        stage(torch.randn(1, 32, 8, 8))
    assert calls == [("transition_pre", 8), ("pool", 4), ("transition_post", 4)]


def test_fusion_last_bypass_reaches_the_output_untouched():
    stage = PeleeStage(32, 2, fusion="last", gamma=0.25).eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        out = stage(x)
    assert out.shape == (2, 32 - 8 + 64 + 8, 4, 4)
    torch.testing.assert_close(out[:, -8:], nn.functional.avg_pool2d(x[:, :8], 2))


@pytest.mark.parametrize("gamma", [1e-3, 0.1, 1 / 3, 0.6, 0.999])
def test_any_gamma_gives_integer_channels(gamma):
    for c in STAGE_INPUTS:
        cb = split_channels(c, gamma)
        assert isinstance(cb, int) and 1 <= cb <= c - 1
    model = timm.create_model("csppeleenet", gamma=gamma, fusion="csp", num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bottleneck_rule_of_the_official_port():
    # int(k/2 * bw / 4) * 4 with bw = 1, 2, 4; capped to int(in/8)*4 when above in/2
    assert [bottleneck_channels(128, 32, bw) for bw in (1, 2, 4)] == [16, 32, 64]
    assert bottleneck_channels(32, 32, 1) == 16  # 16 is not > 32/2: no cap
    assert bottleneck_channels(100, 32, 4) == 48  # 64 > 50: int(100/8)*4
    assert bottleneck_channels(3, 32, 4) == 4  # floor for very thin inputs
    # the partial block keeps PeleeNet's widths: 16 of the 1x1 outputs per branch in stage 1
    stage = PeleeStage(32, 3, bottleneck_width=1, fusion="csp", gamma=0.5)
    assert [layer.inter_chs for layer in stage.blocks.layers] == [16, 16, 16]


# --- sparse and grouped variants ----------------------------------------------------------------
def test_sparse_sources_are_exponentially_spaced():
    assert [sparse_sources(i) for i in range(1, 7)] == [[0], [0, 1], [1, 2], [0, 2, 3], [1, 3, 4], [2, 4, 5]]
    block = DenseBlock(64, 6, connectivity="sparse")
    widths = [64] + [32] * 6
    assert [layer.in_chs for layer in block.layers] == [sum(widths[j] for j in s) for s in block.sources]
    assert block.out_chs == 64 + 6 * 32
    assert block(torch.randn(1, 64, 4, 4)).shape == (1, 256, 4, 4)


def test_peleenext_uses_group_convs_in_3x3_only():
    model = timm.create_model("peleenext", num_classes=10)
    layers = [m for m in model.modules() if isinstance(m, TwoWayDenseLayer)]
    assert layers and all(l.conv1x1.conv.groups == 1 for l in layers)
    assert all(l.branch1.conv.groups == 4 and l.branch2[1].conv.groups == 4 for l in layers)
    with pytest.raises(ConfigError, match="groups"):
        timm.create_model("peleenext", groups=3)


# --- timm API and features_only -----------------------------------------------------------------
def test_registered_and_axes_table():
    for name in models.PELEE_MODELS:
        assert name in timm.list_models(name)
    assert set(models.MODEL_AXES) == set(models.PELEE_MODELS) | set(models.TIMM_MODELS)
    partial = {"csppeleenet", *models.CSP_BASES}  # CSPPeleeNet and the CSP transform's bases
    assert all(models.MODEL_AXES[n] == {"gamma", "fusion", "activation"} for n in partial)
    assert all(models.MODEL_AXES[n] == {"activation"} for n in models.MODEL_AXES if n not in partial)


@pytest.mark.parametrize("name", models.PELEE_MODELS)
def test_features_only_strides_and_channels(name):
    """Taps before each stage's pool, as timm's DenseNet: strides 4/8/16/32, strictly increasing."""
    feat = timm.create_model(name, features_only=True)
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    assert feat.feature_info.channels() == STAGE_WIDTHS
    outs = feat(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == STAGE_WIDTHS
    assert [64 // o.shape[-1] for o in outs] == [4, 8, 16, 32]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_feature_taps_sit_before_the_pool(fusion):
    """The tap of stage i is what its pool reads; the classifier's features are unchanged."""
    torch.manual_seed(0)
    model = timm.create_model("csppeleenet", fusion=fusion, gamma=0.5, num_classes=10).eval()
    seen = []
    for stage in model.stages[:3]:
        stage.pool.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert len(seen) == 6  # three pools, run by forward_intermediates and by forward_features
    for tap, pooled_input in zip(taps, seen[:3]):
        torch.testing.assert_close(tap, pooled_input)


def test_features_for_a_detector():
    feat = timm.create_model("csppeleenet", features_only=True, out_indices=(1, 2, 3), in_chans=1)
    assert feat.feature_info.reduction() == [8, 16, 32]
    outs = feat(torch.randn(1, 1, 96, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(256, 12, 12), (512, 6, 6), (704, 3, 3)]
    # pruned: nothing after the last tap is kept (a stage-2 tap drops stage 3, stage 2's pool)
    short = timm.create_model("csppeleenet", features_only=True, out_indices=(0, 2))
    assert len(short.model.stages) == 3 and isinstance(short.model.stages[2].pool, nn.Identity)
    assert [tuple(o.shape[1:]) for o in short(torch.randn(1, 3, 64, 64))] == [(128, 16, 16), (512, 4, 4)]


def test_timm_model_api():
    model = timm.create_model("csppeleenet", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    assert model.get_classifier().out_features == 10
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    final, inter = model.forward_intermediates(x)
    assert [t.shape[1] for t in inter] == STAGE_WIDTHS and final.shape[1] == 704
    assert model.pretrained_cfg["first_conv"] == "stem.stem1.conv"
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == 3


def test_pretrained_is_refused_without_download():
    with pytest.raises(ConfigError, match="pretrained"):
        timm.create_model("peleenet", pretrained=True)
    with pytest.raises(ConfigError, match="pretrained"):
        models.create_backbone("cspresnet50", pretrained=True)


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("peleenet", {}), ("csppeleenet", {}), ("csppeleenet", dict(gamma=0.25, fusion="first")),
     ("speleenet", {}), ("peleenext", {})],
)
def test_small_forward_backward(name, kwargs, in_chans):
    model = timm.create_model(name, num_classes=10, in_chans=in_chans, **kwargs)
    x = torch.randn(2, in_chans, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.stem1.conv.weight.grad.abs().sum() > 0


def test_fashion_mnist_size_input():
    model = timm.create_model("csppeleenet", fusion="last", num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# --- activation axis ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("activation", "cls"), [("leaky", LeakyReLU01), ("relu", nn.ReLU), ("swish", nn.SiLU), ("mish", nn.Mish)]
)
def test_activation_axis_changes_module_types(activation, cls):
    model = timm.create_model("csppeleenet", activation=activation, num_classes=10)
    acts = [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.Mish))]
    assert acts and set(acts) == {cls}
    assert get_act_layer(activation) is cls


def test_default_activation_is_darknet_leaky():
    model = timm.create_model("peleenet")
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.1 for m in acts)
    assert get_act_layer(None) is LeakyReLU01


@pytest.mark.parametrize("name", models.TIMM_MODELS)
@pytest.mark.parametrize(("activation", "cls"), [("leaky", LeakyReLU01), ("swish", nn.SiLU)])
def test_create_backbone_maps_activation_for_table3_models(name, activation, cls):
    model = models.create_backbone(name, activation=activation, num_classes=10)
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.Mish))}
    assert acts == {cls}
    if activation == "leaky":
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_create_backbone_pelee_family():
    model = models.create_backbone("csppeleenet", activation="mish", gamma=0.75, fusion="last", num_classes=10)
    assert model.stages[1].bypass_chs == 96
    assert any(isinstance(m, nn.Mish) for m in model.modules())


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0, 1, 1.5, -0.5, True, "0.5"])
def test_bad_gamma(gamma):
    with pytest.raises(ConfigError) as err:
        timm.create_model("csppeleenet", gamma=gamma)
    msg = str(err.value)
    assert "'gamma'" in msg and "(0, 1)" in msg


def test_bad_fusion():
    with pytest.raises(ConfigError) as err:
        timm.create_model("csppeleenet", fusion="middle")
    msg = str(err.value)
    assert "'fusion'" in msg and "'middle'" in msg
    assert all(f in msg for f in FUSIONS)


def test_bad_activation():
    with pytest.raises(ConfigError, match=r"'activation'.*leaky, relu, swish, mish"):
        timm.create_model("peleenet", activation="gelu")
    with pytest.raises(ConfigError, match="'activation'"):
        models.create_backbone("darknet53", activation="gelu")


@pytest.mark.parametrize("name", ["peleenet", "speleenet", "peleenext"])
@pytest.mark.parametrize("axis", [dict(gamma=0.5), dict(fusion="csp")])
def test_axes_that_do_not_apply_are_rejected(name, axis):
    with pytest.raises(ConfigError, match=f"'{next(iter(axis))}'.*'{name}'"):
        timm.create_model(name, **axis)
    with pytest.raises(ConfigError, match=f"'{next(iter(axis))}'"):
        models.create_backbone(name, **axis)


def test_create_backbone_rejects_unknown_model_and_axes():
    with pytest.raises(ConfigError, match="'model'.*csppeleenet"):
        models.create_backbone("vgg16")
    with pytest.raises(ConfigError, match="'gamma'.*'cspresnet50'"):
        models.create_backbone("cspresnet50", gamma=0.5)
