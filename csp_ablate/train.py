"""``run(cfg) -> record``: the one place that wires data, model, task, logger and trainer.

Order matters for the user: the data are loaded first (a missing data root fails in a second,
before any model is built or W&B run opened), then the checkpoint to resume from is checked
(a corrupt one fails before W&B), the cost is counted before training (so a crash later still
leaves an honest partial record), and the record is written last, atomically, with
``status=completed``.

Nothing here is task-specific: the task's factory module (:func:`csp_ablate.tasks.task_spec`,
chosen by ``cfg.task.name``) builds and costs the model, computes the final metrics and says
what the fps measurement times; W&B is reached only through :mod:`csp_ablate.tracking`.

Scale-out (issue 7): ``threads`` and precision are resolved here (:mod:`csp_ablate.distributed`);
under DDP every rank runs this function, each rank loads its share of every batch, and only
global rank 0 counts the cost, opens the W&B run and writes ``record.json``. Each run
checkpoints into ``<output_dir>/checkpoints`` and a relaunch in the same output dir resumes
(:mod:`csp_ablate.checkpoint`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from csp_ablate import checkpoint as ckpt
from csp_ablate import profile
from csp_ablate.distributed import (
    ProcessGroupScope, ShardedDataModule, configure_threads, install_hydra_relaunch, launch_rank,
    resolve_precision,
)
from csp_ablate import validate
from csp_ablate.errors import ConfigError, raised_by_checkpoint_load
from csp_ablate.record import base_record, git_state, now_iso, output_dir, summary_line, write_record
from csp_ablate.tasks import task_spec
from csp_ablate.tasks.classification import build_model  # noqa: F401  (benchmarks import it from here)
from csp_ablate.tracking import (
    build_logger, close_wandb, continue_wandb_run, finish_logger, start_wandb_early, wandb_logger, wandb_run_id,
)

log = logging.getLogger("csp_ablate")


class _DropTips(logging.Filter):
    """Lightning's advertising tips are noise in a sweep's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _route_lightning_logs() -> None:
    """One copy of each Lightning message, through Hydra's handlers (console + job log file)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.filters[:] = [_DropTips()]
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # top-1 and image counts are torchmetrics values, already synchronised over DDP ranks
    warnings.filterwarnings("ignore", message=r".*self\.log\('(val|test)/(top1|n)'.*sync_dist=True.*")
    # last.ckpt and best.ckpt share checkpoints/, and a resumed run finds it full: both expected
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # our train order resumes mid-epoch through the datamodule's state (data/sampling.py), not the loader's
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


_OUR_TRAINER_KEYS = ("channels_last", "compile")  # in the trainer group, but not Trainer kwargs


def build_task_model(cfg: DictConfig, datamodule, rank_zero: bool) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model, extra task kwargs, cost) from ``cfg.task.name``'s factory; only rank 0 counts the cost."""
    built = task_spec(cfg.task.name).build(cfg, datamodule, rank_zero)
    return built.model, built.task_kwargs, built.cost


class _WandbIdToHistory(L.Callback):
    """Rank 0 notes the W&B run id in the launch history, so a relaunch continues that run."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:
        run_id = wandb_run_id(trainer.logger) if trainer.is_global_zero else None
        if run_id is not None:
            ckpt.append_history(self.out, {"event": "wandb", "wandb_run_id": run_id})


def build_extra_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The run's ``callbacks`` group (conf/callbacks/), each entry instantiated by its ``_target_``,
    in the order given; they run after the project's own callbacks. The shape (a mapping with a
    ``_target_``) was checked before anything heavy was imported (csp_ablate.validate)."""
    extra: list[L.Callback] = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        try:
            callback = instantiate(spec)
        except Exception as err:  # a bad _target_ or argument: name the entry, not Hydra's stack
            raise ConfigError(f"callbacks.{name}: cannot instantiate {spec.get('_target_')!r}: "
                              f"{type(err).__name__}: {err}") from err
        if not isinstance(callback, L.Callback):
            raise ConfigError.bad_value(f"callbacks.{name}._target_", spec.get("_target_"),
                                        "a lightning.pytorch.Callback class")
        extra.append(callback)
    return extra


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the record written to ``record.json``."""
    with ProcessGroupScope():  # a sequential multirun's next DDP job starts from a clean slate
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    _route_lightning_logs()
    threads = configure_threads(cfg)
    rank_zero = launch_rank() == 0
    validate.check_schedule(cfg)
    record = base_record(cfg)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "seed_train_order"):  # train order = f(seed, epoch): exact resume
        datamodule.seed_train_order(int(cfg.seed))
    datamodule.prepare_data()
    # W&B's start-up overlaps data decode + model build; only for a fresh run, so a bad
    # checkpoint still fails before any W&B run exists (resumes open it lazily, as before)
    ck_enabled = bool((cfg.get("checkpoint") or {}).get("enabled", True))
    fresh = not ck_enabled or ckpt.resume_path(cfg, out) is None
    early = start_wandb_early(cfg, record) if (rank_zero and fresh) else None
    logger = None
    try:
        datamodule.setup("fit")
        validate.check_trains(cfg, datamodule)
        model, extra_kwargs, cost = build_task_model(cfg, datamodule, rank_zero)  # ranks > 0: no cost count

        record.update(cost)
        task_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
        channels_last = bool(cfg.trainer.get("channels_last", False))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        task = instantiate(task_kwargs, model=model, num_classes=cfg.data.num_classes, channels_last=channels_last,
                           **extra_kwargs)
        if cfg.trainer.get("compile", False):
            task.model = torch.compile(task.model)  # first steps compile (minutes on CPU); see bench_train_speed

        # resume: decided and checked before W&B opens a run, so a bad checkpoint costs nothing
        fingerprint = ckpt.fingerprint(cfg)
        resume = ckpt.resume_path(cfg, out) if ck_enabled else None
        resumed = ckpt.inspect_checkpoint(resume, fingerprint) if resume is not None else None
        history = ckpt.read_history(out) if ck_enabled else []
        note = ckpt.append_history if ck_enabled else (lambda *a, **k: None)  # checkpoints/launches.jsonl
        launch = 1 + sum(1 for h in history if h.get("event") == "start")
        prior_time = float((resumed or {}).get("stamp", {}).get("train_time_s") or 0.0)
        stamp = {"fingerprint": fingerprint, "run_id": record["run_id"], "config_hash": record["config_hash"]}

        extra_callbacks = build_extra_callbacks(cfg)  # a bad one fails here, before W&B opens a run
        logger = build_logger(cfg, record, early=early, resume_step=resumed["global_step"] if resumed else None)
        run_ids = [h["wandb_run_id"] for h in history if h.get("wandb_run_id")]
        if resumed is not None and run_ids:  # a resumed run logs into the same W&B run
            continue_wandb_run(logger, run_ids[-1])
        callbacks: list[L.Callback] = []
        if cfg.trainer.get("enable_progress_bar", True):
            from lightning.pytorch.callbacks import TQDMProgressBar

            callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.progress_refresh_rate)))
        if logger is not None:
            from lightning.pytorch.callbacks import LearningRateMonitor

            callbacks.append(LearningRateMonitor(logging_interval="step"))
        ck_callbacks = ckpt.build_callbacks(cfg, out, {**stamp, "train_time_s": prior_time})
        callbacks += ck_callbacks
        if wandb_logger(logger) is not None and ck_callbacks:
            callbacks.append(_WandbIdToHistory(out))
        callbacks += extra_callbacks  # conf/callbacks/: the user's, after ours
        from lightning.pytorch.callbacks import ModelCheckpoint

        install_hydra_relaunch()
        trainer_cfg = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                       if k not in _OUR_TRAINER_KEYS}
        trainer = instantiate(
            trainer_cfg,
            logger=logger or False,
            default_root_dir=str(out),
            callbacks=callbacks,
            precision=resolve_precision(cfg),
            plugins=[ckpt.AtomicCheckpointIO()],
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            use_distributed_sampler=False,  # ShardedDataModule shards (global batch, no padded eval)
        )
    except BaseException:  # the job failed before training: close the W&B run it opened
        if logger is not None:
            close_wandb(logger, exit_code=1)
        elif early is not None:
            early.abort()
        raise
    data = ShardedDataModule(datamodule, seed=int(cfg.seed)) if trainer.world_size > 1 else datamodule
    if rank_zero:
        note(out, {
            "event": "start", "launch": launch, "resumed_from": str(resume) if resume else None,
            "start_step": resumed["global_step"] if resumed else 0, "world_size": trainer.world_size,
            "threads": threads, "fingerprint": fingerprint, "pid": os.getpid(), **git_state(),
        })
        if resumed is not None:
            log.info(
                "resuming from %s at step %d (launch %d); the LR schedule continues from there",
                resume, resumed["global_step"], launch,
            )
    try:
        start = time.perf_counter()
        try:
            trainer.fit(task, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
        except Exception as err:
            if resume is not None and raised_by_checkpoint_load(err):
                raise ConfigError(
                    f"Cannot resume from {resume}: the checkpoint is corrupt (it passed the quick check, "
                    f"then Lightning's restore failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                    f"Delete it, or relaunch with checkpoint.resume=false to start over."
                ) from err
            raise
        validate.check_trained(cfg, trainer.global_step)
        record["train_time_s"] = round(prior_time + time.perf_counter() - start, 2)
        eval_start = time.perf_counter()
        final = task_spec(cfg.task.name).evaluate(trainer, task, data, resumed is not None)
        record.update(final.metrics)
        n_val, n_test = final.n_val, final.n_images
        eval_time = round(time.perf_counter() - eval_start, 2)  # the final evaluation, after fit
        validate.check_evaluated(cfg, n_test, final.split)
        if not trainer.is_global_zero:
            return record  # ranks > 0 trained and evaluated their share; rank 0 reports
        if cfg.profile.fps:  # what the task times: a classifier as trained, a detector with NMS at 320²
            timed, img_size = task_spec(cfg.task.name).inference(cfg, model, trainer.strategy.root_device)
            record.update(
                fps=round(profile.measure_fps(timed, img_size, cfg.data.channels, batch=1), 1),
                fps_device=str(next(model.parameters()).device),
                fps_batch=1,
            )
        record.update(
            status="completed", finished_at=now_iso(), steps=int(trainer.global_step),
            resumed_from_step=resumed["global_step"] if resumed else None, threads=threads,
            launches=ckpt.launches_of_this_run(out) if ck_enabled else record["launches"],
        )
        extra = {
            "test_n": n_test, "val_n": n_val, "global_step": trainer.global_step,
            "launches": launch, "resumed_from_step": resumed["global_step"] if resumed else None,
            "world_size": trainer.world_size, "threads": threads, "eval_time_s": eval_time,
        }
        if wandb_logger(logger) is not None:
            logger.experiment.summary.update(extra)
        finish_logger(logger, record)
        note(out, {"event": "end", "launch": launch, **extra})
    except SIGTERMException:
        close_wandb(logger, exit_code=1)
        ctrl_c = any(getattr(c, "stopped_by", None) == "SIGINT" for c in ck_callbacks)
        if rank_zero:
            note(out, {"event": "stopped", "launch": launch, "global_step": trainer.global_step,
                       "signal": "SIGINT" if ctrl_c else "SIGTERM"})
        if ctrl_c:  # last.ckpt is saved: the launcher reports the interrupt as for any Ctrl-C
            raise KeyboardInterrupt from None
        preempt = next((c for c in ck_callbacks if isinstance(c, ckpt.PreemptionSignal) and c.pending), None)
        if preempt is not None:
            preempt.requeue()  # submitit: resubmit this job (same output dir) and exit
        raise SystemExit(143) from None  # 128 + SIGTERM, as a shell reports a killed job
    except BaseException:
        close_wandb(logger, exit_code=1)
        raise
    path = write_record(cfg, record)
    line = summary_line(record, path)
    log.info(
        "%s | evaluated on %d images, step %d, launch %d%s, %d process(es) x %d thread(s)",
        line, n_test, trainer.global_step, launch,
        f" (resumed from step {resumed['global_step']})" if resumed else "", trainer.world_size, threads,
    )
    print(line, flush=True)
    return record

