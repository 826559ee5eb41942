"""``run(cfg) -> record``: the one place that wires data, model, task, logger and trainer.

Order matters for the user: the data are loaded first (a missing data root fails in a second,
before any model is built or W&B run opened), the cost is counted before training (so a
crash later still leaves an honest partial record), and the record is written last,
atomically, with ``status=completed``.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from csp_ablate import profile
from csp_ablate.loggers import build_logger, finish_logger
from csp_ablate.record import base_record, now_iso, output_dir, write_record

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


def build_model(cfg: DictConfig, num_classes: int, in_chans: int) -> nn.Module:
    """timm model from the ``model`` group: every key but ``name`` is a constructor kwarg."""
    from csp_ablate.models import create_backbone

    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    name = kwargs.pop("name")
    return create_backbone(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def measure_cost(cfg: DictConfig, model: nn.Module) -> dict[str, Any]:
    """Params and BFLOPs at the paper's input (224², 1000 classes) and BFLOPs as trained."""
    paper_model = build_model(cfg, num_classes=cfg.profile.paper_num_classes, in_chans=3)
    cost = {
        "params_m": round(profile.count_params_m(paper_model), 4),
        "bflops": round(profile.count_bflops(paper_model, cfg.profile.paper_img_size, 3), 4),
        "bflops_train": round(profile.count_bflops(model, cfg.data.img_size, cfg.data.channels), 5),
    }
    return cost


def summary_line(record: dict[str, Any], path) -> str:
    axes = " ".join(
        f"{k}={record[k]}" for k in ("model", "gamma", "fusion", "activation", "tier", "seed")
        if record.get(k) is not None
    )
    return (
        f"[csp_ablate] {record['status']}: {axes} | top1={record['top1']:.2f}% "
        f"val_top1={record['val_top1']:.2f}% params={record['params_m']:.3f}M "
        f"bflops={record['bflops']:.3f} train={record['train_time_s']:.0f}s | record: {path}"
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the record written to ``record.json``."""
    _route_lightning_logs()
    record = base_record(cfg)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")

    model = build_model(cfg, num_classes=cfg.data.num_classes, in_chans=cfg.data.channels)
    record.update(measure_cost(cfg, model))
    task_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
    task = instantiate(task_kwargs, model=model, num_classes=cfg.data.num_classes)

    logger = build_logger(cfg, record)
    callbacks = []
    if cfg.trainer.get("enable_progress_bar", True):
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.progress_refresh_rate)))
    if logger is not None:
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = instantiate(cfg.trainer, logger=logger or False, default_root_dir=str(out), callbacks=callbacks)
    try:
        start = time.perf_counter()
        trainer.fit(task, datamodule=datamodule)
        record["train_time_s"] = round(time.perf_counter() - start, 2)
        val = trainer.callback_metrics.get("val/top1")
        record["val_top1"] = round(float(val), 4) if val is not None else None
        (test_metrics,) = trainer.test(task, datamodule=datamodule, verbose=False)
        record["top1"] = round(float(test_metrics["test/top1"]), 4)
        if cfg.profile.fps:
            record.update(
                fps=round(profile.measure_fps(model, cfg.data.img_size, cfg.data.channels, batch=1), 1),
                fps_device=str(next(model.parameters()).device),
                fps_batch=1,
            )
        record.update(status="completed", finished_at=now_iso())
        finish_logger(logger, record)
    except BaseException:
        if logger is not None and hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            logger.experiment.finish(exit_code=1)
        raise
    path = write_record(cfg, record)
    line = summary_line(record, path)
    log.info(line)
    print(line, flush=True)
    return record
