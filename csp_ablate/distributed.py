"""Running one job on several processes: DDP data sharding, Hydra re-launch, CPU threads.

Three things Lightning's DDP does not do the way a Hydra sweep needs:

1. **Batches.** ``data.batch_size`` is the *global* batch, as in the paper (128 on one GPU):
   with N ranks each rank gets 1/N of every batch, so the step count, the LR schedule and the
   samples per step do not change with the number of GPUs. Evaluation shards the val/test
   sets without padding, so every image is counted exactly once (Lightning's default sampler
   repeats samples to even out the shards, which biases a top-1 over a small set).
2. **Re-launch under Hydra.** Lightning starts ranks > 0 by re-running ``sys.argv`` with
   ``hydra.run.dir=<dir>``; inside a multirun that argv is the *whole sweep* (``-m a=1,2``),
   and under the joblib/submitit launchers it is not even our program. :func:`job_command`
   replays the current job instead: this job's overrides, its output dir, no ``.hydra/`` copy,
   the log in ``train_ddp_process_<rank>.log``.
3. **Threads.** Several torch processes on one machine (a joblib sweep, CPU DDP ranks) each
   default to one thread per core and slow each other down many times over; ``threads=null``
   gives each process ``cores // (parallel jobs x local ranks)``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, Sampler

from csp_ablate.data.sampling import EpochBatchSampler
from csp_ablate.errors import ConfigError
from csp_ablate.threads import (  # noqa: F401  (re-exported: the thread resolution moved there)
    THREADS_ENV, available_cpus, is_relaunched_rank, local_processes, parallel_jobs, resolve_threads,
)

log = logging.getLogger("csp_ablate")

_HYDRA_PASSTHROUGH = (  # Hydra overrides a re-launched rank must share with its job
    "hydra.job.chdir", "hydra/job_logging", "hydra/hydra_logging", "hydra.job_logging",
    "hydra.hydra_logging", "hydra.verbose", "hydra.job.env_set",
)


# ---- who am I ------------------------------------------------------------------------------
def launch_rank() -> int:
    """Global rank from the environment, before the trainer exists (0 for a plain run).

    torchrun sets RANK, SLURM sets SLURM_PROCID, Lightning's launcher LOCAL_RANK/NODE_RANK;
    callers only need to know whether this is rank 0.
    """
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return int(os.environ.get("LOCAL_RANK", "0") or 0) + int(os.environ.get("NODE_RANK", "0") or 0)


# ---- threads ----------------------------------------------------------------------------------
def configure_threads(cfg: DictConfig) -> int:
    """Apply :func:`resolve_threads`; exported so Lightning's ranks > 0 inherit the same count."""
    threads = resolve_threads(cfg)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # Lightning's DDP launcher then leaves it alone
    os.environ[THREADS_ENV] = str(threads)
    return torch.get_num_threads()


# ---- precision -----------------------------------------------------------------------------
def resolve_precision(cfg: DictConfig) -> Any:
    """``bf16-mixed`` on a CUDA GPU without bf16 (pre-Ampere) falls back to ``16-mixed``."""
    trainer = cfg.get("trainer") or {}
    precision = trainer.get("precision", "32-true")
    accel = str(trainer.get("accelerator", "auto"))
    if str(precision).startswith("bf16") and accel in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bf16 support: trainer.precision=%s -> 16-mixed", precision)
            return "16-mixed"
    return precision


# ---- re-launch of ranks > 0 under Hydra ----------------------------------------------------
def job_command(local_rank: int) -> tuple[list[str], str]:
    """The command line of this Hydra job for local rank ``local_rank`` (and its cwd)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    cmd = [sys.executable, "-m", "csp_ablate"]
    main_source = next((s for s in hc.runtime.config_sources if s.provider == "main"), None)
    if main_source is not None and main_source.schema == "file":
        cmd.append(f"--config-path={main_source.path}")
    cmd.append(f"--config-name={hc.job.config_name}")
    cmd += [str(o) for o in hc.overrides.task]
    cmd += [str(o) for o in hc.overrides.hydra if str(o).lstrip("+~").startswith(_HYDRA_PASSTHROUGH)]
    out = str(hc.runtime.output_dir).replace("\\", "\\\\").replace('"', '\\"')
    cmd += [f'hydra.run.dir="{out}"', f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null"]
    return cmd, str(hc.runtime.cwd)


def install_hydra_relaunch() -> bool:
    """Make Lightning's script launcher start ranks > 0 with :func:`job_command`.

    Lightning builds that command in ``_hydra_subprocess_cmd`` (private; see the module
    docstring for why its version breaks sweeps). tests/test_scale.py checks the hook exists,
    so a Lightning upgrade that moves it fails a test instead of a sweep.
    """
    try:
        from lightning.pytorch.strategies.launchers import subprocess_script as launcher
    except ImportError:  # pragma: no cover
        return False
    if not hasattr(launcher, "_hydra_subprocess_cmd"):
        log.warning("Lightning's DDP launcher has no _hydra_subprocess_cmd: ranks > 0 use Lightning's command")
        return False
    launcher._hydra_subprocess_cmd = job_command
    return True


class ProcessGroupScope:
    """One DDP job's process group and launcher environment, undone when the job ends.

    Lightning leaves the process group initialised and MASTER_PORT/WORLD_SIZE/... set in the
    launching process; the next job of a sequential multirun would then join the finished
    job's group (its peers are gone) instead of starting its own.
    """

    _KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")

    def __enter__(self) -> "ProcessGroupScope":
        self._env = {key: os.environ.get(key) for key in self._KEYS}
        return self

    def __exit__(self, *exc) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            try:
                torch.distributed.destroy_process_group()
            except Exception as err:  # a peer that already died: nothing left to tear down
                log.debug("destroy_process_group: %s", err)
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- data sharding -------------------------------------------------------------------------
class SplitBatchSampler(Sampler):
    """Rank ``r`` of ``w`` takes ``batch[r::w]`` of every batch of a batch-level sampler."""

    def __init__(self, batches: Sampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for batch in self.batches:
            part = list(batch)[self.rank :: self.world]
            if part:
                yield part

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)


def _loader_kwargs(loader: DataLoader) -> dict[str, Any]:
    kwargs = {
        "num_workers": loader.num_workers, "pin_memory": loader.pin_memory, "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn, "persistent_workers": loader.persistent_workers,
        "collate_fn": loader.collate_fn, "generator": loader.generator,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return kwargs


def shard_loader(loader: DataLoader, rank: int, world: int, train: bool, seed: int) -> DataLoader:
    """The part of ``loader`` that rank ``rank`` of ``world`` sees (see the module docstring)."""
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    sampler = loader.sampler
    if train and isinstance(loader.batch_sampler, EpochBatchSampler):
        # per-item loader with the seeded epoch order: every rank draws the same global batches
        if loader.batch_sampler.batch_size % world:
            raise ConfigError(
                f"data.batch_size={loader.batch_sampler.batch_size} is the global batch and must divide "
                f"evenly over the {world} DDP processes. Use a multiple of {world}."
            )
        return DataLoader(loader.dataset, batch_sampler=SplitBatchSampler(loader.batch_sampler, rank, world),
                          **_loader_kwargs(loader))
    if loader.batch_size is None and isinstance(sampler, BatchSampler):
        # batch-level loader (in-memory Fashion-MNIST): split each global batch across ranks
        if train and sampler.batch_size % world:
            raise ConfigError(
                f"data.batch_size={sampler.batch_size} is the global batch and must divide evenly over "
                f"the {world} DDP processes. Use a multiple of {world}."
            )
        if train and isinstance(sampler.sampler, RandomSampler):
            # every rank must draw the same global batches: a seeded generator, not global RNG state
            generator = torch.Generator().manual_seed(seed)
            sampler = BatchSampler(RandomSampler(sampler.sampler.data_source, generator=generator), sampler.batch_size, sampler.drop_last)
        kwargs = _loader_kwargs(loader)
        kwargs.pop("collate_fn")  # batch_size=None: the loader's default convert, not a collate
        return DataLoader(loader.dataset, sampler=SplitBatchSampler(sampler, rank, world), batch_size=None, **kwargs)
    if loader.batch_size is not None and isinstance(sampler, (RandomSampler, torch.utils.data.SequentialSampler)):
        if train:
            if loader.batch_size % world:
                raise ConfigError(
                    f"data.batch_size={loader.batch_size} is the global batch and must divide evenly "
                    f"over the {world} DDP processes. Use a multiple of {world}."
                )
            new_sampler = DistributedSampler(
                loader.dataset, num_replicas=world, rank=rank, shuffle=isinstance(sampler, RandomSampler),
                seed=seed, drop_last=True,
            )
            batch = loader.batch_size // world
        else:
            new_sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=False)
            batch = math.ceil(loader.batch_size / world)
        return DataLoader(loader.dataset, batch_size=batch, sampler=new_sampler, drop_last=loader.drop_last, **_loader_kwargs(loader))
    raise ConfigError(
        f"DDP cannot shard this {type(loader).__name__} (sampler {type(sampler).__name__}, batch_size "
        f"{loader.batch_size}): a datamodule must return loaders with a Random/SequentialSampler, or a "
        f"BatchSampler as sampler with batch_size=None."
    )


class ShardedDataModule(L.LightningDataModule):
    """Wraps a datamodule under DDP: each rank loads its share (:func:`shard_loader`)."""

    def __init__(self, inner: L.LightningDataModule, seed: int) -> None:
        super().__init__()
        self.inner, self.seed = inner, seed

    def _ranks(self) -> tuple[int, int]:
        self.inner.trainer = self.trainer
        return self.trainer.global_rank, self.trainer.world_size

    def _check_eval_size(self, loader: DataLoader, world: int, name: str) -> None:
        n = len(loader.dataset)
        if n < world:
            raise ConfigError(f"The {name} set has {n} images, fewer than the {world} DDP processes.")

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self.inner.setup(stage)

    def teardown(self, stage: str) -> None:
        self.inner.teardown(stage)

    def train_dataloader(self):
        rank, world = self._ranks()
        return shard_loader(self.inner.train_dataloader(), rank, world, train=True, seed=self.seed)

    def val_dataloader(self):
        rank, world = self._ranks()
        loader = self.inner.val_dataloader()
        self._check_eval_size(loader, world, "validation")
        return shard_loader(loader, rank, world, train=False, seed=self.seed)

    def test_dataloader(self):
        rank, world = self._ranks()
        loader = self.inner.test_dataloader()
        self._check_eval_size(loader, world, "test")
        return shard_loader(loader, rank, world, train=False, seed=self.seed)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.inner.on_before_batch_transfer(batch, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.inner.on_after_batch_transfer(batch, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
