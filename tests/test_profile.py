"""The profiler: our counter vs FlopCounterMode, CIO, per-layer cost, fps, fidelity and the CLI.

Fast by default: the cross-check runs on every registered model at a small input (the counters
agree or not independently of the resolution); the paper's inputs are in tests marked slow.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

import csp_ablate.models as models
from csp_ablate import profile
from csp_ablate.models.layers import DenseBlock
from csp_ablate.profile import ModelSpec, build
from csp_ablate.profile.cli import check_cli
from conftest import run_cli

GAMMAS = (0.25, 0.5, 0.75)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Shared CI/dev machines: one intra-op thread keeps parallel test runs from thrashing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _agree(model: nn.Module, img_size: int) -> tuple[float, float]:
    ours = profile.model_cost(model, img_size)["bflops"]
    theirs = profile.count_bflops(model, img_size)
    return ours, theirs


# --- counters ---------------------------------------------------------------------------------
PELEE_SPECS = [ModelSpec(m) for m in ("peleenet", "speleenet", "peleenext")] + [
    ModelSpec("csppeleenet", g, f) for f in ("none", "csp", "first", "last") for g in GAMMAS
]


@pytest.mark.parametrize("spec", PELEE_SPECS, ids=lambda s: s.slug)
def test_counter_matches_flopcounter_pelee_family(spec):
    ours, theirs = _agree(build(spec), 224)
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("name", models.TIMM_MODELS)
def test_counter_matches_flopcounter_timm_models_small_input(name):
    ours, theirs = _agree(build(ModelSpec(name)), 64)
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.TIMM_MODELS)
def test_counter_matches_flopcounter_timm_models_paper_input(name):
    ours, theirs = _agree(build(ModelSpec(name)), 256)
    assert ours == pytest.approx(theirs, rel=0.01)


def test_every_registered_model_is_covered():
    covered = {s.model for s in PELEE_SPECS} | set(models.TIMM_MODELS)
    assert covered == set(models.MODEL_AXES)


def test_counter_handles_grouped_depthwise_transposed_and_linear():
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=4),      # grouped
        nn.Conv2d(16, 16, 3, padding=1, groups=16),    # depthwise
        nn.ConvTranspose2d(16, 8, 2, stride=2),        # upsampling
        nn.Conv2d(8, 4, 1, bias=True),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),
    )
    layers = profile.layer_costs(model, 8, in_chans=8)
    hw = 8 * 8
    expected = [16 * hw * (8 // 4) * 9, 16 * hw * 9, 16 * hw * 8 * 4, 4 * 4 * hw * 8, 10 * 4 * 16 * 16]
    assert [l.macs for l in layers] == expected
    assert 2 * sum(expected) / 1e9 == pytest.approx(profile.count_bflops(model, 8, in_chans=8), rel=1e-9)
    assert layers[-1].cio == 0  # CIO counts conv layers only
    assert layers[0].cio == 8 * hw + 16 * hw


def test_model_cost_api():
    cost = profile.model_cost(build(ModelSpec("peleenet")), 224)
    assert set(cost) == {"params_m", "macs_g", "bflops", "cio_m"}
    assert cost["bflops"] == pytest.approx(2 * cost["macs_g"])
    assert cost["params_m"] == pytest.approx(2.802, abs=0.002)
    assert cost["bflops"] == pytest.approx(1.016, abs=0.002)


# --- CIO --------------------------------------------------------------------------------------
class ToyDenseBlock(nn.Module):
    """DenseNet block: layer i (one conv) reads c + (i-1)·d channels and appends d."""

    def __init__(self, c: int, m: int, d: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(c + i * d, d, 3, padding=1) for i in range(m))

    def forward(self, x):
        feats = [x]
        for conv in self.layers:
            feats.append(conv(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class ToyPartialDenseBlock(nn.Module):
    """CSP: half of the c base channels bypass, the other half go through the dense block."""

    def __init__(self, c: int, m: int, d: int) -> None:
        super().__init__()
        self.half = c // 2
        self.block = ToyDenseBlock(c - self.half, m, d)

    def forward(self, x):
        bypass, x = x.split([self.half, x.shape[1] - self.half], 1)
        return torch.cat([self.block(x), bypass], 1)


def _cio_per_pixel(model: nn.Module, c: int, hw: int = 6) -> float:
    return sum(l.cio for l in profile.layer_costs(model, hw, in_chans=c)) / hw**2


@pytest.mark.parametrize("c, m, d", [(64, 4, 32), (32, 3, 32), (128, 8, 16), (10, 1, 7)])
def test_dense_block_cio_matches_closed_form(c, m, d):
    assert profile.dense_block_cio(c, m, d) == c * m + (m**2 + m) * d / 2
    assert _cio_per_pixel(ToyDenseBlock(c, m, d), c) == pytest.approx(profile.dense_block_cio(c, m, d))


@pytest.mark.parametrize("c, m, d", [(64, 4, 32), (32, 3, 32), (128, 8, 16)])
def test_partial_dense_block_cio_matches_closed_form(c, m, d):
    partial = _cio_per_pixel(ToyPartialDenseBlock(c, m, d), c)
    assert partial == pytest.approx(profile.partial_dense_block_cio(c, m, d))
    assert partial < _cio_per_pixel(ToyDenseBlock(c, m, d), c)


@pytest.mark.parametrize("c, m", [(32, 3), (128, 4), (256, 8)])
def test_pelee_dense_block_reads_and_appends_the_closed_form(c, m):
    """In PeleeNet's 2-way dense block the closed form is what the layers read from the running
    concatenation (their 1x1 inputs) plus what they append (the two k/2 branch outputs)."""
    k, hw = 32, 4
    block = DenseBlock(c, m, growth_rate=k)
    layers = {l.name: l for l in profile.layer_costs(block, hw, in_chans=c)}
    reads = sum(math.prod(layers[f"layers.{i}.conv1x1.conv"].in_shape) for i in range(m))
    appends = sum(math.prod(layers[f"layers.{i}.{b}"].out_shape) for i in range(m)
                  for b in ("branch1.conv", "branch2.1.conv"))
    assert (reads + appends) / hw**2 == pytest.approx(profile.dense_block_cio(c, m, k))


def test_csp_lowers_cio_for_peleenet():
    base = profile.model_cost(build(ModelSpec("peleenet")), 224)["cio_m"]
    for gamma in GAMMAS:
        for fusion in ("csp", "first", "last"):
            csp = profile.model_cost(build(ModelSpec("csppeleenet", gamma, fusion)), 224)["cio_m"]
            assert csp < base, (gamma, fusion, csp, base)


@pytest.mark.parametrize("img_size", [128, pytest.param(256, marks=pytest.mark.slow)])
def test_csp_lowers_cio_for_resnext(img_size):
    csp = profile.model_cost(build(ModelSpec("cspresnext50")), img_size)["cio_m"]
    base = profile.model_cost(build(ModelSpec("resnext50_32x4d")), img_size)["cio_m"]
    assert csp < base
    if img_size == 256:  # FACTS.md: a hook count on timm's models gives about 31.0M vs 37.0M
        assert csp == pytest.approx(31.0, abs=0.1) and base == pytest.approx(37.0, abs=0.1)


# --- per-layer cost (Figure 7) ----------------------------------------------------------------
def test_per_layer_table_sums_to_total_and_names_the_bottleneck():
    model = build(ModelSpec("peleenet"))
    table = profile.per_layer_table(model, 224)
    total = profile.model_cost(model, 224)
    assert table["bflops"].sum() == pytest.approx(total["bflops"], rel=1e-9)
    assert table["cio_m"].sum() == pytest.approx(total["cio_m"], rel=1e-9)
    assert table["share_pct"].sum() == pytest.approx(100.0)
    assert table["bflops"].sum() == pytest.approx(profile.count_bflops(model, 224), rel=0.01)
    neck = profile.bottleneck(table)
    assert neck["layer"] == "stages.0.transition_pre.conv"  # 128² · 56² MACs, tied with stages 2-3
    assert neck["bflops"] == pytest.approx(2 * 128 * 128 * 56 * 56 / 1e9)


def test_bottleneck_report_cut_vs_paper(tmp_path):
    bn, _ = profile.bottleneck_report(tmp_path)
    cut = dict(zip(bn["scope"], bn["cut_pct"]))
    assert cut["largest layer"] == pytest.approx(100 * ((112 / 128) ** 2 - 1), abs=0.01)
    assert cut[profile.STAGES_2_3] == pytest.approx(100 * ((192 / 256) ** 2 - 1), abs=0.01)
    assert cut[profile.STAGES_2_3] == pytest.approx(profile.PAPER_BOTTLENECK_CUT_PCT, abs=1)
    for name in ("bottleneck.csv", "figure7_per_layer.png", "per_layer_peleenet-leaky.csv",
                 "per_layer_csppeleenet-g0.5-csp-leaky.csv"):
        assert (tmp_path / name).stat().st_size > 0


# --- fps --------------------------------------------------------------------------------------
def test_measure_throughput_records_setup_and_restores_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)).train()
    res = profile.measure_throughput(model, 16, batch=4, warmup=1, repeats=3, channels_last=True)
    assert res["fps"] > 0 and res["batch"] == 4 and res["repeats"] == 3
    assert res["device"] == "cpu" and res["threads"] == torch.get_num_threads() and res["channels_last"]
    assert model.training and model[0].weight.is_contiguous()
    assert profile.measure_fps(model, 16, repeats=2, warmup=1) > 0  # train.py's API


# --- fidelity ---------------------------------------------------------------------------------
def _row(**kw):
    base = dict(table="table1", model="peleenet", gamma=None, fusion=None, activation="leaky", input=224,
                num_classes=1000, params_m=2.80, bflops=1.016, counter_diff_pct=0.0, delta_vs=None,
                bflops_delta_pct=None)
    return {**base, **kw}


def test_evaluate_marks_pass_miss_and_report():
    rows = pd.DataFrame([
        _row(),
        _row(model="speleenet", params_m=2.6, bflops=0.904),                      # +8.8 % params
        _row(model="peleenext", params_m=2.5, bflops=0.8),                        # nothing published
        _row(model="csppeleenet", gamma=0.25, fusion="last", bflops=0.85, bflops_delta_pct=-16.0),  # -5 pt off
        _row(table="table3", model="resnet50", input=256, params_m=25.6, bflops=10.7),
    ])
    full = profile.evaluate(profile.na_to_none(rows))
    table = full[full["params_m"].notna()].set_index("model", drop=False)
    assert len(table) == len(rows)
    assert table.loc["peleenet", "status"] == "pass"
    spe = table.loc["speleenet"]
    assert spe["status"] == "MISS" and "params +8.8% MISS" in spe["checks"]  # stays in the table, marked
    assert table.loc["peleenext", "status"] == "report"
    last = table[(table["model"] == "csppeleenet") & (table["gamma"] == 0.25)].iloc[0]
    assert last["status"] == "MISS" and last["delta_residual_pt"] == pytest.approx(-5.0)
    assert table.loc["resnet50", "status"] == "report" and "darknet" in table.loc["resnet50", "note"]
    # published rows not measured here stay visible
    rest = full[full["params_m"].isna()]
    assert {"resnet10", "cspresnet10"} <= set(rest["model"])
    assert set(rest.loc[rest["model"] == "resnet10", "status"]) == {"not built"}


def test_unstated_fusion_last_gamma_is_half():
    gamma, deltas = profile.infer_unstated_gamma(-21.0, "last", exclude=(0.25,))
    assert gamma == 0.5
    assert deltas[0.5] == pytest.approx(-21.0, abs=profile.DELTA_TOLERANCE_PT)
    assert profile.infer_unstated_gamma(-21.0, "last")[0] == 0.5  # also without the exclusion


def test_fidelity_specs_cover_reference_tables():
    specs = profile.fidelity_specs()
    names = {s.model for s in specs}
    ref = profile.reference_rows()
    assert set(ref["model"]) - names == set(profile.NOT_BUILT)
    assert {(s.gamma, s.fusion) for s in specs if s.model == "csppeleenet"} >= {
        (g, f) for g in GAMMAS for f in ("csp", "first", "last")
    }


# --- CLI --------------------------------------------------------------------------------------
CLI = dict(module="csp_ablate.profile", env={"OMP_NUM_THREADS": "1"}, timeout=600)


def test_cli_prints_readable_table():
    proc = run_cli("model=csppeleenet", "fps_batches=[1,2]", "fps_warmup=1", "fps_repeats=3", "threads=1", **CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for text in ("csppeleenet (γ=0.5, csp, leaky)", "params (M)", "BFLOPs (2 x MACs / 1e9)", "0.8923",
                 "cross-check: FlopCounterMode", "CIO", "BFLOPs vs peleenet", "-12.1 %", "at the trained input (32x32)",
                 "bottleneck", "fps (cpu, 1 thread)", "batch 2:", "paper", "pass"):
        assert text in out, out


def test_cli_json_is_one_object(tmp_path):
    proc = run_cli("model=csppeleenet", "gamma=0.5", "fusion=csp", "activation=swish", "img_size=224",
                   "format=json", "fps=false", "per_layer=true", f"out_dir={tmp_path}", **CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    obj = json.loads(proc.stdout)
    assert obj["model"] == "csppeleenet" and obj["gamma"] == 0.5 and obj["fusion"] == "csp"
    assert obj["activation"] == "swish" and obj["input"] == 224
    assert obj["bflops"] == pytest.approx(0.892, abs=0.001) and abs(obj["counter_diff_pct"]) < 1
    assert obj["paper_bflops"] == 0.888 and obj["status"] == "pass"  # the README's swish row
    assert len(obj["largest_layers"]) == 8
    assert (tmp_path / "per_layer_csppeleenet-g0.5-csp-swish-224.png").exists()


def test_cli_json_fusion_last_half_is_the_minus_21_row():
    proc = run_cli("model=csppeleenet", "fusion=last", "format=json", "fps=false", "train_input=false", **CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    obj = json.loads(proc.stdout)
    assert obj["gamma"] == 0.5 and obj["bflops_delta_pct"] == pytest.approx(-24.5, abs=0.1)
    assert obj["paper_bflops_delta_pct"] == -21 and obj["status"] == "pass" and "γ=0.5" in obj["note"]


def test_cli_multirun_writes_fidelity_csv_md(tmp_path):
    proc = run_cli("-m", "model=peleenet,speleenet", "fps=false", "train_input=false", f"out_dir={tmp_path}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", **CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "fidelity.csv")
    measured = table[table["params_m"].notna()]
    assert sorted(measured["model"]) == ["peleenet", "speleenet"]
    assert set(measured["status"]) == {"pass"}
    assert "| speleenet |" in (tmp_path / "fidelity.md").read_text()
    assert not list(tmp_path.glob("**/.hydra"))  # no Hydra clutter in the deliverable folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fidelity.csv", "fidelity.md", "sweep"]
    assert "Last written by: `python -m csp_ablate.profile model=speleenet" in (tmp_path / "fidelity.md").read_text()


def test_cli_fidelity_writes_table(tmp_path):
    proc = run_cli("fidelity=true", "fps=false", "train_input=false", f"out_dir={tmp_path}", **CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "fidelity.csv")
    md = (tmp_path / "fidelity.md").read_text()
    assert (tmp_path / "figure7_per_layer.png").exists() and (tmp_path / "cio.csv").exists()
    assert "MISS" not in set(table["status"]), table[table["status"] == "MISS"].to_string()
    judged = table[table["status"] == "pass"]
    assert {"peleenet", "csppeleenet", "speleenet", "cspresnet50", "cspresnext50", "darknet53",
            "cspdarknet53"} <= set(judged["model"])
    assert set(table.loc[table["model"].isin(["resnet50", "resnext50_32x4d"]), "status"]) == {"report"}
    assert (table["counter_diff_pct"].dropna().abs() < 1).all()
    assert "## CIO" in md and "## Computational bottleneck" in md and "-43.8" in md


def test_cli_figure7_detection_and_bad_mode(tmp_path):
    """The detectors' Figure 7 runs from the same CLI (formerly ``csp_ablate.detection_profile``)."""
    out = tmp_path / "det"
    proc = run_cli("figure7=detection", "detection.img_size=64", f"detection.out_dir={out}", "format=json", **CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    obj = json.loads(proc.stdout)
    assert [r["detector"] for r in obj["rows"]] == ["PeleeNet-YOLO", "PeleeNet-PRN", "CSPPeleeNet-EFM"]
    assert (out / "figure7_detection.md").exists() and (out / "per_layer_csppeleenet-efm-64.csv").exists()
    bad = run_cli("figure7=backbone", **CLI)
    assert bad.returncode == 2 and "'figure7'" in bad.stderr and "classifier, detection" in bad.stderr


@pytest.fixture
def compose_profile():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF_DIR

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="profiler", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "override, expected",
    [
        (["model=cspresnet50", "fusion=csp"], ["does not apply to model=cspresnet50"]),
        (["model=csppeleenet", "gamma=1.5"], ["'gamma'", "between 0 and 1"]),
        (["model=csppeleenet", "fusion=middle"], ["'fusion'", "none, csp, first, last"]),
        (["activation=gelu"], ["'activation'", "leaky, relu, swish, mish"]),
        (["img_size=8"], ["'img_size'", ">= 32"]),
        (["threads=0"], ["'threads'", ">= 1"]),
        (["fps_batches=4"], ["'fps_batches'", "list of batch sizes"]),
        (["fps_batches=[1,0]"], ["'fps_batches'", ">= 1"]),
    ],
)
def test_config_validation_names_key_value_and_allowed(compose_profile, override, expected):
    from csp_ablate.errors import ConfigError

    cfg = compose_profile(*override)
    with pytest.raises(ConfigError) as err:
        check_cli(cfg)
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize("name", sorted(models.MODEL_AXES))
def test_every_model_config_composes_and_validates(compose_profile, name):
    cfg = compose_profile(f"model={name}")
    check_cli(cfg)
    assert cfg.model.name == name
    assert ("gamma" in cfg.model) == ("gamma" in models.MODEL_AXES[name])


@pytest.mark.parametrize(
    "override, expected",
    [
        (["model=peleenet", "gamma=0.5"], ["does not apply to model=peleenet"]),
        (["format=xml"], ["'format'", "table, json"]),
        (["model=nosuchnet"], ["model/nosuchnet", "csppeleenet"]),
    ],
)
def test_cli_bad_input_is_one_paragraph(override, expected):
    proc = run_cli(*override, "fps=false", **CLI)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for text in expected:
        assert text in out, out[-2000:]
    assert "Traceback" not in out
    if "nosuchnet" not in override[0]:  # ours: one paragraph, exit code 2 (Hydra lists the options itself)
        assert proc.returncode == 2 and proc.stderr.startswith("csp_ablate.profile: error: ")
        assert len(proc.stderr.strip().splitlines()) == 1


# --- feature-pyramid memory ---------------------------------------------------------------------
class _ToyNeck(nn.Module):
    """1x1 conv (new tensor), concat with its input (new), in-place ReLU (nothing new), a view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.smooth = nn.Conv2d(8, 2, 1)

    def forward(self, feats: list) -> list:
        y = torch.relu_(torch.cat([self.conv(feats[0]), feats[0]], 1))
        return [self.smooth(y.view(y.shape))]


def test_pyramid_memory_counts_new_storages_only():
    from csp_ablate.profile.pyramid import tensor_bytes_created

    outer = nn.Sequential()
    outer.neck = _ToyNeck()
    x = torch.zeros(1, 4, 5, 5)
    counts = tensor_bytes_created(outer.neck, lambda: outer.neck([x]), [outer.neck.smooth])
    f32 = 4
    assert counts["inputs"] == 4 * 25 * f32
    # conv out (4 ch) + cat (8 ch) + smooth out (2 ch); relu_ and view allocate nothing
    assert counts["created"] == (4 + 8 + 2) * 25 * f32
    assert counts["fused"] == 8 * 25 * f32 and counts["outputs"] == 2 * 25 * f32


def test_pyramid_memory_table_efm_vs_gfm(tmp_path):
    from csp_ablate.profile.pyramid import write_pyramid_memory

    table = write_pyramid_memory(tmp_path, img_size=64).set_index("neck")
    # GFM fuses a 3·C concatenation per scale, EFM's Maxout keeps C: a third, whatever the size
    assert table.loc["efm", "fused_vs_gfm_pct"] == pytest.approx(-100 * 2 / 3)
    assert table.loc["efm", "created_mib"] < table.loc["gfm", "created_mib"]
    md = (tmp_path / "feature_pyramid_memory.md").read_text()
    assert "feature pyramid" in md and "-75" in md and "forward hooks" in md
