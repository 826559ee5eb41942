"""The record contract: keys, hashing, atomic writes, failures never overwrite results."""

from __future__ import annotations

import json

import pytest

from csp_ablate.atomic import write_json_atomic
from csp_ablate.errors import ConfigError
from csp_ablate.record import (
    RECORD_FILE, RECORD_KEYS, base_record, config_hash, write_failed_record, write_record,
)

DESIGN_KEYS = (
    "sweep run_id config_hash seed status error task dataset model gamma fusion neck extras activation "
    "tier img_size epochs params_m bflops bflops_train cio_m fps fps_device fps_batch train_time_s top1 "
    "val_top1 ap ap50 git_sha started_at finished_at wandb_run_id wandb_dir torch_version host threads"
).split()
# issue 7 (resume), issue 14 (launches), issue 18 (reused_from: a copy of another sweep's run)
EXTENSION_KEYS = ["launches", "steps", "resumed_from_step", "reused_from"]


def test_record_keys_are_the_design_contract():
    assert [k for k in RECORD_KEYS if k != "launches"] == DESIGN_KEYS + EXTENSION_KEYS[1:]
    assert set(RECORD_KEYS) == set(DESIGN_KEYS + EXTENSION_KEYS)


def test_config_hash_ignores_seed_and_logging_but_not_axes(compose):
    base = config_hash(compose("output_dir=/a", "threads=1"))
    assert config_hash(compose("output_dir=/b", "seed=7", "logger=csv", "threads=1", "data.num_workers=1")) == base
    assert config_hash(compose("output_dir=/a", "threads=2")) != base  # threads change results
    assert config_hash(compose("output_dir=/a", "gamma=0.25")) != base
    assert config_hash(compose("output_dir=/a", "model=peleenet")) != base


def test_base_record_reads_axes(compose, tmp_path):
    rec = base_record(compose(f"output_dir={tmp_path}", "fusion=last", "gamma=0.25", "seed=3", "tier=smoke"))
    assert (rec["fusion"], rec["gamma"], rec["seed"], rec["tier"]) == ("last", 0.25, 3, "smoke")
    assert rec["dataset"] == "fashionmnist" and rec["extras"] == "" and rec["status"] == "running"
    assert rec["run_id"].startswith("csppeleenet-") and rec["run_id"].endswith("-s3")
    assert rec["threads"] >= 1 and len(rec["launches"]) == 1  # the launch's SHA and diff hash
    assert set(rec["launches"][0]) >= {"git_sha", "diff_sha256", "resumed_from_step", "threads"}


def test_wandb_dir_is_written_relative_to_the_record(compose, tmp_path):
    cfg = compose(f"output_dir={tmp_path}")
    rec = base_record(cfg) | {"wandb_dir": str(tmp_path / "wandb" / "offline-run-x")}
    written = json.loads(write_record(cfg, rec).read_text())
    assert written["wandb_dir"] == "wandb/offline-run-x"


def test_write_record_rejects_unknown_keys(compose, tmp_path):
    cfg = compose(f"output_dir={tmp_path}")
    with pytest.raises(KeyError, match="outside the contract"):
        write_record(cfg, {"top5": 1.0})


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object.__new__(type("X", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_atomic_write_gives_shared_file_permissions(tmp_path):
    """mkstemp's temp files are 0600; a record or table must be readable like any file (umask)."""
    import os

    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_failure_never_replaces_a_completed_record(compose, tmp_path):
    cfg = compose(f"output_dir={tmp_path}")
    done = base_record(cfg) | {"status": "completed", "top1": 91.0}
    write_record(cfg, done)
    write_failed_record(cfg, ConfigError("boom"))
    assert json.loads((tmp_path / RECORD_FILE).read_text())["top1"] == 91.0


def test_failed_record_carries_the_error(compose, tmp_path):
    cfg = compose(f"output_dir={tmp_path}", "fusion=last")
    write_failed_record(cfg, RuntimeError("nan loss"))
    rec = json.loads((tmp_path / RECORD_FILE).read_text())
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: nan loss" and rec["fusion"] == "last"
    assert list(rec) == RECORD_KEYS


def test_evidence_written_under_results_does_not_make_code_dirty(tmp_path):
    """A seed plan's second multirun (or the second benchmark) runs after the first rewrote
    tracked files under results/: its records must still name a clean commit; a code change must not."""
    import subprocess

    from csp_ablate.record import git_state_of

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "pkg").mkdir()
    (tmp_path / "results" / "proxy").mkdir(parents=True)
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "proxy" / "runs.csv").write_text("a\n1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "proxy" / "runs.csv").write_text("a\n1\n2\n")
    assert git_state_of(tmp_path / "pkg") == {"git_sha": sha, "diff_sha256": None}  # asked from a subdir, as the package does
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    state = git_state_of(tmp_path / "pkg")
    assert state["git_sha"] == f"{sha}+dirty" and state["diff_sha256"]


def test_skip_and_reuse_lines_show_the_tasks_own_metric():
    """A skipped or reused detection job printed `top1=None`: its line shows AP and AP50."""
    from csp_ablate.record import quality_text

    assert quality_text({"task": "detection", "ap": 40.3806, "ap50": 71.3781}) == "ap=40.38% ap50=71.38%"
    assert quality_text({"task": "classification", "top1": 89.1, "val_top1": None}) == "top1=89.10% val_top1=n/a%"
