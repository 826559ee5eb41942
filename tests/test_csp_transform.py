"""The CSP transform (csp_ablate.models.csp_transform): shapes, gradients, rules, fidelity, sweep."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from conftest import REPO, run_cli
from torch import nn

from csp_ablate import models
from csp_ablate.profile import transform as transform_fidelity
from csp_ablate.errors import ConfigError
from csp_ablate.models.csp_transform import CSP_BASES, CrossStagePartial, csp_name, csp_transform
from csp_ablate.models.peleenet import FUSIONS, split_channels

FAMILIES = CSP_BASES  # densenet121, resnet50, resnext50_32x4d, darknet53: the four real families


def _stages(model: nn.Module) -> list[CrossStagePartial]:
    return [m for m in model.modules() if isinstance(m, CrossStagePartial)]


# --- shapes and gradients: every family x fusion --------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("base", FAMILIES)
def test_shapes_and_gradients(base, fusion):
    torch.manual_seed(0)
    model = models.create_backbone(base, gamma=0.5, fusion=fusion, num_classes=10, activation="leaky")
    assert len(_stages(model)) == (0 if fusion == "none" else 4 if base != "darknet53" else 5)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for i, stage in enumerate(_stages(model)):  # the new parts learn: transitions and rebuilt blocks
        for part in ("blocks", "transition_pre", "exit"):
            params = list(getattr(stage, part).parameters())
            assert not params or any(p.grad.abs().sum() > 0 for p in params), (i, part)


@pytest.mark.parametrize("base", FAMILIES)
def test_features_only_in_chans_and_stage_widths(base):
    """Every fusion keeps the stage widths (the next stage and the head are unchanged); shapes on meta."""
    with torch.device("meta"):
        ref = timm.create_model(base, features_only=True, in_chans=1)
    for fusion in ("csp", "first", "last"):
        with torch.device("meta"):
            model = timm.create_model(csp_name(base), gamma=0.25, fusion=fusion, features_only=True, in_chans=1)
            feats = model(torch.randn(1, 1, 64, 64))
        assert [f.shape[1] for f in feats] == model.feature_info.channels()
        assert model.feature_info.reduction() == ref.feature_info.reduction()
        assert [64 // f.shape[-1] for f in feats] == ref.feature_info.reduction()
        if base != "densenet121":
            assert model.feature_info.channels() == ref.feature_info.channels()


def test_densenet_taps_see_the_concat():
    """DenseNet taps the block output (before its transition): csp/first keep it, last is the stage output."""
    ref = timm.create_model("densenet121", features_only=True).feature_info.channels()
    first = timm.create_model("csp_densenet121", gamma=0.5, fusion="first", features_only=True)
    last = timm.create_model("csp_densenet121", gamma=0.5, fusion="last", features_only=True)
    assert first.feature_info.channels() == ref == [64, 256, 512, 1024, 1024]
    assert last.feature_info.channels() == [64, 128, 256, 512, 1024]  # = the transitions' outputs


# --- design rules -------------------------------------------------------------------------------
def test_split_and_inner_widths_follow_the_rules():
    model = timm.create_model("csp_resnext50_32x4d", gamma=0.25, fusion="csp")
    base = timm.create_model("resnext50_32x4d")
    for i, stage in enumerate(_stages(model)):
        orig = getattr(base, f"layer{i + 1}")
        width = orig[0].conv3.out_channels
        assert stage.bypass_chs == split_channels(width, 0.25) and stage.block_chs == width - stage.bypass_chs
        for new, old in zip(stage.blocks, list(orig)[1:]):  # reads/writes c_d, keeps its grouped inner width
            assert new.conv1.in_channels == new.conv3.out_channels == stage.block_chs
            assert (new.conv2.out_channels, new.conv2.groups) == (old.conv2.out_channels, old.conv2.groups)
        assert stage.entry is not None and stage.entry.downsample is not None  # the projection block stays whole
    dark = timm.create_model("csp_darknet53", gamma=0.5, fusion="last")
    for stage in _stages(dark):
        assert stage.transition_pre.conv.out_channels == stage.block_chs  # last: w - c_b = c_d
        assert isinstance(stage.exit, nn.Identity)
        assert stage.blocks[0].conv1.conv.out_channels == stage.block_chs  # mid c/2 = c_d at γ=0.5


def test_new_layers_use_the_backbones_activation():
    model = models.create_backbone("darknet53", activation="swish", gamma=0.5, fusion="csp")
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.Mish))}
    assert acts == {nn.SiLU}


# --- fusion=none is the untransformed backbone ------------------------------------------------------
@pytest.mark.parametrize("base", FAMILIES)
def test_fusion_none_is_bit_identical(base):
    torch.manual_seed(0)
    plain = timm.create_model(base, num_classes=10).eval()
    torch.manual_seed(0)
    none = timm.create_model(csp_name(base), gamma=0.5, fusion="none", num_classes=10).eval()
    torch.manual_seed(0)
    via_cli = models.create_backbone(base, fusion="none", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = plain(x)
        for model in (none, via_cli):
            assert model.state_dict().keys() == plain.state_dict().keys()
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
            assert torch.equal(model(x), expected)
    assert not _stages(models.create_backbone(base))  # no axes: timm's own model (the Table 3 baseline)


# --- errors -----------------------------------------------------------------------------------------
def test_unsupported_backbones_name_what_is_missing():
    with torch.device("meta"):
        with pytest.raises(ConfigError, match=r"Sequential has none of the stage layouts.*layer1\.\.layer4"):
            csp_transform(nn.Sequential(nn.Conv2d(3, 8, 3)), 0.5, "csp")
        with pytest.raises(ConfigError, match="not a DarkStage.*cspdarknet53"):
            csp_transform(timm.create_model("cspdarknet53"), 0.5, "csp")
        with pytest.raises(ConfigError, match="not made of plain Bottleneck blocks"):
            csp_transform(timm.create_model("resnet18"), 0.5, "last")
        with pytest.raises(ConfigError, match="multiple of the bottleneck expansion"):
            csp_transform(timm.create_model("resnet50"), 0.3, "csp")
    with pytest.raises(ConfigError, match="needs fusion"):
        models.create_backbone("resnet50", gamma=0.5)
    with pytest.raises(ConfigError, match="needs gamma"):
        models.create_backbone("densenet121", fusion="last")
    with pytest.raises(ConfigError, match="'fusion'"):
        models.create_backbone("densenet121", gamma=0.5, fusion="middle")


def test_cli_axes_apply_to_the_bases_only(compose):
    from csp_ablate.validate import CSP_BASES as TORCH_FREE_COPY
    from csp_ablate.validate import validate_config

    assert TORCH_FREE_COPY == CSP_BASES
    cfg = compose("model=densenet121", "gamma=0.5", "fusion=last")
    validate_config(cfg)
    assert (cfg.model.name, cfg.model.gamma, cfg.model.fusion) == ("densenet121", 0.5, "last")
    plain = compose("model=resnet50")
    assert (plain.model.gamma, plain.model.fusion) == (None, None)  # untouched Table 3 baseline
    with pytest.raises(ConfigError, match="does not apply to model=cspresnet50.*densenet121"):
        validate_config(compose("model=cspresnet50", "gamma=0.5"))


# --- fidelity, counted by FlopCounterMode --------------------------------------------------------------
def test_darknet53_to_csp_fidelity():
    table = transform_fidelity.darknet_fidelity().set_index("variant")
    exact = table.loc["transform, split='conv', expand=(2,1,1,1,1)"]
    timm_ref = table.loc["timm cspdarknet53"]
    assert exact["params_m"] == pytest.approx(27.642, abs=1e-3) and exact["bflops"] == pytest.approx(13.067, abs=1e-3)
    assert exact["params_m"] == timm_ref["params_m"] and exact["bflops"] == timm_ref["bflops"]  # layer for layer
    assert exact["within_3pct"] and abs(exact["bflops_vs_readme_pct"]) < 0.1  # README 27.61M / 13.07
    # the plain (slice) transform: the gap is the two darknet-cfg differences, each measured
    plain, conv = table.loc["transform (slice split)"], table.loc["transform, split='conv'"]
    assert not plain["within_3pct"] and plain["bflops_vs_timm_pct"] == pytest.approx(-10.53, abs=0.05)
    assert abs(conv["params_m_vs_timm_pct"]) < 0.1  # the 1x1 split convs are the params gap
    for i in range(1, 5):  # with them, stages 2-5 match; what is left is stage 1's expansion
        assert conv[f"stage{i}_bflops"] == pytest.approx(timm_ref[f"stage{i}_bflops"])
    assert conv["stage0_bflops"] < timm_ref["stage0_bflops"]


def test_delta_table_and_files(tmp_path):
    table = transform_fidelity.delta_table(bases=["densenet121"], gammas=[0.5])
    assert list(table["fusion"]) == ["none", "csp", "first", "last"]
    row = table.set_index("fusion")
    assert row.loc["none", "bflops"] == pytest.approx(5.668, abs=2e-3)  # densenet121 at 224
    assert row.loc["last", "bflops_delta_pct"] < row.loc["csp", "bflops_delta_pct"]
    transform_fidelity.plot_deltas(table, tmp_path / "deltas.png")
    assert (tmp_path / "deltas.png").stat().st_size > 1000
    committed = pd.read_csv(REPO / transform_fidelity.OUT_DIR / "deltas.csv")
    assert len(committed) == len(CSP_BASES) * 10  # base + 3 γ x 3 fusions per base


# --- the transfer sweep at smoke tier -------------------------------------------------------------------
def _transfer_sweep(tmp_path, data_override, *grid: str):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", "sweep=figure4_transfer", "model=densenet121", "tier=smoke", "logger=none", "seed=0",
                   f"hydra.sweep.dir={sweep_dir}", "data.train_subset=128", "data.eval_subset=64", *grid,
                   *data_override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_csv(sweep_dir / "runs.csv")
    assert set(runs["model"]) == {"densenet121"} and runs["bflops"].notna().all()
    return sweep_dir, proc, pd.read_csv(sweep_dir / "claims.csv").set_index("claim")


def test_figure4_transfer_smoke_sweep_reduced_grid(tmp_path, data_override):
    """(a) vs (d), the comparison Figure 4 is about: two jobs (~1 min idle, ~2 min on the loaded 2-core box)."""
    sweep_dir, proc, claims = _transfer_sweep(tmp_path, data_override, "fusion=none,last")
    assert "figure4_transfer: 2 completed, 0 failed" in proc.stdout
    table = pd.read_csv(sweep_dir / "figure4_transfer.csv").set_index("row")
    assert list(table.index) == ["none", "csp", "first", "last"]  # every spec row; the unrun ones empty
    assert table["n"].fillna(0).astype(int).to_dict() == {"none": 1, "csp": 0, "first": 0, "last": 1}
    assert claims.loc["t4_last_bflops", "verdict"] == "reproduced"  # densenet121 γ=0.5 last: -11.8 %
    assert claims.loc["t4_last_bflops", "measured"] == pytest.approx(-11.78, abs=0.05)
    assert "transferred" in claims.loc["t4_last_bflops", "source"]
    assert (sweep_dir / "figure4_transfer.png").exists()


@pytest.mark.slow
def test_figure4_transfer_smoke_sweep_full_grid(tmp_path, data_override):
    sweep_dir, proc, claims = _transfer_sweep(tmp_path, data_override)
    assert "figure4_transfer: 4 completed, 0 failed" in proc.stdout
    assert list(pd.read_csv(sweep_dir / "figure4_transfer.csv")["fusion"]) == ["none", "csp", "first", "last"]
    assert claims.loc["t4_csp_bflops", "verdict"] == "contradicted"  # densenet121 γ=0.5 csp: +2.3 %
    assert {"t4_first_top1", "t4_last_vs_first_top1", "t4_csp_top1"} <= set(claims.index)
