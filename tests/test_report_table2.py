"""The Table 2 (detection) report from synthetic records (no training, no torch): the table's
columns, deltas vs both baselines against hand-computed numbers, the paper's stated deltas from
reference.csv, claim verdicts (AP/AP50 on the pooled interval, fps on the sign only), the CLI,
and that the spec agrees with the t2_* variant configs, the sweep's grid and reference.csv."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import CONF_DIR, REPO
from csp_ablate.record import RECORD_KEYS
from csp_ablate.report import build_report, load_spec
from csp_ablate.report.spec import Claim
from csp_ablate.report.tables import reference_row, statistical_test
from csp_ablate.report.stats import welch_delta_ci
from csp_ablate.report.verdicts import Evidence, judge
from test_report import write_sweep

ROWS = ["prn", "cem_sam", "gfm", "efm", "efm_giou", "efm_spp", "efm_sam", "efm_sam_swish"]
NECK_EXTRAS = {  # what the records of each t2_<row> variant carry
    "prn": ("prn", ""), "cem_sam": ("cem_sam", ""), "gfm": ("gfm", ""), "efm": ("efm", ""),
    "efm_giou": ("efm", "giou"), "efm_spp": ("efm", "spp"), "efm_sam": ("efm", "sam"),
    "efm_sam_swish": ("efm", "sam+swish"),
}
COST = {  # params_m, bflops (320×320)
    "prn": (3.1, 2.50), "cem_sam": (3.4, 2.90), "gfm": (3.6, 3.00), "efm": (3.8, 3.30),
    "efm_giou": (3.8, 3.30), "efm_spp": (4.1, 3.45), "efm_sam": (3.9, 3.35), "efm_sam_swish": (3.9, 3.35),
}
# per row, per seed 0 1 2: (ap, ap50, fps). Built so that (see the claims in sweeps/table2.yaml)
#   efm - gfm:  ap +2.1 (s = 1 each; pooled CI ±1.62, below), ap50 +2.4, fps -2.0 with a tiny spread
#   efm_giou - efm: ap -3.0, CI about ±2.4: excludes the paper's +0.7 -> contradicted
#   efm_sam - efm_spp: fps +10 (reproduced), ap +1 with CI ±2.27 (inconclusive)
#   efm_sam_swish - efm_sam: ap +1.0 with CI ±2.27 holds the paper's +1.0 -> reproduced
METRICS = {
    "prn": [(28.0, 48.0, 50.0), (29.0, 49.0, 50.1), (30.0, 50.0, 50.2)],
    "cem_sam": [(29.0, 49.0, 44.0), (30.0, 50.0, 44.1), (31.0, 51.0, 44.2)],
    "gfm": [(30.0, 50.0, 40.0), (31.0, 51.0, 40.1), (32.0, 52.0, 40.2)],
    "efm": [(32.1, 52.4, 38.0), (33.1, 53.4, 38.1), (34.1, 54.4, 38.2)],
    "efm_giou": [(30.0, 50.0, 38.0), (30.1, 50.1, 38.1), (30.2, 50.2, 38.2)],
    "efm_spp": [(33.0, 53.0, 35.0), (34.0, 54.0, 35.1), (35.0, 55.0, 35.2)],
    "efm_sam": [(34.0, 54.0, 45.0), (35.0, 55.0, 45.1), (36.0, 56.0, 45.2)],
    "efm_sam_swish": [(35.0, 55.0, 44.0), (36.0, 56.0, 44.1), (37.0, 57.0, 44.2)],
}
WELCH_S1_N3 = 2.266957935528  # t(0.975, 4) * sqrt(1/3 + 1/3): two rows of 3 seeds with s = 1 (test_report)
# The fixture's pooled within-row variance of AP (and AP50): 7 rows with s = 1, EFM + GIoU with
# s = 0.1, 3 seeds each: (14 + 0.02) / 16 = 0.87625 with 16 df; a 3 vs 3 difference has
# se = sqrt(0.87625 * 2/3) and a 95 % half-width t(0.975, 16) * se = 1.6203.
POOLED_HALF_WIDTH = 2.119905299221 * math.sqrt(0.87625 * 2 / 3)


def make_det_record(row: str, seed: int, status: str = "completed", error: str | None = None) -> dict:
    neck, extras = NECK_EXTRAS[row]
    params, bflops = COST[row]
    ap, ap50, fps = METRICS[row][seed]
    done = status == "completed"
    rec = dict.fromkeys(RECORD_KEYS)
    rec.update(
        sweep="table2", config_hash=f"h-{row}", seed=seed, status=status, run_id=f"t2_{row}-s{seed}",
        task="detection", dataset="fashion_det", model="csppeleenet", gamma=0.5, fusion="csp", neck=neck,
        extras=extras, activation="leaky", tier="smoke", img_size=64, epochs=1,
        params_m=params if done else None, bflops=bflops if done else None, fps=fps if done else None,
        fps_batch=1, ap=ap if done else None, ap50=ap50 if done else None, top1=None, val_top1=None,
        train_time_s=1.0 if done else None, error=error, finished_at="2026-01-01T00:00:10+00:00",
    )
    return rec


def write_fps_csv(sweep_dir, rounds=(0, 1, 2)) -> None:
    """fps.csv as ``python -m csp_ablate.profile sweep_dir=...`` writes it: round r of a row
    measures the fps of METRICS[row][r] (the records' own fps is never the row's fps)."""
    rows = [{"config_hash": f"h-{row}", "round": r, "fps": METRICS[row][r][2], "fps_device": "cpu", "fps_threads": 2,
             "fps_batch": 1, "img_size": 320, "what": "detector network", "measured_at": "2026-01-02T10:00:00+00:00",
             "host": "testhost"} for row in ROWS for r in rounds]
    pd.DataFrame(rows).to_csv(sweep_dir / "fps.csv", index=False)


@pytest.fixture
def table2_dir(tmp_path):
    records = [make_det_record(row, seed) for seed in (0, 1, 2) for row in ROWS]
    for rec in records:  # inside the busy sweep: noise that must never reach the table
        rec["fps"] = rec["fps"] + 17.0 * (rec["seed"] == 1)
    root = write_sweep(tmp_path / "table2", records)
    write_fps_csv(root)
    return root


def test_busy_sweep_fps_is_kept_in_runs_but_never_shown(table2_dir):
    (table2_dir / "fps.csv").unlink()
    build_report(table2_dir)
    runs = pd.read_csv(table2_dir / "runs.csv")
    assert runs["fps"].notna().all()  # the records' fps stays
    table = pd.read_csv(table2_dir / "table2.csv")
    assert table["fps_mean"].isna().all() and table.loc[table["row"] == "efm", "fps_delta_vs_gfm"].isna().all()
    md = (table2_dir / "table2.md").read_text()
    assert "not measured quietly" in md and f"python -m csp_ablate.profile sweep_dir={table2_dir}" in md
    claims = pd.read_csv(table2_dir / "claims.csv").set_index("claim")
    assert claims.loc["efm_vs_gfm_fps", "verdict"] == "inconclusive" and claims.loc["efm_vs_gfm_fps", "n"] == 0
    assert (table["fps_source"] == "not measured quietly").all()
    assert table[["fps_device", "fps_threads", "fps_batch", "fps_rounds"]].isna().all().all()


def test_quiet_fps_states_device_threads_batch(table2_dir):
    build_report(table2_dir)
    md = (table2_dir / "table2.md").read_text()
    assert "measured quietly" in md and "device cpu, 2 thread(s), batch 1, 320 px" in md
    assert "over 3 interleaved rounds" in md and "testhost" in md
    # the CSV alone says it too, per row (table2.csv once showed fps with no settings)
    table = pd.read_csv(table2_dir / "table2.csv")
    assert (table["fps_source"] == "fps.csv").all() and (table["fps_device"] == "cpu").all()
    assert (table["fps_threads"] == 2).all() and (table["fps_batch"] == 1).all() and (table["fps_img_size"] == 320).all()
    assert (table["fps_rounds"] == 3).all() and (table["fps_host"] == "testhost").all()
    assert (table["fps_measured_at"] == "2026-01-02T10:00:00+00:00").all()


def test_each_row_names_its_own_fps_settings(table2_dir):
    """A row measured at other settings, or not at all, says so in its own cells."""
    fps = pd.read_csv(table2_dir / "fps.csv")
    fps.loc[fps["config_hash"] == "h-efm", "fps_threads"] = 1
    fps.loc[(fps["config_hash"] == "h-efm") & (fps["round"] == 2), "fps_threads"] = 12
    fps[fps["config_hash"] != "h-gfm"].to_csv(table2_dir / "fps.csv", index=False)
    build_report(table2_dir)
    table = pd.read_csv(table2_dir / "table2.csv", dtype={"fps_threads": str}).set_index("row")
    assert table.loc["efm", "fps_threads"] == "1/12" and table.loc["prn", "fps_threads"] == "2"
    assert table.loc["gfm", "fps_source"] == "not measured quietly" and pd.isna(table.loc["gfm", "fps_threads"])
    assert pd.isna(table.loc["gfm", "fps_mean"]) and table.loc["efm", "fps_rounds"] == 3


def test_an_fps_claim_names_the_row_fps_csv_lacks(table2_dir):
    """fps.csv written before a row completed: the claim says which row has no rounds and how to
    measure it (it said "no completed run for one of the two rows")."""
    fps = pd.read_csv(table2_dir / "fps.csv")
    fps[fps["config_hash"] != "h-gfm"].to_csv(table2_dir / "fps.csv", index=False)
    build_report(table2_dir)
    claims = pd.read_csv(table2_dir / "claims.csv").set_index("claim")
    assert claims.loc["efm_vs_gfm_fps", "verdict"] == "inconclusive"
    assert claims.loc["efm_vs_gfm_fps", "reason"].startswith("fps.csv has no rounds for row(s) gfm")
    assert "no rounds" not in claims.loc["sam_vs_spp_fps", "reason"]  # both of its rows were measured


EXPECTED_COLUMNS = [
    "row", "label", "neck", "extras", "activation", "n", "n_failed", "params_m", "bflops",
    "bflops_delta_pct_vs_gfm", "bflops_delta_pct_vs_efm",
    *[f"{m}_{c}" for m in ("ap", "ap50", "fps") for c in (
        "mean", "ci95", "delta_vs_gfm", "delta_vs_gfm_ci95", "delta_vs_efm", "delta_vs_efm_ci95")],
    "train_time_s_mean",
    "paper_params_m", "paper_bflops", "paper_bflops_delta_pct_vs_gfm", "paper_bflops_delta_pct_vs_efm",
    *[f"paper_{m}{c}" for m in ("ap", "ap50", "fps") for c in ("", "_delta_vs_gfm", "_delta_vs_efm")],
    "paper_delta_vs", "paper_ap_delta_stated", "paper_ap50_delta_stated", "paper_fps_delta_stated",
    "note", "fps_source", "fps_device", "fps_threads", "fps_batch", "fps_img_size", "fps_measured_at", "fps_host",
    "fps_rounds",
]


def test_table2_columns_and_hand_computed_numbers(table2_dir):
    report = build_report(table2_dir)
    assert report.sweep == "table2" and report.spec.name == "table2"
    table = pd.read_csv(table2_dir / "table2.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == EXPECTED_COLUMNS
    assert list(table["row"]) == ROWS  # the paper's order
    t = table.set_index("row")
    assert t["n"].tolist() == [3] * 8 and t["n_failed"].tolist() == [0] * 8
    efm, gfm, swish = t.loc["efm"], t.loc["gfm"], t.loc["efm_sam_swish"]
    assert (efm["neck"], efm["activation"], swish["extras"]) == ("efm", "leaky", "sam+swish")
    assert pd.isna(efm["extras"])  # '' in the records: no extras
    # means and the t-interval of one row: mean 33.1, s = 1, n = 3 -> ±2.48414
    assert efm["ap_mean"] == pytest.approx(33.1) and efm["ap_ci95"] == pytest.approx(2.484137711750, abs=1e-5)
    assert efm["fps_mean"] == pytest.approx(38.1) and efm["fps_ci95"] == pytest.approx(0.248414, abs=1e-5)
    # deltas vs GFM and vs EFM, points (fps: frames/s)
    # AP deltas use the sweep's pooled variance (as the claims do); fps Welch's
    assert efm["ap_delta_vs_gfm"] == pytest.approx(2.1) and efm["ap_delta_vs_gfm_ci95"] == pytest.approx(POOLED_HALF_WIDTH, abs=1e-5)
    assert efm["fps_delta_vs_gfm_ci95"] == pytest.approx(welch_delta_ci([38.0, 38.1, 38.2], [40.0, 40.1, 40.2])[1])
    assert efm["ap50_delta_vs_gfm"] == pytest.approx(2.4)
    assert efm["fps_delta_vs_gfm"] == pytest.approx(-2.0)
    assert efm["ap_delta_vs_efm"] == 0.0 and pd.isna(efm["ap_delta_vs_efm_ci95"])  # the baseline itself
    assert gfm["ap_delta_vs_gfm"] == 0.0 and gfm["ap_delta_vs_efm"] == pytest.approx(-2.1)
    assert t.loc["efm_giou", "ap_delta_vs_efm"] == pytest.approx(30.1 - 33.1)
    assert swish["ap_delta_vs_efm"] == pytest.approx(36.0 - 33.1)
    assert t.loc["efm_spp", "bflops_delta_pct_vs_gfm"] == pytest.approx((3.45 / 3.00 - 1) * 100, abs=1e-3)
    assert t.loc["efm_spp", "bflops_delta_pct_vs_efm"] == pytest.approx((3.45 / 3.30 - 1) * 100, abs=1e-3)
    assert t.loc["gfm", "note"] == "baseline" and t.loc["efm", "note"] == "baseline"


def test_table2_paper_columns_from_reference_csv(table2_dir):
    build_report(table2_dir)
    t = pd.read_csv(table2_dir / "table2.csv", keep_default_na=False, na_values=[""]).set_index("row")
    efm, giou, sam, swish = (t.loc[r] for r in ("efm", "efm_giou", "efm_sam", "efm_sam_swish"))
    # stated vs GFM: EFM -2 fps, AP +2.1, AP50 +2.4
    assert (efm["paper_ap_delta_vs_gfm"], efm["paper_ap50_delta_vs_gfm"], efm["paper_fps_delta_vs_gfm"]) == (2.1, 2.4, -2)
    assert efm["paper_delta_vs"] == "gfm" and efm["paper_ap_delta_stated"] == 2.1
    assert pd.isna(efm["paper_ap_delta_vs_efm"])  # the paper publishes no absolute AP to compute it from
    # stated vs EFM: GIoU AP +0.7, AP50 -2.7 (no fps)
    assert (giou["paper_ap_delta_vs_efm"], giou["paper_ap50_delta_vs_efm"]) == (0.7, -2.7)
    assert pd.isna(giou["paper_fps_delta_vs_efm"]) and pd.isna(giou["paper_ap_delta_vs_gfm"])
    # swish: reference.csv's activation=swish, extras=sam row (the spec's `paper:` override),
    # stated vs EFM+SAM, which is no baseline: only in the stated columns
    assert swish["paper_ap_delta_stated"] == 1.0 and swish["paper_delta_vs"] == "efm_sam"
    assert pd.isna(swish["paper_ap_delta_vs_efm"]) and pd.isna(swish["paper_ap_delta_vs_gfm"])
    # EFM + SAM (leaky) must not pick up the swish row of reference.csv
    assert pd.isna(sam["paper_delta_vs"]) and pd.isna(sam["paper_ap_delta_stated"])
    assert t[["paper_params_m", "paper_bflops", "paper_ap", "paper_ap50", "paper_fps"]].isna().all().all()
    md = (table2_dir / "table2.md").read_text()
    assert "Δ AP vs GFM" in md and "Δ AP50 vs EFM" in md and "Δ fps vs GFM" in md
    assert "+2.1 vs GFM" in md and "+1.0 vs EFM + SAM" in md and "+0.7 vs EFM" in md
    assert "only the sign of an fps change is comparable" in md and "320×320" in md


def test_table2_claim_verdicts(table2_dir):
    report = build_report(table2_dir)
    claims = pd.read_csv(table2_dir / "claims.csv").set_index("claim")
    assert set(claims.index) == {c.id for c in report.spec.claims} and len(claims) == 8
    verdict = claims["verdict"].to_dict()
    assert verdict["efm_vs_gfm_ap"] == "reproduced"      # +2.1 ± 1.62 excludes 0, reaches 2.1 ± 1
    assert verdict["efm_vs_gfm_ap50"] == "reproduced"
    assert verdict["efm_vs_gfm_fps"] == "reproduced"     # -2.0, Welch ± 0.33: a decrease (sign only)
    assert verdict["giou_ap"] == "contradicted"          # -3.0 ± 1.62 lies outside +0.7 ± 1
    assert verdict["giou_ap50"] == "reproduced"          # -3.3 ± 1.62 excludes 0, reaches -2.7 ± 1
    assert verdict["sam_vs_spp_fps"] == "reproduced"
    assert verdict["sam_vs_spp_ap"] == "inconclusive"    # +1 ± 1.62 holds 0
    assert verdict["swish_ap"] == "inconclusive"         # +1 ± 1.62: the paper's +1 but not excluding 0
    assert claims.loc["efm_vs_gfm_ap", "measured"] == pytest.approx(2.1)
    assert claims.loc["efm_vs_gfm_ap", "ci95_low"] == pytest.approx(2.1 - POOLED_HALF_WIDTH, abs=1e-5)
    assert claims.loc["efm_vs_gfm_ap", "ci95_high"] == pytest.approx(2.1 + POOLED_HALF_WIDTH, abs=1e-5)
    assert claims.loc["efm_vs_gfm_ap", "margin"] == 1.0 and claims.loc["efm_vs_gfm_fps", "margin"] == 1.0
    assert claims.loc["efm_vs_gfm_fps", "measured"] == pytest.approx(-2.0)
    assert "sign only" in claims.loc["efm_vs_gfm_fps", "reason"]
    assert claims.loc["swish_ap", "seeds_needed"] > 3 and "seeds per row would resolve" in claims.loc["swish_ap", "reason"]
    md = (table2_dir / "claims.md").read_text()
    assert "fps Δ (sign only)" in md and "judged on the direction (sign) only" in md
    assert "pooled across all rows of the sweep" in md and "Pooled seed SD of AP: 0.936" in md and "-2 fps" in md


def _evidence(delta, ci, df=10):
    """Evidence whose 95 % half-width is ``ci`` (se = ci / t(0.975, df))."""
    from scipy.stats import t

    return Evidence(delta, ci / t.ppf(0.975, df) if ci == ci else math.nan, df, 1.0, 3, 3, "welch")


@pytest.mark.parametrize(
    "delta, ci, paper, direction, verdict",
    [
        (-0.5, 0.2, -2.0, None, "reproduced"),    # far from -2 fps, but a decrease: the sign is what counts
        (3.0, 1.0, -2.0, None, "contradicted"),   # the other sign
        (-0.5, 1.0, -2.0, None, "inconclusive"),  # interval holds 0
        (-2.0, math.nan, -2.0, None, "inconclusive"),  # one seed
        (5.0, 1.0, None, "increase", "reproduced"),
        (-5.0, 1.0, None, "increase", "contradicted"),
    ],
)
def test_fps_is_judged_on_its_sign_only(delta, ci, paper, direction, verdict):
    claim = Claim(id="c", text="", row="a", vs="b", metric="fps", paper=paper, direction=direction, margin=1.0)
    test, _ = statistical_test(claim)
    assert judge(test, _evidence(delta, ci), with_power=False).verdict == verdict


def test_sign_only_differs_from_the_size_rule():
    claim = Claim(id="c", text="", row="a", vs="b", metric="fps", paper=-2.0, margin=1.0)
    as_size = Claim(id="c", text="", row="a", vs="b", metric="ap", paper=-2.0, margin=1.0)
    ev = _evidence(-0.5, 0.2)
    assert judge(statistical_test(as_size)[0], ev).verdict == "contradicted"  # [-0.7, -0.3] is outside -2 ± 1
    test, prefix = statistical_test(claim)
    assert judge(test, ev).verdict == "reproduced" and prefix.startswith("sign only (decrease")


def test_an_inconclusive_fps_claim_asks_for_rounds_not_seeds():
    """fps is measured in the quiet pass's rounds: more training seeds cannot resolve its claim."""
    claim = Claim(id="c", text="", row="a", vs="b", metric="fps", paper=-2.0, margin=1.0)
    reason = judge(statistical_test(claim)[0], _evidence(-0.5, 1.0)).reason
    assert "rounds of the quiet fps pass would" in reason and "seeds" not in reason


def test_table2_cli_with_gaps(tmp_path):
    records = [make_det_record(row, seed) for seed in (0, 1) for row in ROWS if row != "cem_sam"]
    records.append(make_det_record("efm_spp", 2, status="failed", error="RuntimeError: boom"))
    sweep = write_sweep(tmp_path / "t2", records)
    proc = subprocess.run([sys.executable, "-m", "csp_ablate.report", str(sweep)], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[csp_ablate.report] table2: 14 completed, 1 failed" in proc.stdout
    for name in ("runs.csv", "summary.csv", "summary.md", "table2.csv", "table2.md", "claims.csv", "claims.md",
                 "table2.png", "table2.svg"):
        assert (sweep / name).is_file(), name
    t = pd.read_csv(sweep / "table2.csv").set_index("row")
    assert t.loc["cem_sam", "n"] == 0 and t.loc["cem_sam", "note"] == "not run"
    assert t.loc["efm_spp", "n"] == 2 and t.loc["efm_spp", "n_failed"] == 1
    # 2 seeds: efm ap 32.1, 33.1 vs gfm 30, 31
    assert t.loc["efm", "ap_delta_vs_gfm"] == pytest.approx(2.1)
    assert "- not run (no record in this sweep dir): `cem_sam`" in (sweep / "table2.md").read_text()
    summary_md = (sweep / "summary.md").read_text()
    assert "| AP " in summary_md and "top-1" not in summary_md


# ---- the spec against the variant configs, the grid and reference.csv --------------------
def test_table2_rows_match_the_variant_configs_and_grid():
    spec = load_spec("table2")
    assert [r.id for r in spec.rows] == ROWS and spec.baselines == ["gfm", "efm"]
    assert spec.metrics == ["ap", "ap50", "fps"]
    raw = yaml.safe_load((REPO / "sweeps" / "table2.yaml").read_text())
    grid = [v.strip() for v in raw["hydra"]["sweeper"]["params"]["variant"].split(",")]
    assert grid == [f"t2_{r}" for r in ROWS]
    for row in spec.rows:
        cfg = yaml.safe_load((CONF_DIR / "variant" / f"t2_{row.id}.yaml").read_text())
        neck = next(d["override /neck"] for d in cfg["defaults"] if isinstance(d, dict) and "override /neck" in d)
        extras = "+".join(sorted(cfg.get("extras") or []))  # as csp_ablate.record writes it
        assert (neck, extras) == (row.axes["neck"], row.axes["extras"] or ""), row.id
        assert (neck, extras) == NECK_EXTRAS[row.id]


def test_table2_claims_agree_with_reference_csv():
    from csp_ablate.reference import load_reference

    spec = load_spec("table2")
    ref = load_reference(spec.reference)
    checked = 0
    for claim in spec.claims:
        if claim.paper is None:
            continue
        published = reference_row(ref, spec.row(claim.row))
        assert published is not None, claim.id
        assert spec.row_for_reference_name(published["delta_vs"]) == claim.vs, claim.id
        assert published[f"{claim.metric}_delta"] == pytest.approx(claim.paper), claim.id
        checked += 1
    assert checked == 6
