"""The tasks (classification, detection): one LightningModule and one factory module each.

``train.run`` knows no task by name. It looks the task up in :data:`TASKS` by ``cfg.task.name``
(:func:`task_spec`) and calls the three functions every task module provides:

* ``build(cfg, datamodule, rank_zero) -> Built``: the model to train, the extra kwargs of its
  LightningModule and the record's cost (counted on rank 0 only);
* ``evaluate(trainer, module, data, resumed) -> Evaluated``: the record's final metrics;
* ``inference(cfg, model, device) -> (module, img_size)``: what the fps measurement times.

The cost is counted at the paper's input (:func:`cost_fields`): a second model built with the
paper's input channels and classes (3 and 1000 for ImageNet, 80 for COCO), since the trained
model's stem and head differ from it. That build stays where it always was, before training,
so it also keeps the random stream training starts from (same identity ⇒ same numbers).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from csp_ablate.errors import ConfigError

#: ``cfg.task.name`` -> the module that builds, evaluates and times that task.
TASKS: dict[str, str] = {
    "classification": "csp_ablate.tasks.classification",
    "detection": "csp_ablate.tasks.detection",
}


@dataclass
class Built:
    """A task's model, the extra kwargs of its LightningModule and the record's cost fields."""

    model: Any
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluated:
    """The final evaluation: record fields, the images behind them, and which split they are."""

    metrics: dict[str, float | None]
    n_val: float | None
    n_images: int
    split: str  # "test" or "val" (COCO has no labelled test split)


def task_spec(name: str) -> ModuleType:
    """The factory module of task ``name`` (``build``, ``evaluate``, ``inference``)."""
    if name not in TASKS:
        raise ConfigError.bad_value("task", name, tuple(TASKS))
    return importlib.import_module(TASKS[name])


def metric(trainer, key: str) -> float | None:
    """A logged metric rounded as the record stores it (None when it was never logged)."""
    value = trainer.callback_metrics.get(key)
    return round(float(value), 4) if value is not None else None


def cost_fields(cfg, paper_model, model) -> dict[str, Any]:
    """The record's cost: ``paper_model`` at the paper's input, ``model`` as trained (BFLOPs)."""
    from csp_ablate import profile

    paper = profile.model_cost(paper_model, cfg.profile.paper_img_size, 3)
    return {
        "params_m": round(paper["params_m"], 4),
        "bflops": round(paper["bflops"], 4),
        "cio_m": round(paper["cio_m"], 4),
        "bflops_train": round(profile.count_bflops(model, cfg.data.img_size, cfg.data.channels), 5),
    }
