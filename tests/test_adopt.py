"""Which saved state a sweep job resumes (csp_ablate.checkpoint.adopt_own_state and friends).

Hydra numbers a multirun's job dirs by grid position, so a relaunch with another grid puts a run
into another dir than the one holding its ``last.ckpt`` (Table 2's fourth launch restarted two
runs so). These tests build the job dirs by hand (small stand-in checkpoints that pass
``inspect_checkpoint``) to cover what the end-to-end test in test_sweeps.py cannot reach in
seconds: several states of one run, set-aside states, corrupt and discarded ones, the curves dir
that travels with each."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from csp_ablate.checkpoint import (
    HISTORY, STAMP_KEY, adopt_own_state, discard_other_states, inspect_checkpoint, launches_of_this_run,
    set_aside_other_runs_state,
)

A, B = "a" * 12, "b" * 12  # two runs' fingerprints


def save_state(ckdir: Path, fp: str, step: int, history: bool = True, curves: str | None = None) -> Path:
    """A ``checkpoints``-like dir: last.ckpt at ``step`` stamped ``fp``, its launches.jsonl and,
    with ``curves``, a sibling csv dir (same suffix) whose metrics.csv holds that text."""
    ckdir.mkdir(parents=True)
    torch.save({"state_dict": {}, "loops": {}, "optimizer_states": [], "global_step": step, "epoch": 0,
                STAMP_KEY: {"fingerprint": fp, "run_id": f"run-{fp[:4]}"}}, ckdir / "last.ckpt")
    if history:
        (ckdir / HISTORY).write_text(json.dumps({"event": "start", "fingerprint": fp, "start_step": 0}) + "\n")
    if curves is not None:
        csv = ckdir.parent / ("csv" + ckdir.name[len("checkpoints"):])
        csv.mkdir()
        (csv / "metrics.csv").write_text(curves)
    return ckdir


def step_of(ckdir: Path) -> int:
    return inspect_checkpoint(ckdir / "last.ckpt", None)["global_step"]


def test_the_most_advanced_state_in_the_sweep_wins_with_its_curves(tmp_path):
    sweep = tmp_path / "sweep"
    out = sweep / "4"
    save_state(out / "checkpoints", A, 87, curves="restarted by a narrowed launch")  # Table 2's launch 4
    save_state(sweep / "22" / "checkpoints", A, 637, curves="steps 0-637")
    save_state(sweep / "9" / "checkpoints.a", A, 300)  # wrong fingerprint suffix: not this run's
    save_state(sweep / "9" / f"checkpoints.{A}", A, 300)

    src = adopt_own_state(out, sweep, A)

    assert src == sweep / "22" / "checkpoints"
    assert step_of(out / "checkpoints") == 637
    assert (out / "csv" / "metrics.csv").read_text() == "steps 0-637"
    assert step_of(out / f"checkpoints.{A}") == 87  # the less advanced one is kept, beside
    assert (out / f"csv.{A}" / "metrics.csv").read_text() == "restarted by a narrowed launch"
    assert not (sweep / "22" / "checkpoints").exists() and (sweep / "9" / f"checkpoints.{A}").exists()
    events = [json.loads(line)["event"] for line in (out / "checkpoints" / HISTORY).read_text().splitlines()]
    assert events == ["start", "adopted"]
    assert [launch["resumed_from_step"] for launch in launches_of_this_run(out)] == [None]  # launches intact


def test_a_state_set_aside_in_the_runs_own_dir_is_adopted(tmp_path):
    sweep = tmp_path / "sweep"
    out = sweep / "0"
    save_state(out / f"checkpoints.{A}.2", A, 40, curves="mine")
    save_state(out / "checkpoints", B, 900)  # another run, set aside first as the job does
    set_aside_other_runs_state(out, A)

    assert adopt_own_state(out, sweep, A) == out / f"checkpoints.{A}.2"
    assert step_of(out / "checkpoints") == 40 and (out / "csv" / "metrics.csv").read_text() == "mine"
    assert step_of(out / f"checkpoints.{B}") == 900


def test_a_tie_keeps_the_own_state_and_nothing_moves(tmp_path):
    sweep = tmp_path / "sweep"
    out = sweep / "1"
    save_state(out / "checkpoints", A, 500)
    save_state(sweep / "7" / "checkpoints", A, 500)
    assert adopt_own_state(out, sweep, A) is None
    assert (sweep / "7" / "checkpoints" / "last.ckpt").exists()


def test_other_runs_unknown_corrupt_and_discarded_states_are_never_adopted(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    out = sweep / "0"
    save_state(sweep / "1" / "checkpoints", B, 999)  # another run's
    save_state(sweep / "2" / "checkpoints", A, 999, history=False)  # no history: nobody's to take
    broken = save_state(sweep / "3" / f"checkpoints.{A}", A, 999)
    (broken / "last.ckpt").write_bytes(b"cut off")
    save_state(sweep / "5" / f"discarded.checkpoints.{A}", A, 5000)

    with caplog.at_level(logging.WARNING, logger="csp_ablate"):
        assert adopt_own_state(out, sweep, A) is None
    assert "not adopting" in caplog.text and "corrupt or truncated" in caplog.text
    assert not (out / "checkpoints").exists()
    assert all((sweep / d).is_dir() for d in ("1/checkpoints", "2/checkpoints", f"3/checkpoints.{A}"))


def test_a_restart_on_purpose_discards_the_runs_other_states(tmp_path):
    """force=true / checkpoint.resume=false: what that launch threw away is never resumed later."""
    sweep = tmp_path / "sweep"
    out = sweep / "4"
    save_state(sweep / "22" / "checkpoints", A, 637, curves="old")
    save_state(sweep / "9" / f"checkpoints.{A}", A, 300)
    save_state(sweep / "1" / "checkpoints", B, 999)

    moved = discard_other_states(out, sweep, A)

    assert sorted(p.relative_to(sweep).as_posix() for p in moved) == [
        f"22/discarded.checkpoints.{A}", f"22/discarded.csv.{A}", f"9/discarded.checkpoints.{A}"]
    assert (sweep / "1" / "checkpoints").is_dir()  # another run's: untouched
    assert adopt_own_state(out, sweep, A) is None


def test_set_aside_gives_checkpoints_and_curves_one_number(tmp_path):
    """A lone ``csv.<fp>`` from an earlier set-aside must not pair the next state's curves with
    the wrong checkpoints: both take the first number free for both names."""
    out = tmp_path / "0"
    (out / f"csv.{B}").mkdir(parents=True)
    save_state(out / "checkpoints", B, 10, curves="second")

    moved = set_aside_other_runs_state(out, A)

    assert sorted(p.name for p in moved) == [f"checkpoints.{B}.2", f"csv.{B}.2"]
    assert (out / f"csv.{B}.2" / "metrics.csv").read_text() == "second"


def test_curves_left_without_a_checkpoint_are_kept_beside_the_adopted_state(tmp_path):
    sweep = tmp_path / "sweep"
    out = sweep / "0"
    (out / "csv").mkdir(parents=True)
    (out / "csv" / "metrics.csv").write_text("a start that never saved")
    save_state(sweep / "3" / "checkpoints", A, 200, curves="steps 0-200")

    assert adopt_own_state(out, sweep, A) == sweep / "3" / "checkpoints"
    assert (out / "csv" / "metrics.csv").read_text() == "steps 0-200"
    assert (out / "csv.unsaved" / "metrics.csv").read_text() == "a start that never saved"
