"""Scaling out (issue 7): tier=paper, ImageFolder data, DDP, launchers, benchmarks.

Fast tests check configs, the ImageFolder datamodule, DDP sharding and the re-launch command
in-process, and prove the tier=paper path end to end on a generated ImageFolder (CPU, fp32, a
few steps). Tests marked ``slow`` start several processes: CPU DDP with 2 ranks (gloo), the
joblib and submitit_local launchers (the scale benchmarks' quick mode: tests/test_benchmarks.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import REPO, run_cli
from csp_ablate.errors import ConfigError

SMOKE = ("tier=smoke", "model=peleenet", "threads=1")


def make_imagefolder(root: Path, classes: int = 3, n_train: int = 8, n_val: int = 4, size: int = 48, seed: int = 0) -> Path:
    """A learnable ImageNet-layout set of JPEGs: class k has one bright colour channel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(size, size + 8, 3), dtype=np.uint8)
                img[:, :, k % 3] = 220
                Image.fromarray(img).save(folder / f"img{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"))


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "checkpoints" / "launches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- tier=paper: the paper's settings, in config -------------------------------------------
@pytest.mark.parametrize(
    "model, steps",
    [("peleenet", 1_600_000), ("csppeleenet", 1_600_000), ("speleenet", 1_600_000),
     ("resnet50", 8_000_000), ("resnext50_32x4d", 8_000_000), ("cspresnext50", 8_000_000)],
)
def test_paper_tier_classification_settings(compose, model, steps):
    cfg = compose("tier=paper", "data=imagenet", "data.root=/data/imagenet", f"model={model}")
    assert cfg.trainer.max_steps == steps and cfg.trainer.max_epochs is None  # steps, not epochs
    assert (cfg.task.lr, cfg.task.momentum, cfg.task.weight_decay) == (0.1, 0.9, 0.005)
    assert cfg.task.poly_power > 0  # polynomial decay
    assert cfg.data.batch_size == 128 and cfg.data.img_size == 224
    assert cfg.data._target_.endswith("ImageNetDataModule")
    assert cfg.checkpoint.every_n_train_steps > 0 and cfg.checkpoint.resume == "auto"


def test_paper_tier_model_without_step_count_asks_for_max_steps(compose):
    from csp_ablate.validate import check_schedule

    cfg = compose("tier=paper", "model=peleenet", "~paper_schedule.classification.steps_by_model.peleenet")
    assert cfg.trainer.max_steps is None
    with pytest.raises(ConfigError, match=r"model=peleenet.*trainer\.max_steps=<steps>"):
        check_schedule(cfg)
    check_schedule(compose("tier=paper", "model=peleenet"))


def test_paper_tier_detection_schedule_is_config(compose):
    """COCO: 500k steps, x0.1 at 400k and 450k, momentum 0.9, wd 5e-4, batch 64, multi-scale.

    No detection task exists yet: the schedule is consumed through task.name, as the detection
    task config will be (``tier=paper task=detection``)."""
    cfg = compose("tier=paper", "model=csppeleenet")
    with open_dict(cfg):
        cfg.task.name = "detection"
    det = cfg.paper_schedule.detection
    assert cfg.trainer.max_steps == 500_000
    assert list(det.lr_milestones) == [400_000, 450_000] and det.lr_gamma == 0.1
    assert (cfg.task.momentum, cfg.task.weight_decay, cfg.data.batch_size) == (0.9, 0.0005, 64)
    lo, hi, stride = det.multi_scale
    assert lo < hi and (hi - lo) % stride == 0 and det.multi_scale_every > 0


def test_trainer_groups_gpu_and_ddp(compose):
    gpu = compose("trainer=gpu").trainer
    assert gpu.accelerator == "gpu" and gpu.precision == "bf16-mixed" and gpu.devices == 1
    ddp = compose("trainer=ddp", "trainer.num_nodes=4", "trainer.devices=8").trainer
    assert ddp.strategy == "ddp" and ddp.num_nodes == 4 and ddp.devices == 8
    assert ddp.precision == "bf16-mixed" and "sync_batchnorm" in ddp
    assert ddp.max_epochs == compose().trainer.max_epochs  # everything else inherited from trainer=cpu


def _compose_with_hydra(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_slurm_launcher_follows_the_trainer_and_is_overridable():
    cfg = _compose_with_hydra(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu" and launcher.timeout_min == 60
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeue on timeout/preemption
    single = _compose_with_hydra("hydra/launcher=slurm", "trainer=gpu").hydra.launcher
    assert (single.nodes, single.gpus_per_node, single.tasks_per_node) == (1, 1, 1)


# ---- ImageFolder -----------------------------------------------------------------------------
def _imagefolder(root, **kw):
    from csp_ablate.data.imagefolder import ImageFolderDataModule

    return ImageFolderDataModule(root=str(root), num_classes=kw.pop("num_classes", 3), **kw)


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("no_root", ["does not exist", "data.root=<dir>"]),
        ("no_train", ["/train is missing", "data.train_dir"]),
        ("no_val", ["/val is missing", "data.val_dir"]),
        ("flat_val", ["/val has no class folders", "valprep"]),
        ("empty_class", ["n00000001", "at least one image"]),
    ],
)
def test_imagefolder_layout_errors_name_path_and_fix(tmp_path, layout, expected):
    root = tmp_path / "imagenet"
    if layout != "no_root":
        make_imagefolder(root, classes=2, n_train=1, n_val=1, size=16)
    if layout == "no_train":
        import shutil

        shutil.rmtree(root / "train")
    elif layout == "no_val":
        import shutil

        shutil.rmtree(root / "val")
    elif layout == "flat_val":
        import shutil

        for sub in list((root / "val").iterdir()):
            for f in sub.iterdir():
                f.rename(root / "val" / f"{sub.name}_{f.name}")
            shutil.rmtree(sub)
    elif layout == "empty_class":
        for f in (root / "val" / "n00000001").iterdir():
            f.unlink()
    with pytest.raises(ConfigError) as info:
        _imagefolder(root, num_classes=2).setup("fit")
    msg = str(info.value)
    for text in expected:
        assert text in msg, msg
    assert str(root) in msg


def test_imagefolder_requires_root_and_matching_classes(tmp_path, tiny_imagefolder):
    from csp_ablate.data.imagefolder import ImageFolderDataModule

    with pytest.raises(ConfigError, match="data.root=<dir>"):
        ImageFolderDataModule(root=None).setup("fit")
    with pytest.raises(ConfigError, match=r"data.num_classes.*1000.*Allowed: 3"):
        _imagefolder(tiny_imagefolder, num_classes=1000).setup("fit")


def test_imagenet_without_root_is_a_clear_cli_error(tmp_path):
    proc = run_cli("tier=paper", "data=imagenet", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "data=imagenet needs data.root=<dir>" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_imagefolder_batches_and_transforms(tiny_imagefolder):
    dm = _imagefolder(tiny_imagefolder, img_size=32, batch_size=4, eval_batch_size=5, num_workers=0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 12, 12)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and y.shape == (4,)
    xf, _ = dm.on_after_batch_transfer((x, y), 0)
    assert xf.dtype == torch.float32 and -3 < float(xf.mean()) < 3
    # eval is deterministic (resize + center crop); train is random (crop + flip)
    a, _ = next(iter(dm.val_dataloader()))
    b, _ = next(iter(dm.val_dataloader()))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    assert len(dm.train_dataloader()) == 6  # drop_last: 24 // 4


def test_imagefolder_workers_and_pinning_sized_to_the_machine(tiny_imagefolder, monkeypatch):
    from csp_ablate.data import imagefolder

    assert imagefolder.auto_num_workers(1, cpus=2) == 1
    assert imagefolder.auto_num_workers(8, cpus=64) == 7
    assert imagefolder.auto_num_workers(1, cpus=96) == 16
    assert imagefolder.auto_num_workers(2, cpus=2) == 0
    dm = _imagefolder(tiny_imagefolder)
    settings = dm.loader_settings()
    assert settings["num_workers"] == imagefolder.auto_num_workers(1)
    assert settings["pin_memory"] == torch.cuda.is_available()


def test_imagefolder_subsets_cover_classes(tiny_imagefolder):
    dm = _imagefolder(tiny_imagefolder, train_subset=6, eval_subset=3, holdout=0)
    dm.setup("fit")
    assert len(dm.train_set) == 6 and len(dm.test_set) == 3
    assert {label for _, label in dm.test_set.samples} == {0, 1, 2}
    held = _imagefolder(tiny_imagefolder, holdout=5)
    held.setup("fit")
    assert len(held.train_set) == 19 and len(held.val_set) == 5 and len(held.test_set) == 12


def test_paper_tier_end_to_end_on_a_tiny_imagefolder(compose, tiny_imagefolder, tmp_path):
    """The tier=paper code path (ImageFolder, step schedule, checkpoints), shrunk to 4 CPU steps."""
    from csp_ablate.train import run

    out = tmp_path / "run"
    cfg = compose(
        "tier=paper", "data=imagenet", f"data.root={tiny_imagefolder}", "data.num_classes=3",
        "data.img_size=32", "data.batch_size=8", "data.eval_batch_size=6", "data.num_workers=0",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        "checkpoint.every_n_train_steps=2", "profile.fps=false", "logger=none", "threads=1",
        f"output_dir={out}",
    )
    rec = run(cfg)
    assert rec["status"] == "completed" and rec["tier"] == "paper" and rec["dataset"] == "imagenet"
    assert rec["img_size"] == 32 and rec["epochs"] is None and 0 <= rec["top1"] <= 100
    assert json.loads((out / "record.json").read_text())["run_id"] == rec["run_id"]
    end = history(out)[-1]
    assert end["event"] == "end" and end["global_step"] == 4 and end["test_n"] == 12 and end["val_n"] == 12
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "checkpoints" / "best.ckpt").exists()


# ---- DDP pieces, in-process ------------------------------------------------------------------
def test_split_batches_give_every_rank_its_share_of_each_global_batch():
    from torch.utils.data import BatchSampler, SequentialSampler

    from csp_ablate.distributed import SplitBatchSampler

    batches = BatchSampler(SequentialSampler(range(10)), batch_size=4, drop_last=False)
    parts = [list(SplitBatchSampler(batches, rank, 2)) for rank in (0, 1)]
    assert parts[0] == [[0, 2], [4, 6], [8]] and parts[1] == [[1, 3], [5, 7], [9]]
    seen = sorted(i for part in parts for batch in part for i in batch)
    assert seen == list(range(10))  # every index once, none padded or repeated


def test_shard_loader_train_and_eval(tiny_fmnist):
    from csp_ablate.data.fashion_mnist import FashionMNISTDataModule
    from csp_ablate.distributed import shard_loader

    dm = FashionMNISTDataModule(root=str(tiny_fmnist), val_size=200, batch_size=64, eval_batch_size=512, eval_subset=101)
    dm.setup("fit")
    train = [shard_loader(dm.train_dataloader(), r, 2, train=True, seed=3) for r in (0, 1)]
    first = [next(iter(loader)) for loader in train]
    assert all(x.shape[0] == 32 for x, _ in first)  # the global batch (64) split in two
    assert len(train[0]) == len(train[1]) == len(dm.train_dataloader())  # same step count as 1 process
    evals = [shard_loader(dm.test_dataloader(), r, 2, train=False, seed=3) for r in (0, 1)]
    counts = [sum(len(y) for _, y in loader) for loader in evals]
    assert sum(counts) == 101 and min(counts) >= 50  # every test image exactly once
    with pytest.raises(ConfigError, match="global batch"):
        shard_loader(dm.train_dataloader(), 0, 3, train=True, seed=0)


def test_shard_loader_for_per_sample_loaders(tiny_imagefolder):
    from csp_ablate.distributed import shard_loader

    dm = _imagefolder(tiny_imagefolder, img_size=16, batch_size=8, eval_batch_size=8, num_workers=0)
    dm.setup("fit")
    train = shard_loader(dm.train_dataloader(), 1, 2, train=True, seed=0)
    _, labels = next(iter(train))
    assert len(labels) == 4 and len(train) == 3  # half of each seeded global batch of 8
    evals = [shard_loader(dm.val_dataloader(), r, 2, train=False, seed=0) for r in (0, 1)]
    assert sum(len(y) for loader in evals for _, y in loader) == 12


def test_lightning_still_has_the_hydra_relaunch_hook():
    """csp_ablate.distributed replaces it; a Lightning upgrade that moves it must fail here."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    from csp_ablate.distributed import install_hydra_relaunch, job_command

    assert hasattr(subprocess_script, "_hydra_subprocess_cmd")
    assert install_hydra_relaunch() and subprocess_script._hydra_subprocess_cmd is job_command


def test_relaunched_rank_replays_this_job_not_the_sweep(tmp_path):
    """Lightning would re-run sys.argv (`-m seed=0,1 ...`: the whole sweep) for rank 1."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from csp_ablate.distributed import job_command

    cfg = _compose_with_hydra("seed=1", "tier=smoke", "hydra/launcher=joblib")
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "1")
        cfg.hydra.overrides.hydra.append("hydra.sweep.dir=/x")
    HydraConfig.instance().set_config(cfg)
    try:
        cmd, cwd = job_command(local_rank=1)
    finally:
        HydraConfig.instance().cfg = None
    assert cmd[:3] == [sys.executable, "-m", "csp_ablate"] and "-m" not in cmd[3:] and "--multirun" not in cmd
    assert "seed=1" in cmd and "tier=smoke" in cmd
    assert f'hydra.run.dir="{tmp_path / "sweep" / "1"}"' in cmd and "hydra.output_subdir=null" in cmd
    assert not any(a.startswith(("hydra/launcher", "hydra.sweep")) for a in cmd)
    assert cwd == str(REPO)


def test_bf16_falls_back_to_fp16_on_gpus_without_bf16(compose, monkeypatch):
    from csp_ablate.distributed import resolve_precision

    gpu = compose("trainer=gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(gpu) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(gpu) == "16-mixed"
    assert resolve_precision(compose()) == "32-true"  # trainer=cpu untouched


def test_threads_per_process(compose, monkeypatch):
    from csp_ablate import threads

    monkeypatch.setattr(threads, "available_cpus", lambda: 16)
    assert threads.resolve_threads(compose("threads=3")) == 3
    assert threads.resolve_threads(compose()) == 16  # one process: all cores, a number (identity)
    ddp = compose("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=4")
    assert threads.resolve_threads(ddp) == 4
    monkeypatch.setattr(threads, "parallel_jobs", lambda: 2)
    assert threads.resolve_threads(compose()) == 8
    with pytest.raises(ConfigError, match="threads"):
        threads.resolve_threads(compose("threads=0"))


# ---- multi-process (slow) --------------------------------------------------------------------
def _one_process_top1(compose, data_override, ckpt_path: Path, seed: int) -> tuple[float, int]:
    """Test top-1 of a checkpoint evaluated by one process (no DDP)."""
    import lightning as L
    from hydra.utils import instantiate

    from csp_ablate.tasks.classification import build_model
    from csp_ablate.tasks.classification import ClassificationTask

    cfg = compose(*SMOKE, f"seed={seed}", "logger=none", *data_override)
    dm = instantiate(cfg.data)
    dm.setup("test")
    model = build_model(cfg, num_classes=cfg.data.num_classes, in_chans=cfg.data.channels)
    task = ClassificationTask(model, num_classes=cfg.data.num_classes)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(task, datamodule=dm, ckpt_path=str(ckpt_path), weights_only=True, verbose=False)
    return metrics["test/top1"], int(metrics["test/n"])


def _eval_sizes(compose, data_override) -> tuple[int, int]:
    from hydra.utils import instantiate

    dm = instantiate(compose(*SMOKE, *data_override).data)
    dm.setup("fit")
    return len(dm.val_set), len(dm.test_set)


@pytest.mark.slow
def test_cpu_ddp_two_ranks_in_a_multirun(tmp_path, compose, data_override):
    """2 jobs x 2 gloo ranks: both ranks train, rank 0 alone writes record and W&B run, top-1 is
    over the whole test set (same as a 1-process eval of the final checkpoint), and the rank
    Lightning re-launches runs its own job, not the sweep, without a Hydra dir of its own."""
    from wandb_offline import find_offline_runs, read_offline_run

    proc = run_cli(
        "-m", "seed=0,1", *SMOKE, "logger=wandb", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", f"hydra.sweep.dir={tmp_path}", *data_override,
        env={"WANDB_MODE": "offline"}, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    n_val, n_test = _eval_sizes(compose, data_override)
    job_dirs = [p.name for p in tmp_path.iterdir() if p.is_dir() and p.name not in (".submitit", "wandb")]
    assert sorted(job_dirs) == ["0", "1"]  # (wandb/: the sweep's report run, written by ReportCallback)
    for job, seed in (("0", 0), ("1", 1)):
        job_dir = tmp_path / job
        rec = json.loads((job_dir / "record.json").read_text())
        assert rec["status"] == "completed" and rec["seed"] == seed
        assert (job_dir / "train_ddp_process_1.log").exists()  # rank 1 ran, logging into this job dir
        assert "GLOBAL_RANK: 1" in (job_dir / "train_ddp_process_1.log").read_text()
        assert not (job_dir / "multirun.yaml").exists()  # rank 1 did not start a sweep of its own
        (wandb_run,) = find_offline_runs(job_dir)  # one W&B run: rank 0's
        summary = read_offline_run(wandb_run)["summary"]
        assert summary["world_size"] == 2 and summary["test_n"] == n_test and summary["val_n"] == n_val
        end = history(job_dir)[-1]
        assert end["world_size"] == 2 and end["test_n"] == n_test and end["threads"] == 1
        top1, n = _one_process_top1(compose, data_override, job_dir / "checkpoints" / "last.ckpt", seed)
        assert n == n_test and abs(top1 - rec["top1"]) <= 100 / n_test + 1e-6, (top1, rec["top1"])
    assert len(list(tmp_path.glob("*/.hydra"))) == 2  # one Hydra config copy per job, none per rank


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_with_shared_threads(tmp_path, data_override):
    proc = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "tier=smoke", "model=peleenet",
        "logger=none", f"hydra.sweep.dir={tmp_path}", *data_override,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((tmp_path / job / "record.json").read_text())["status"] == "completed"
        start = history(tmp_path / job)[0]
        assert start["threads"] == max(1, (len(os.sched_getaffinity(0))) // 2)


@pytest.mark.slow
def test_submitit_local_two_job_sweep(tmp_path, data_override):
    proc = run_cli(
        "-m", "hydra/launcher=submitit_local", "seed=0,1", *SMOKE, "logger=none",
        f"hydra.sweep.dir={tmp_path}", *data_override,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((tmp_path / job / "record.json").read_text()) for job in ("0", "1")]
    assert [r["status"] for r in records] == ["completed", "completed"] and {r["seed"] for r in records} == {0, 1}
    assert (tmp_path / ".submitit").is_dir() and (tmp_path / "runs.csv").exists()
