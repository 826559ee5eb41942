"""Failing loudly without blocking (issue 15): bad inputs, malformed records, locks, run faults,
W&B without network. Mostly in-process (validation through Hydra's compose, the CLI's error
formatting on Hydra's own exceptions); a few subprocesses prove the real exit codes and line
counts of ``python -m csp_ablate``."""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from csp_ablate import axes
from csp_ablate.errors import ConfigError, describe_failure
from csp_ablate.validate import validate_config

# ---- every bad input: one paragraph naming key, value and what is allowed ------------------------
BAD_INPUTS = [
    # (command-line overrides, texts the message must contain)
    (["seed=-1"], ["'seed'", "-1", "0 to 4294967295"]),
    (["seed=4294967296"], ["'seed'", "4294967296", "0 to 4294967295"]),
    (["trainer.max_epochs=-1"], ["'trainer.max_epochs'", "-1", "a positive integer"]),
    (["trainer.max_epochs=abc"], ["'trainer.max_epochs'", "'abc'", "a positive integer"]),
    (["trainer.max_steps=0"], ["'trainer.max_steps'", "0", "a positive integer"]),
    (["data.batch_size=0"], ["'data.batch_size'", "0", "a positive integer"]),
    (["data.batch_size=100000"], ["'data.batch_size'", "100000", "55000 images", "zero steps"]),
    (["data.batch_size=600", "data.train_subset=512"], ["'data.batch_size'", "600", "512 images"]),
    (["data.img_size=7"], ["'data.img_size'", "7", ">= 32"]),
    (["fusion=none", "gamma=0.25"], ["'gamma=0.25'", "'fusion=none'", "identical to PeleeNet"]),
    (["task=detection", "extras=[giou,giou]"], ["'extras'", "giou", "at most once"]),
    (["task=detection", "neck=nosuch"], ["'neck'", "'nosuch'", "efm"]),
    (["tier=paper"], ["'tier=paper'", "fashion_mnist", "tier=proxy"]),
    (["gama=0.5"], ["Unknown key 'gama'", "Did you mean 'gamma'?"]),
    (["trainer.max_epoch=2"], ["Unknown key 'trainer.max_epoch'", "Did you mean 'trainer.max_epochs'?"]),
    (["model=nosuchnet"], ["Unknown option 'nosuchnet' for 'model'", "csppeleenet", "peleenet"]),
    (["logger=nosuch"], ["Unknown option 'nosuch' for 'logger'", "csv, none, wandb"]),
    (["model=peleenett"], ["Did you mean model=peleenet?"]),
    (["gamma=0.3", "gamma=0.4"], ["Duplicated override of 'gamma'", "gamma=0.3", "gamma=0.4"]),
    (["tier=huge", "tier=smoke"], ["Duplicated override of 'tier'"]),
    (["hydra.run.dir="], ["'hydra.run.dir'", "''", "a directory path"]),
    (["hydra.sweep.dir="], ["'hydra.sweep.dir'", "a directory path"]),
]


def refusal(compose, overrides: list[str]) -> str:
    """What the CLI says for ``overrides``, checked as it does, without a subprocess."""
    from csp_ablate.cli import concise_hydra_error, precheck

    try:
        precheck(overrides)
        cfg = compose(*overrides)
        validate_config(cfg, overrides=overrides)
    except ConfigError as err:
        return str(err)
    except Exception as err:  # Hydra's own composition errors
        message = concise_hydra_error(err)
        assert message is not None, f"unformatted Hydra error: {err!r}"
        return message
    raise AssertionError(f"{overrides} was accepted")


@pytest.mark.parametrize("overrides, expected", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_one_paragraph(compose, overrides, expected):
    message = refusal(compose, overrides)
    for text in expected:
        assert text in message, message
    assert "\n" not in message.strip() and "Traceback" not in message


@pytest.mark.parametrize("overrides", [
    [], ["fusion=none"], ["fusion=none", "gamma=0.5"], ["model=peleenet"], ["task=detection", "extras=[giou,sam]"],
    ["tier=paper", "data=imagenet", "data.root=/data/imagenet"], ["tier=paper", "trainer.max_steps=100"],
    ["seed=4294967295"], ["data.img_size=32"],
])
def test_good_inputs_pass_validation(compose, overrides):
    validate_config(compose(*overrides), overrides=overrides)


@pytest.mark.parametrize("variant", ["peleenet", "csp_g50_csp", "csp_g50_first", "csp_g50_last"])
def test_every_figure4_row_passes_validation(compose, variant):
    """sweep=figure4's four structures are Table 1 variants; row (a) is PeleeNet (no γ, no fusion
    axis), so no row trips the "γ with fusion=none" check."""
    overrides = ["sweep=figure4", f"variant={variant}"]
    cfg = compose(*overrides)
    validate_config(cfg, overrides=overrides)
    assert (cfg.model.name == "peleenet") == (variant == "peleenet")


@pytest.mark.parametrize("args, code, max_lines, expected", [
    (["gama=0.5"], 2, 8, "Did you mean 'gamma'?"),
    (["model=nosuchnet"], 2, 8, "Allowed: cspdarknet53"),
    (["gamma=0.3", "gamma=0.4"], 2, 8, "Duplicated override"),
    (["seed=-1"], 2, 8, "'seed'"),
])
def test_cli_exit_code_and_length_of_errors(tmp_path, args, code, max_lines, expected):
    proc = run_cli(*args, "tier=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == code, out
    assert expected in out and "Traceback" not in out
    assert len(out.splitlines()) <= max_lines, out


def test_hydra_full_error_still_shows_everything(tmp_path):
    proc = run_cli("gama=0.5", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "gama" in proc.stderr


# ---- the one list of axes ------------------------------------------------------------------------
def test_axes_lists_equal_the_model_registries():
    from csp_ablate import models
    from csp_ablate.models.detector import EXTRAS
    from csp_ablate.models.necks import NECKS
    from csp_ablate.record import AXES

    assert axes.FUSIONS == tuple(models.FUSIONS)
    assert axes.ACTIVATIONS == tuple(models.ACTIVATIONS)
    assert set(axes.NECKS) == set(NECKS)
    assert axes.EXTRAS == tuple(EXTRAS)
    assert axes.CSP_BASES == tuple(models.CSP_BASES)
    assert list(axes.RECORD_AXES) == AXES


def test_axes_module_imports_no_torch():
    code = "import sys, csp_ablate.axes, csp_ablate.validate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ---- malformed and foreign record files ----------------------------------------------------------
FOREIGN = {"list": "[]", "null": "null", "number": "3", "bad json": "{not json", "empty": ""}


@pytest.mark.parametrize("content", FOREIGN.values(), ids=FOREIGN.keys())
def test_foreign_record_never_blocks_resume(tmp_path, content):
    from csp_ablate.__main__ import displace_foreign_record, find_completed

    job = tmp_path / "7"
    job.mkdir()
    (job / "record.json").write_text(content)
    assert find_completed(tmp_path, "abc", 0) is None
    moved = displace_foreign_record(job, "abc", 0)
    assert moved == job / "record.json.malformed" and moved.read_text() == content
    assert not (job / "record.json").exists()


def test_callback_warns_once_per_foreign_record(tmp_path, caplog):
    from csp_ablate.callbacks import warn_foreign_records

    for name, content in (("0", "[]"), ("1", json.dumps({"status": "completed"})), ("2", "{bad")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="csp_ablate"):
        bad = warn_foreign_records(tmp_path)
    assert [p.parent.name for p in bad] == ["0", "2"]
    assert len([r for r in caplog.records if "is not a record" in r.getMessage()]) == 2


def _record(**values):
    from csp_ablate.record import RECORD_KEYS

    rec = dict.fromkeys(RECORD_KEYS) | {"status": "completed", "config_hash": "h", "seed": 0, "model": "peleenet",
                                        "task": "classification", "top1": 80.0, "params_m": 2.8, "bflops": 1.0}
    return rec | values


def test_report_skips_bad_records_and_says_so(tmp_path, capsys):
    from csp_ablate.report.__main__ import main as report_main

    for name, rec in (("0", _record()), ("1", _record(config_hash="k", top1="high")), ("2", [])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(json.dumps(rec))
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "2 record file(s) skipped" in err and "1/record.json" in err and "2/record.json" in err
    import pandas as pd

    runs = pd.read_csv(tmp_path / "runs.csv")  # whole, from the good record
    assert len(runs) == 1 and runs["top1"].iloc[0] == 80.0


def test_check_record_names_key_value_and_type():
    from csp_ablate.report.records import check_record

    assert check_record(_record()) is None
    assert check_record(_record(seed="zero")) == "'seed' is 'zero'; expected a number or null"
    assert check_record(_record(top1=True)).startswith("'top1' is True")
    assert check_record(_record(status=3)) == "'status' is 3; expected a string or null"
    assert "not a record object but list" in check_record([])


@pytest.mark.parametrize("spec_text", ["report: [1, 2", "report:\n  title: x\n", "- a list"])
def test_report_bad_spec_file_exits_2(tmp_path, capsys, spec_text):
    from csp_ablate.report.__main__ import main as report_main

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "record.json").write_text(json.dumps(_record()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    assert report_main([str(tmp_path), "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--spec'" in err and "Traceback" not in err
    assert not (tmp_path / "runs.csv").exists()


# ---- locks ---------------------------------------------------------------------------------------
def test_busy_dir_is_refused_naming_the_holder(tmp_path):
    from csp_ablate.lock import DirBusy, DirLock

    with DirLock(tmp_path, what="sweep"):
        with pytest.raises(DirBusy) as info:
            DirLock(tmp_path, what="sweep").acquire()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and platform.node() in message and "started" in message
    DirLock(tmp_path).acquire().release()  # free again once released


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, caplog):
    from csp_ablate.lock import LOCK_NAME, DirLock, read_holder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": platform.node(), "started_at": "2020-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="csp_ablate"):
        lock = DirLock(tmp_path).acquire()
    assert read_holder(tmp_path)["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() and "dead" in r.getMessage() for r in caplog.records)
    lock.release()


def test_second_sweep_into_a_busy_dir_is_refused_within_seconds(tmp_path):
    from csp_ablate.lock import DirLock

    with DirLock(tmp_path, what="sweep"):
        start = time.monotonic()
        proc = run_cli("-m", "seed=0,1", "tier=smoke", "logger=none", f"hydra.sweep.dir={tmp_path}", timeout=120)
        elapsed = time.monotonic() - start
    assert proc.returncode == 2 and elapsed < 30
    assert f"pid {os.getpid()}" in proc.stderr and "is busy" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*/record.json"))


# ---- faults during a run -------------------------------------------------------------------------
def test_disk_full_and_unwritable_are_named(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "last.ckpt"))
    assert describe_failure(full).startswith(f"disk full at {tmp_path / 'last.ckpt'}")
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "record.json"))
    assert describe_failure(denied).startswith(f"cannot write {tmp_path / 'record.json'} (permission denied)")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1024))
    torch_full = RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 1234 vs 1100")
    assert describe_failure(torch_full, tmp_path / "checkpoints").startswith(f"disk full at {tmp_path / 'checkpoints'}")
    assert describe_failure(ValueError("bug")) == "ValueError: bug"


def test_unwritable_job_dir_records_the_failure_at_the_sweep_root(compose, tmp_path, monkeypatch):
    from csp_ablate import record
    from csp_ablate.report.records import runs_frame

    sweep = tmp_path / "sweep"
    (sweep / "3").mkdir(parents=True)
    blocked = sweep / "3" / "job"
    blocked.write_text("a file where the job dir should be")  # the job dir cannot take a record
    monkeypatch.setattr(record, "_sweep_root_failed_path", lambda: sweep / "failed" / "record.3.json")
    cfg = compose(f"output_dir={blocked}")
    path = record.write_failed_record(cfg, OSError(errno.ENOSPC, "No space left on device"), message="disk full at x")
    assert path == sweep / "failed" / "record.3.json"
    rec = json.loads(path.read_text())
    assert rec["status"] == "failed" and rec["error"].startswith("disk full at x [recorded at the sweep root")
    runs = runs_frame(sweep)
    assert list(runs["status"]) == ["failed"]  # the report counts it


def test_failed_record_never_replaces_a_completed_one(compose, tmp_path):
    from csp_ablate.record import write_failed_record

    (tmp_path / "record.json").write_text(json.dumps({"status": "completed", "top1": 90.0}))
    assert write_failed_record(compose(f"output_dir={tmp_path}"), RuntimeError("late")) is None
    assert json.loads((tmp_path / "record.json").read_text())["top1"] == 90.0


def test_corrupt_checkpoint_is_recognised_as_a_restore_failure(tmp_path):
    """A tensor record's header broken mid-file: the quick (mmap) check passes, the full load
    that Lightning's restore does fails; that failure is told apart from any other."""
    import zipfile

    import torch

    from csp_ablate.errors import raised_by_checkpoint_load as _raised_by_restore

    path = tmp_path / "last.ckpt"
    torch.save({"w": torch.arange(200000, dtype=torch.float32)}, path)
    entry = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    data[entry.header_offset: entry.header_offset + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True, mmap=True)  # the pre-check's view: still fine
    with pytest.raises(RuntimeError) as info:
        torch.load(path, weights_only=True)
    assert _raised_by_restore(info.value)
    assert not _raised_by_restore(ValueError("elsewhere"))


def test_zero_step_training_is_refused_up_front():
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from csp_ablate.validate import check_trains

    dataset = list(range(10))
    loader = DataLoader(dataset, sampler=BatchSampler(SequentialSampler(dataset), 64, drop_last=True), batch_size=None)
    with pytest.raises(ConfigError, match=r"'data.batch_size': 64\. Allowed: at most the training set's 10 images"):
        check_trains(OmegaConf.create({"data": {"batch_size": 64}}), SimpleNamespace(train_dataloader=lambda: loader))


@pytest.mark.parametrize("limit, match", [
    ("trainer.limit_train_batches=0", "trained zero steps"),
    ("trainer.limit_test_batches=0", "evaluated zero test images"),
])
def test_zero_steps_or_zero_test_images_fail_and_are_never_completed(compose, tiny_fmnist, tmp_path, limit, match):
    from csp_ablate.train import run

    cfg = compose("model=peleenet", "tier=smoke", "logger=none", f"output_dir={tmp_path}", f"data.root={tiny_fmnist}",
                  "data.val_size=200", "data.train_subset=128", "data.eval_subset=64", "profile.fps=false",
                  "checkpoint.enabled=false", limit)
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "record.json").exists()


# ---- W&B without network (loopback only) ---------------------------------------------------------
@pytest.fixture
def unreachable_wandb(monkeypatch):
    from csp_ablate import tracking

    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracking.server_unreachable.cache_clear()
    tracking._warn_offline_once.cache_clear()
    yield tracking
    tracking.server_unreachable.cache_clear()
    tracking._warn_offline_once.cache_clear()


def test_wandb_key_without_server_falls_back_to_offline_once(unreachable_wandb, caplog):
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="csp_ablate"):
        modes = [unreachable_wandb.resolve_wandb_mode("auto") for _ in range(3)]
    assert modes == ["offline"] * 3 and time.monotonic() - start < 10
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_wandb_explicit_online_without_server_fails_fast(unreachable_wandb):
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"'logger.mode': 'online'.*127\.0\.0\.1:9.*unreachable"):
        unreachable_wandb.resolve_wandb_mode("online")
    assert time.monotonic() - start < 10


def test_wandb_offline_makes_no_network_call(unreachable_wandb, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network call in offline mode")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert unreachable_wandb.resolve_wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert unreachable_wandb.resolve_wandb_mode("auto") == "offline"
