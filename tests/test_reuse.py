"""One set of runs per tier (issue 18), in-process on records written here: which sibling record
a grid point reuses (csp_ablate.sweep.find_in_tier) and what the copy says (reuse_record). The
end-to-end path (a Figure 4 sweep reusing Table 1's runs, force) is tests/test_sweeps.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from csp_ablate.sweep import find_in_tier, reuse_record

HASH, SEED = "abc123", 0


def write(path: Path, **fields) -> Path:
    rec = {"status": "completed", "config_hash": HASH, "seed": SEED, "run_id": "peleenet-abc-s0",
           "top1": 89.0, "reused_from": None, "wandb_dir": "wandb/offline-run-1"} | fields
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def test_an_original_is_preferred_over_a_copy(tmp_path):
    tier = tmp_path / "proxy"
    write(tier / "a_copy" / "0" / "record.json", reused_from="b_orig/3/record.json")  # sorts first
    original = write(tier / "b_orig" / "3" / "record.json")
    path, rec = find_in_tier(tier / "figure4", HASH, SEED, "proxy")
    assert path == original and rec["reused_from"] is None


def test_a_copy_is_used_when_it_is_all_there_is_and_keeps_its_origin(tmp_path):
    tier = tmp_path / "proxy"
    copy = write(tier / "figure4" / "1" / "record.json", reused_from="table1/5/record.json")
    path, rec = find_in_tier(tier / "other", HASH, SEED, "proxy")
    assert path == copy
    out = reuse_record(path, rec, tier / "other" / "0", "other")
    assert out["reused_from"] == "table1/5/record.json" and out["sweep"] == "other"


def test_failed_malformed_and_other_points_are_not_reused(tmp_path):
    tier = tmp_path / "proxy"
    write(tier / "table1" / "0" / "record.json", status="failed")
    (tier / "table1" / "1").mkdir(parents=True)
    (tier / "table1" / "1" / "record.json").write_text("[]")
    (tier / "table1" / "2" / "record.json").parent.mkdir(parents=True)
    (tier / "table1" / "2" / "record.json").write_text("{not json")
    write(tier / "table1" / "3" / "record.json", seed=1)
    write(tier / "table1" / "4" / "record.json", config_hash="other")
    assert find_in_tier(tier / "figure4", HASH, SEED, "proxy") is None
    found = write(tier / "table1" / "5" / "record.abc.json")  # a record set aside by an extended sweep counts
    assert find_in_tier(tier / "figure4", HASH, SEED, "proxy")[0] == found


def test_only_the_tier_layout_counts(tmp_path):
    write(tmp_path / "multirun" / "12-00-00" / "0" / "record.json")
    assert find_in_tier(tmp_path / "multirun" / "13-00-00", HASH, SEED, "proxy") is None  # ad hoc: no siblings
    write(tmp_path / "smoke" / "table1" / "0" / "record.json")
    assert find_in_tier(tmp_path / "smoke" / "figure4", HASH, SEED, "proxy") is None  # another tier's dir name
    assert find_in_tier(tmp_path / "smoke" / "table1", HASH, SEED, "smoke") is None  # never its own dir


def test_a_symlinked_sweep_dir_keeps_its_tier_layout(tmp_path):
    tier = tmp_path / "results" / "proxy"
    original = write(tier / "table1" / "0" / "record.json")
    (tmp_path / "scratch").mkdir()
    (tier / "figure4").symlink_to(tmp_path / "scratch", target_is_directory=True)
    found = find_in_tier(tier / "figure4", HASH, SEED, "proxy")
    assert found[0] == original
    out_dir = tier / "figure4" / "0"  # really scratch/0: the W&B pointer must hold from there
    rec = reuse_record(*found, out_dir, "figure4")
    assert ((tmp_path / "scratch" / "0") / rec["wandb_dir"]).resolve() == (original.parent / "wandb" / "offline-run-1").resolve()


def test_the_copy_points_at_the_original_without_machine_paths(tmp_path):
    tier = tmp_path / "proxy"
    original = write(tier / "table1" / "5" / "record.json")
    out_dir = tier / "figure4" / "1"
    rec = reuse_record(*find_in_tier(tier / "figure4", HASH, SEED, "proxy"), out_dir, "figure4")
    assert json.loads((out_dir / "record.json").read_text()) == rec
    assert rec["reused_from"] == "table1/5/record.json" and rec["run_id"] == "peleenet-abc-s0"
    # the W&B run stays where it was written; the copy's relative wandb_dir still finds it
    assert rec["wandb_dir"] == os.path.join("..", "..", "table1", "5", "wandb", "offline-run-1")
    assert (out_dir / rec["wandb_dir"]).resolve() == (original.parent / "wandb" / "offline-run-1").resolve()
    assert str(tmp_path) not in json.dumps(rec)


def test_a_copy_never_points_back_into_the_sweep_it_is_written_to(tmp_path):
    """Table 1 deleted and rerun: its grid point is found only as Figure 4's copy, whose origin
    (table1/5) is gone; the new copy names Figure 4's record instead of a path in table1."""
    tier = tmp_path / "proxy"
    copy = write(tier / "figure4" / "1" / "record.json", reused_from="table1/5/record.json")
    rec = reuse_record(copy, json.loads(copy.read_text()), tier / "table1" / "0", "table1")
    assert rec["reused_from"] == "figure4/1/record.json"
