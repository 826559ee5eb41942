"""Experiment loggers: W&B (default), CSV or none, chosen by the ``logger`` config group.

W&B must never prompt or hang on a machine without network: ``mode=auto`` resolves to
``online`` only when an API key is configured, else ``offline`` (the run lands in
``<run dir>/wandb/offline-run-*`` and can be pushed later with ``wandb sync``).
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from csp_ablate.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` → WANDB_MODE if the user set it, else online with credentials, else offline."""
    if mode not in WANDB_MODES:
        raise ConfigError.bad_value("logger.mode", mode, WANDB_MODES)
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return "online" if has_wandb_credentials() else "offline"


def axis_tags(record: dict[str, Any]) -> list[str]:
    """W&B tags from the axes' values, e.g. ``fusion:last`` (filterable in the UI)."""
    keys = ("model", "gamma", "fusion", "activation", "neck", "extras", "tier", "dataset", "seed")
    return [f"{k}:{record[k]}" for k in keys if record.get(k) not in (None, "")]


def build_logger(cfg: DictConfig, record: dict[str, Any]):
    """The Lightning logger for this run, or ``None`` for ``logger=none``."""
    name = cfg.logger.name
    out_dir = Path(str(cfg.output_dir))
    if name == "none":
        return None
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out_dir), name="csv", version="")
    if name == "wandb":
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.get("entity"),
            group=record.get("sweep") or "adhoc",
            job_type="train",
            name=record["run_id"],
            tags=axis_tags(record),
            save_dir=str(out_dir),
            mode=resolve_wandb_mode(cfg.logger.get("mode", "auto")),
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(silent=True),
        )
    raise ConfigError.bad_value("logger", name, ("wandb", "csv", "none"))


def finish_logger(logger, record: dict[str, Any]) -> None:
    """Put the record's metrics into the W&B summary and close the run (files are flushed)."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        run = logger.experiment
        summary = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and v is not None}
        run.summary.update(summary)
        record["wandb_run_id"] = run.id
        record["wandb_dir"] = str(Path(run.dir).parent)
        run.finish()
