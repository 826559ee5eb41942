"""W&B in one place: the run's group, and the WandbLogger internals behind named functions."""

from __future__ import annotations

import pytest

from csp_ablate import tracking


def test_group_is_the_sweep_name_the_multirun_dir_or_adhoc():
    """Each ad-hoc multirun is its own group (its sweep dir's name), so a dashboard compares
    the runs of one multirun and not of every multirun ever launched."""
    assert tracking.wandb_group("figure4", "results/multirun/2026-11-29_10-00-00") == "figure4"
    assert tracking.wandb_group(None, "results/multirun/2026-11-29_10-00-00") == "multirun-2026-11-29_10-00-00"
    assert tracking.wandb_group(None, "/abs/multirun/2026-11-29_11-30-00/") == "multirun-2026-11-29_11-30-00"
    assert tracking.wandb_group("", None) == tracking.ADHOC_GROUP == "adhoc"


def test_init_kwargs_group_follows_the_multirun(compose, tmp_path, monkeypatch):
    cfg = compose("logger=wandb", "logger.mode=offline", f"output_dir={tmp_path}")
    record = {"run_id": "r1", "sweep": None, "model": "peleenet"}
    assert tracking._wandb_init_kwargs(cfg, record)["group"] == "adhoc"  # no Hydra job: a single run
    monkeypatch.setattr(tracking, "current_sweep_dir", lambda: str(tmp_path / "2026-11-29_10-00-00"))
    assert tracking._wandb_init_kwargs(cfg, record)["group"] == "multirun-2026-11-29_10-00-00"
    assert tracking._wandb_init_kwargs(cfg, record | {"sweep": "table1"})["group"] == "table1"


def _wandb_logger(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project="csp_ablate", save_dir=str(tmp_path), mode="offline", name="r1")


def test_continue_wandb_run_points_an_unstarted_logger_at_the_old_run(tmp_path):
    logger = _wandb_logger(tmp_path)
    assert tracking.continue_wandb_run(logger, "abc123") is True
    assert logger._wandb_init["id"] == "abc123" and logger._wandb_init["resume"] == "allow"
    assert logger.version == "abc123"  # Lightning reads the id back from what we set
    assert tracking.continue_wandb_run(None, "abc123") is False  # logger=none: nothing to continue


def test_continue_wandb_run_refuses_a_started_run(tmp_path, caplog):
    logger = _wandb_logger(tmp_path)
    logger._experiment = object()  # already started: its id can no longer change
    assert tracking.continue_wandb_run(logger, "abc123") is False
    assert "logs as a new W&B run" in caplog.text
    assert "id" not in logger._wandb_init or logger._wandb_init["id"] != "abc123"


def test_close_wandb_never_starts_a_run_to_close_it(tmp_path):
    logger = _wandb_logger(tmp_path)
    assert tracking.close_wandb(logger, exit_code=1) is False
    assert logger._experiment is None
    assert tracking.close_wandb(None, exit_code=1) is False


def test_close_wandb_finishes_an_open_run(tmp_path):
    finished = []

    class Run:
        def finish(self, exit_code: int = 0) -> None:
            finished.append(exit_code)

    logger = _wandb_logger(tmp_path)
    logger._experiment = Run()
    assert tracking.close_wandb(logger, exit_code=1) is True and finished == [1]


@pytest.mark.parametrize("logger", [None, object()])
def test_only_a_wandb_logger_is_one(logger):
    assert tracking.wandb_logger(logger) is None and tracking.wandb_run_id(logger) is None
