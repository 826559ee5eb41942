"""Checkpoints and resume (issue 7): a killed run relaunched in its output dir continues where
it stopped, with the same final step count and the LR schedule continuing; a checkpoint that
cannot be resumed is a clear error with the way out, never a silent restart."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli
from csp_ablate.checkpoint import STAMP_KEY, inspect_checkpoint, resume_path
from csp_ablate.errors import ConfigError

SMOKE = ("tier=smoke", "model=peleenet", "threads=1")


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "checkpoints" / "launches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fake_checkpoint(path: Path, fingerprint: str = "abc", **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": {"w": torch.zeros(3)}, "loops": {}, "global_step": 7, "epoch": 0,
            "optimizer_states": [], STAMP_KEY: {"fingerprint": fingerprint, "run_id": "r"}, **extra}
    torch.save(ckpt, path)
    return path


def test_inspect_checkpoint_reads_step_and_stamp(tmp_path):
    info = inspect_checkpoint(_fake_checkpoint(tmp_path / "last.ckpt"), "abc")
    assert info["global_step"] == 7 and info["stamp"]["run_id"] == "r"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_lightning", "other_experiment"])
def test_unresumable_checkpoint_is_a_config_error_with_the_way_out(tmp_path, damage):
    path = _fake_checkpoint(tmp_path / "last.ckpt")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_lightning":
        torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ConfigError) as info:
        inspect_checkpoint(path, "xyz" if damage == "other_experiment" else "abc")
    msg = str(info.value)
    assert str(path) in msg and "checkpoint.resume=false" in msg and f"delete {path}" in msg


def test_resume_modes(compose, tmp_path):
    assert resume_path(compose(), tmp_path) is None  # auto, nothing saved yet
    last = _fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert resume_path(compose(), tmp_path) == last
    assert resume_path(compose("checkpoint.resume=false"), tmp_path) is None
    other = _fake_checkpoint(tmp_path / "elsewhere" / "x.ckpt")
    assert resume_path(compose(f"checkpoint.resume={other}"), tmp_path) == other
    with pytest.raises(ConfigError, match="checkpoint.resume"):
        resume_path(compose("checkpoint.resume=sometimes"), tmp_path)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A save that dies half-way (kill, full disk) leaves the previous last.ckpt intact."""
    from csp_ablate.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path)

    def dying_save(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1  # loaded with weights_only=True
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def _poly_lr(step: int, max_steps: int, lr: float = 0.1, power: float = 4.0) -> float:
    return lr * (1.0 - min(step, max_steps) / max_steps) ** power


def kill_after_first_checkpoint(args: list[str], run_dir: Path) -> dict:
    """Start ``python -m csp_ablate args``, SIGTERM it once last.ckpt exists; its 'stopped' event."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "csp_ablate", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out
    assert not (run_dir / "record.json").exists()  # stopped, not failed: no record yet
    stopped = history(run_dir)[-1]
    assert stopped["event"] == "stopped" and stopped["global_step"] >= 2
    return stopped


def test_sigterm_then_relaunch_resumes_to_the_same_final_step(tmp_path, data_override):
    """Kill a run after its first checkpoint (SIGTERM), relaunch the same command: it resumes
    from last.ckpt, ends at the planned step (3 epochs x 8 = 24) and the poly LR continues."""
    import pandas as pd

    args = [*SMOKE, "logger=csv", "trainer.max_epochs=3", "checkpoint.every_n_train_steps=2", f"hydra.run.dir={tmp_path}", *data_override]
    last = tmp_path / "checkpoints" / "last.ckpt"
    stopped = kill_after_first_checkpoint(args, tmp_path)
    assert stopped["global_step"] < 24

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["status"] == "completed" and math.isfinite(rec["top1"])
    assert rec["resumed_from_step"] == stopped["global_step"] and rec["steps"] == 24  # the record says so
    starts = [h for h in history(tmp_path) if h["event"] == "start"]
    assert len(starts) == 2 and starts[0]["resumed_from"] is None
    assert starts[1]["resumed_from"] == str(last) and starts[1]["start_step"] == stopped["global_step"]
    end = history(tmp_path)[-1]
    assert end["event"] == "end" and end["global_step"] == 24 and end["resumed_from_step"] == stopped["global_step"]
    assert "resuming from" in (tmp_path / "__main__.log").read_text()
    # metrics.csv holds both launches (the first launch's rows survive the relaunch), every step
    # once, and the LR schedule continued: every LR logged is poly(step) over 24 steps
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    lr_col = next(c for c in metrics.columns if c.startswith("lr-SGD"))
    lrs = metrics.dropna(subset=[lr_col])
    assert lrs["step"].min() < stopped["global_step"] <= lrs["step"].max()
    assert lrs["step"].is_unique  # nothing re-trained from step 0, no step logged twice
    for step, lr in zip(lrs["step"], lrs[lr_col]):
        assert lr == pytest.approx(_poly_lr(int(step), 24), rel=1e-5, abs=1e-9), (step, lr)


def _stopped_job(marker: Path) -> None:
    """What a stopped sweep job does last: write, ask whether to exit, write again if not."""
    from csp_ablate.sweep import exit_if_launcher_gone

    marker.write_text(f"{os.getpid()} before\n")
    exit_if_launcher_gone(143)
    with marker.open("a") as f:
        f.write("returned\n")


def _launcher(marker: Path, die: bool) -> None:
    """A stand-in for the joblib launcher: start one worker process, then die (SIGTERM's
    default action: no cleanup, no join) or wait for it."""
    import multiprocessing

    worker = multiprocessing.get_context("fork").Process(target=_orphan_then_stop if die else _stopped_job,
                                                         args=(marker,))
    worker.start()
    if die:
        os._exit(0)
    worker.join(30)


def _orphan_then_stop(marker: Path) -> None:
    parent = os.getppid()
    deadline = time.monotonic() + 30
    while os.getppid() == parent and time.monotonic() < deadline:  # until the launcher is gone
        time.sleep(0.01)
    _stopped_job(marker)


@pytest.mark.parametrize("launcher_dies", [True, False], ids=["launcher-gone", "launcher-alive"])
def test_a_stopped_sweep_worker_exits_when_its_launcher_is_gone(tmp_path, launcher_dies):
    """`kill -TERM -- -<pgid>` of a joblib sweep: the workers must not idle on after saving."""
    import multiprocessing

    from csp_ablate.sweep import exit_if_launcher_gone

    exit_if_launcher_gone(143)  # no parent process (a plain run, pytest): returns
    marker = tmp_path / "marker"
    launcher = multiprocessing.get_context("fork").Process(target=_launcher, args=(marker, launcher_dies))
    launcher.start()
    launcher.join(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the worker has run when the marker names it and it is gone
        text = marker.read_text() if marker.exists() else ""
        if text and not Path(f"/proc/{text.split()[0]}").exists():
            break
        time.sleep(0.05)
    lines = marker.read_text().splitlines()
    assert lines[0].endswith("before")
    assert lines[1:] == ([] if launcher_dies else ["returned"])


def test_corrupt_checkpoint_fails_clearly_and_restart_is_opt_in(tmp_path, data_override):
    other = tmp_path / "other"
    other.mkdir()
    (other / "record.json").write_text('{"status": "completed"}')
    run_dir = tmp_path / "run"
    last = _fake_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    last.write_bytes(last.read_bytes()[:100])  # truncated
    proc = run_cli(*SMOKE, "logger=none", f"hydra.run.dir={run_dir}", *data_override)
    assert proc.returncode == 2
    assert f"Cannot resume from {last}" in proc.stderr and "checkpoint.resume=false" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((run_dir / "record.json").read_text())["status"] == "failed"  # this run only
    assert (other / "record.json").read_text() == '{"status": "completed"}'
    restart = run_cli(*SMOKE, "logger=none", "checkpoint.resume=false", f"hydra.run.dir={run_dir}", *data_override)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert json.loads((run_dir / "record.json").read_text())["status"] == "completed"
    assert inspect_checkpoint(last, None)["global_step"] == 8  # overwritten by the fresh run


@pytest.mark.slow
def test_submitit_preemption_saves_requeues_and_resumes(tmp_path, data_override):
    """submitit's preemption signal (USR2) mid-run: the run stops at a step boundary, saves,
    submitit requeues the job in the same output dir, and the job resumes and completes."""
    args = ["-m", "hydra/launcher=submitit_local", "seed=0", *SMOKE, "logger=none", "trainer.max_epochs=4",
            "checkpoint.every_n_train_steps=4", f"hydra.sweep.dir={tmp_path}", *data_override]
    proc = subprocess.Popen([sys.executable, "-m", "csp_ablate", *args], cwd=REPO,
                            env={**os.environ, "WANDB_MODE": "offline"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = tmp_path / "0"
    deadline = time.monotonic() + 300
    while not (job / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(history(job)[0]["pid"], signal.SIGUSR2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    events = history(job)
    starts = [h for h in events if h["event"] == "start"]
    stopped = next(h for h in events if h["event"] == "stopped")
    assert len(starts) == 2 and starts[1]["start_step"] == stopped["global_step"] > 0
    assert starts[0]["pid"] != starts[1]["pid"]  # a new process: submitit's requeue
    assert events[-1]["event"] == "end" and events[-1]["global_step"] == 32
    assert json.loads((job / "record.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_resumed_run_continues_its_wandb_run(tmp_path, data_override):
    from wandb_offline import find_offline_runs, read_offline_run

    args = [*SMOKE, "logger=wandb", "trainer.max_epochs=2", "checkpoint.every_n_train_steps=2",
            f"hydra.run.dir={tmp_path}", *data_override]
    kill_after_first_checkpoint(args, tmp_path)
    second = run_cli(*args, env={"WANDB_MODE": "offline"})
    assert second.returncode == 0, second.stderr[-3000:]
    rec = json.loads((tmp_path / "record.json").read_text())
    runs = [read_offline_run(d) for d in find_offline_runs(tmp_path)]
    assert len(runs) == 2 and {r["run_id"] for r in runs} == {rec["wandb_run_id"]}  # one W&B run, two launches
    assert runs[-1]["summary"]["launches"] == 2 and runs[-1]["summary"]["resumed_from_step"] >= 2


@pytest.mark.parametrize("resume_step", [None, 5])
def test_csv_logger_keeps_earlier_launches_rows_up_to_the_resumed_step(tmp_path, resume_step):
    """A relaunch appends to metrics.csv instead of Lightning's delete-and-restart; rows after the
    checkpoint (trained again) go, a new metric widens the header; a fresh run starts anew."""
    import pandas as pd

    from csp_ablate.tracking import resumable_csv_logger

    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    pd.DataFrame({"step": range(10), "train/loss": [float(10 - i) for i in range(10)]}).to_csv(metrics, index=False)
    logger = resumable_csv_logger(str(tmp_path), resume_step)
    logger.log_metrics({"train/loss": 0.5, "val/top1": 80.0}, step=6)
    logger.save()
    out = pd.read_csv(metrics)
    if resume_step is None:
        assert out["step"].tolist() == [6]
    else:
        assert out["step"].tolist() == [0, 1, 2, 3, 4, 5, 6]
        assert out["train/loss"].tolist() == [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 0.5]
        assert out["val/top1"].isna().sum() == 6 and out["val/top1"].iloc[-1] == 80.0


# ---- exact resume (issue 14) -------------------------------------------------------------
# 384 images / batch 64 = 6 steps per epoch, 2 epochs: the kill lands mid-epoch in either
# epoch; every launch trains with one thread (the thread count is part of the identity).
EXACT = (*SMOKE, "logger=none", "data.train_subset=384", "data.eval_subset=128", "trainer.max_epochs=2",
         "checkpoint.every_n_train_steps=2")
STEPS = 12


def _final_state(run_dir: Path) -> tuple[dict, dict]:
    rec = json.loads((run_dir / "record.json").read_text())
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return rec, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_override) -> tuple[dict, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(*EXACT, f"hydra.run.dir={run_dir}", *data_override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _final_state(run_dir)


def kill_at_step(args: list[str], run_dir: Path, sig: signal.Signals, step: int) -> int:
    """Start a run, send ``sig`` once last.ckpt holds step >= ``step``; the step it saved last."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "csp_ablate", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        if last.exists():
            try:
                if inspect_checkpoint(last, None)["global_step"] >= step:
                    break
            except ConfigError:  # caught between temp file and rename: look again
                pass
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-3000:]  # stopped, not finished
    if sig != signal.SIGKILL:
        assert f"stopped by {sig.name}" in out
    assert not (run_dir / "record.json").exists()
    return inspect_checkpoint(last, None)["global_step"]


@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGKILL, id="SIGKILL"),
    pytest.param(signal.SIGINT, marks=pytest.mark.slow, id="SIGINT"),
    pytest.param(signal.SIGTERM, marks=pytest.mark.slow, id="SIGTERM"),
])
def test_killed_at_a_random_step_and_relaunched_ends_bit_identical(tmp_path, data_override, uninterrupted, sig):
    """Same identity, same result, also after a kill: record metrics and final weights of the
    relaunched run equal those of the uninterrupted run exactly (not approximately)."""
    import random

    args = [*EXACT, f"hydra.run.dir={tmp_path}", *data_override]
    target = random.Random().choice([2, 4, 8])  # mid-epoch, first or second epoch
    saved = kill_at_step(args, tmp_path, sig, target)
    assert 0 < saved < STEPS
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    rec, weights = _final_state(tmp_path)
    ref_rec, ref_weights = uninterrupted
    assert rec["resumed_from_step"] == saved and rec["steps"] == ref_rec["steps"] == STEPS
    assert (rec["top1"], rec["val_top1"]) == (ref_rec["top1"], ref_rec["val_top1"]), f"killed at step {saved}"
    assert rec["config_hash"] == ref_rec["config_hash"] and rec["threads"] == 1
    assert weights.keys() == ref_weights.keys()
    differ = [k for k in weights if not torch.equal(weights[k], ref_weights[k])]
    assert not differ, f"killed at step {saved}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    assert [launch["resumed_from_step"] for launch in rec["launches"]] == [None, saved]


def test_train_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    from csp_ablate.data.sampling import EpochBatchSampler

    def batches(epoch: int, resume: tuple[int, int] | None = None, seed: int = 0) -> list:
        sampler = EpochBatchSampler(50, 8, seed=seed, with_seeds=True)
        sampler.set_epoch(epoch)
        if resume:
            sampler.resume_at(*resume)
        return list(sampler)

    full = batches(1)
    assert len(full) == 6 and full == batches(1)  # drop_last: 6 whole batches, same every time
    assert full != batches(2) and full != batches(1, seed=1)
    assert batches(1, resume=(1, 4)) == full[4:]  # the consumed batches of the same permutation
    assert batches(2, resume=(1, 4)) == batches(2)  # a position of another epoch does not apply
    assert len({s for b in full for _, s in b}) == 48  # a distinct augmentation seed per item


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from csp_ablate.data.sampling import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "s.ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_augmented_batches_do_not_depend_on_workers_or_on_a_resume(tmp_path):
    """ImageFolder's random crop/flip come from per-item seeds: the same batches with 0 or 2
    workers, and a mid-epoch resume sees exactly the rest of the epoch (data.num_workers is not
    part of the identity)."""
    from test_scale import make_imagefolder

    from csp_ablate.data.imagefolder import ImageFolderDataModule

    root = make_imagefolder(tmp_path / "imgs")

    def batches(workers: int, resume: dict | None = None) -> list[torch.Tensor]:
        dm = ImageFolderDataModule(root=str(root), num_classes=3, img_size=16, batch_size=4, num_workers=workers)
        dm.seed_train_order(5)
        dm.setup("fit")
        if resume:
            dm.load_state_dict({"train_order": resume})
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(1)
        return [x for x, _ in loader]

    plain = batches(0)
    assert len(plain) >= 3
    assert all(torch.equal(a, b) for a, b in zip(plain, batches(2), strict=True))
    resumed = batches(0, resume={"seed": 5, "epoch": 1, "batches": 2})
    assert all(torch.equal(a, b) for a, b in zip(plain[2:], resumed, strict=True))
