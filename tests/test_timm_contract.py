"""timm's model contract (its ``tests/test_models.py``) for every registered PeleeNet model.

timm does not ship its tests, so the checks are mirrored here, one test per timm test:
``test_model_forward``, ``test_model_backward``, ``test_model_default_cfgs``,
``test_model_forward_features`` (``features_only``), ``test_model_forward_intermediates``,
``test_model_forward_torchscript`` and ``test_model_forward_fx_torchscript``, plus
``reset_classifier``. timm runs them at the default 224x224 input; here the input is small (fast
on a shared CPU) and the expected spatial sizes are derived from it. The TorchScript checks run
for every fusion x γ, the others for the four entrypoints and one CSP setting per fusion; the γ = 0.25 / 0.75 scripting cases are
marked ``slow`` (``pytest -m "slow or not slow"``).
"""

import math

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules, set_layer_config
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import csp_ablate.models as models
from csp_ablate.models.peleenet import FUSIONS

SIZE = 64  # input side: four 2x pools after the stride-4 stem leave a 2x2 map
BATCH = 2
GAMMAS = (0.25, 0.5, 0.75)


def _variant(name: str, **kwargs) -> object:
    """A pytest param; γ other than the default 0.5 is marked slow (scripting takes seconds each)."""
    marks = [pytest.mark.slow] if kwargs.get("gamma", 0.5) != 0.5 else []
    return pytest.param(name, kwargs, marks=marks, id=name + "".join(f"-{v}" for v in kwargs.values()))


#: every registered model, and every fusion x γ of CSPPeleeNet (fusion none ignores γ: once)
VARIANTS = [_variant(name) for name in models.PELEE_MODELS] + [
    _variant("csppeleenet", fusion=f, gamma=g) for f in FUSIONS if f != "none" for g in GAMMAS
] + [_variant("csppeleenet", fusion="none")]
#: the four entrypoints plus one CSP setting per fusion, for the checks that do not vary with γ
BASIC = [(name, {}) for name in models.PELEE_MODELS] + [("csppeleenet", dict(fusion=f)) for f in FUSIONS]
BASIC_IDS = [name + "".join(f"-{v}" for v in kw.values()) for name, kw in BASIC]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _input(in_chans: int = 3) -> torch.Tensor:
    return torch.randn(BATCH, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _pool_size(size: int = SIZE) -> int:
    return math.ceil(size / 32)  # ceil-mode pools: the default cfg's 7x7 at 224


@pytest.mark.parametrize(("name", "kwargs"), BASIC, ids=BASIC_IDS)
def test_model_forward(name, kwargs):
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = model(_input())
    assert out.shape == (BATCH, 7) and not torch.isnan(out).any()


@pytest.mark.parametrize(("name", "kwargs"), BASIC, ids=BASIC_IDS)
def test_model_backward(name, kwargs):
    model = timm.create_model(name, num_classes=7, **kwargs).train()
    out = model(_input())
    out.mean().backward()
    params = list(model.parameters())
    assert params and all(p.grad is not None for p in params), "every parameter gets a gradient"
    assert out.shape == (BATCH, 7) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", models.PELEE_MODELS)
def test_model_default_cfgs(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "pool_size", "mean", "std", "crop_pct", "interpolation", "first_conv",
                "classifier", "num_classes"):
        assert key in cfg, key
    assert cfg["pool_size"] == (math.ceil(cfg["input_size"][1] / 32), math.ceil(cfg["input_size"][2] / 32))
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    assert model.num_classes == cfg["num_classes"] and model.num_features > 0 and model.head_hidden_size > 0
    x = _input()
    with torch.no_grad():
        feats = model.forward_features(x)  # unpooled
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (BATCH, model.num_features, _pool_size(), _pool_size())
        assert pre.shape == (BATCH, model.head_hidden_size)
        model.reset_classifier(0)  # pooled features
        out = model(x)
        assert out.shape == pre.shape
        torch.testing.assert_close(out, pre)
        model.reset_classifier(0, "")  # neither pool nor classifier
        assert model(x).shape == feats.shape
        bare = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert bare(x).shape == feats.shape


@pytest.mark.parametrize("name", models.PELEE_MODELS)
def test_reset_classifier(name):
    model = timm.create_model(name, num_classes=10).eval()
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    with torch.no_grad():
        assert model(_input()).shape == (BATCH, 3)


@pytest.mark.parametrize(("name", "kwargs"), BASIC, ids=BASIC_IDS)
def test_model_forward_features(name, kwargs):
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    assert all(a < b for a, b in zip(reductions, reductions[1:])), f"strides not increasing: {reductions}"
    with torch.no_grad():
        outs = model(_input())
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[0] == BATCH and o.shape[1] == c
        assert o.shape[2] <= math.ceil(SIZE / r) and o.shape[3] <= math.ceil(SIZE / r)
        assert not torch.isnan(o).any()


@pytest.mark.parametrize(("name", "kwargs"), BASIC, ids=BASIC_IDS)
def test_model_forward_intermediates(name, kwargs):
    model = timm.create_model(name, **kwargs).eval()
    info = timm.models.FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    x = _input()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == len(info.channels()) >= 3
        for c, r, o in zip(info.channels(), info.reduction(), inter):
            assert o.shape[:2] == (BATCH, c)
            assert o.shape[2] <= math.ceil(SIZE / r) and o.shape[3] <= math.ceil(SIZE / r)
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        final2, inter2 = model.forward_intermediates(x)
    for a, b in zip(inter, inter2):
        torch.testing.assert_close(a, b)
    assert model.forward_intermediates(x, indices=2, intermediates_only=True)[0].shape == inter[-2].shape


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS)
def test_model_forward_torchscript(name, kwargs):
    with set_layer_config(scriptable=True):
        model = timm.create_model(name, num_classes=5, **kwargs).eval()
    scripted = torch.jit.script(model)
    x = _input()
    with torch.no_grad():
        out, eager = scripted(x), model(x)
    assert out.shape == (BATCH, 5) and not torch.isnan(out).any()
    torch.testing.assert_close(out, eager)


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS)
def test_model_forward_fx_torchscript(name, kwargs):
    """timm's ``_create_fx_model``: FX-trace to the last graph node, then script the graph module."""
    with set_layer_config(exportable=True):
        model = timm.create_model(name, num_classes=5, **kwargs).eval()
    tracer_kwargs = dict(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                        eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    scripted = torch.jit.script(fx_model.eval())
    x = _input()
    with torch.no_grad():
        out = torch.cat(tuple(scripted(x).values()))
        eager = model(x)
    assert out.shape == (BATCH, 5) and not torch.isnan(out).any()
    torch.testing.assert_close(out, eager)
