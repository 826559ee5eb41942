"""Quiet fps of a finished sweep (``python -m csp_ablate.profile sweep_dir=<dir>`` -> fps.csv) and
the report's use of it: smoke-size models in a sweep dir written by hand, few short rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import run_cli
from csp_ablate.profile.sweep_fps import (
    FPS_COLUMNS, build_for_fps, config_from_axes, measure_sweep_fps, summarize, sweep_configs,
)
from csp_ablate.record import RECORD_KEYS, config_hash

FAST = dict(rounds=2, warmup=1, repeats=1, threads=1)


def _record(chash: str, model: str, gamma=None, fusion=None, seed: int = 0, status: str = "completed", **kw) -> dict:
    rec = dict.fromkeys(RECORD_KEYS)
    rec.update(sweep="adhoc", config_hash=chash, seed=seed, status=status, task="classification",
               dataset="fashionmnist", model=model, gamma=gamma, fusion=fusion, activation="leaky",
               neck=None, extras="", tier="smoke", img_size=32, fps=1.0, fps_batch=1, **kw)
    return rec


def _write(job: Path, rec: dict, name: str = "record.json") -> None:
    job.mkdir(parents=True, exist_ok=True)
    (job / name).write_text(json.dumps(rec))


@pytest.fixture
def sweep(tmp_path, compose) -> Path:
    """Three jobs, two configs: PeleeNet (seeds 0, 1; job 0 has its .hydra/config.yaml) and
    CSPPeleeNet (record only); plus a failed job, which is not measured."""
    cfg = compose("model=peleenet", "tier=smoke", "logger=none")
    chash = config_hash(cfg)
    root = tmp_path / "sweep"
    _write(root / "0", _record(chash, "peleenet", seed=0))
    (root / "0" / ".hydra").mkdir()
    OmegaConf.save(cfg, root / "0" / ".hydra" / "config.yaml")
    _write(root / "1", _record(chash, "peleenet", seed=1))
    _write(root / "2", _record("h-csp", "csppeleenet", 0.5, "csp"))
    _write(root / "3", _record("h-failed", "csppeleenet", 0.5, "last", status="failed"))
    return root


def test_each_config_is_rebuilt_once_from_its_job_config_or_its_axes(sweep):
    entries = {e["config_hash"]: e for e in sweep_configs(sweep)}
    assert set(entries) == {config_hash_of(sweep / "0"), "h-csp"}  # one per config, no failed job
    assert entries["h-csp"]["config"] is None
    assert entries[config_hash_of(sweep / "0")]["config"] == sweep / "0" / ".hydra" / "config.yaml"


def config_hash_of(job: Path) -> str:
    return json.loads((job / "record.json").read_text())["config_hash"]


def test_fps_is_measured_in_interleaved_rounds_with_one_setting(sweep):
    fps = measure_sweep_fps(sweep, **FAST)
    assert list(fps.columns) == FPS_COLUMNS
    assert len(fps) == 2 * 2 and set(fps["round"]) == {0, 1}
    assert (fps["fps"] > 0).all() and fps["fps_threads"].eq(1).all() and fps["fps_batch"].eq(1).all()
    assert fps["img_size"].eq(32).all() and fps["fps_device"].eq("cpu").all()
    assert set(fps["source"]) == {"job config", "record axes"}
    # round robin: every config is measured in round 0 before any is measured in round 1
    assert fps["round"].is_monotonic_increasing  # rows are in measurement order
    assert fps["config_hash"].iloc[0] != fps["config_hash"].iloc[2]  # the order rotates each round
    s = summarize(fps).set_index("config_hash")
    assert s.loc["h-csp", "rounds"] == 2 and s.loc["h-csp", "fps_min"] <= s.loc["h-csp", "fps_median"]


def test_a_record_of_a_displaced_config_does_not_use_the_job_config(sweep):
    """A rerun moved a record aside (record.<run_id>.json): the job's config is not its config."""
    _write(sweep / "0", _record("h-old", "csppeleenet", 0.5, "first"), "record.csppeleenet-old-s0.json")
    entries = {e["config_hash"]: e for e in sweep_configs(sweep)}
    assert entries["h-old"]["config"] is None and entries["h-old"]["fusion"] == "first"


def test_a_detector_row_is_rebuilt_from_the_record_axes():
    row = {"task": "detection", "dataset": "fashiondet", "model": "csppeleenet", "gamma": 0.5, "fusion": "csp",
           "activation": "leaky", "neck": "prn", "extras": "sam", "img_size": 128}
    cfg = config_from_axes(row)
    model, what, chans = build_for_fps(cfg, 64)
    assert what.startswith("detector network, RGB, 80 classes") and chans == 3
    assert int(cfg.data.num_classes) == 10 and list(cfg.extras) == ["sam"]
    assert model.sam is not None  # the extra is built, not dropped
    # timed as the paper's detector (Table 2's #Param/BFLOPs setting), not the 10-class grey proxy
    import torch
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 64, 64))
    assert all(o.shape[1] == 3 and o.shape[-1] == 5 + 80 for o in outs)


def test_cli_writes_fps_csv_and_rejects_a_missing_dir(sweep, tmp_path):
    ok = run_cli(f"sweep_dir={sweep}", "sweep_fps.rounds=2", "fps_repeats=1", "fps_warmup=1", "threads=1",
                 "format=json", module="csp_ablate.profile")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout.strip().splitlines()[-1])
    assert len(out["rows"]) == 2 and Path(out["fps_csv"]) == sweep / "fps.csv"
    assert len(pd.read_csv(sweep / "fps.csv")) == 4
    bad = run_cli(f"sweep_dir={tmp_path / 'nope'}", module="csp_ablate.profile")
    assert bad.returncode == 2 and "sweep_dir" in bad.stderr


def test_a_joblib_jobs_config_matches_its_record_through_the_threads_it_resolved(tmp_path, compose):
    """A named sweep's job config says threads=null; its job resolved 1 (two jobs on two cores).
    The profiler process would resolve another count: the record's threads make the hash match,
    so the row is rebuilt from its own job config rather than from the record's axes."""
    from omegaconf import open_dict

    cfg = compose("model=peleenet", "tier=smoke", "logger=none")
    assert cfg.threads is None
    with open_dict(cfg):
        hashed = cfg.copy()
        hashed.threads = 1
    job = tmp_path / "sweep" / "0"
    _write(job, _record(config_hash(hashed), "peleenet", threads=1))
    (job / ".hydra").mkdir()
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")  # threads: null, as Hydra saved it
    (entry,) = sweep_configs(tmp_path / "sweep")
    assert entry["config"] == job / ".hydra" / "config.yaml"


def test_one_round_is_refused(sweep):
    from csp_ablate.errors import ConfigError

    with pytest.raises(ConfigError, match="rounds >= 2"):
        measure_sweep_fps(sweep, rounds=1)
