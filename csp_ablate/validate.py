"""Validate a composed config before anything heavy is imported.

Hydra already rejects unknown group options (``model=nosuchnet``, ``tier=huge``) with the list
of available ones (made concise by :mod:`csp_ablate.cli_errors`); this module checks the values
Hydra cannot know about: the paper axes (:mod:`csp_ablate.axes`), whether they apply to the
chosen model and task, and the few training values that would otherwise run a job that trains
nothing, never ends or silently duplicates another (seed range, epochs, batch size against the
training set, input size, γ without a partial stage, a repeated extra). Messages follow
:meth:`csp_ablate.errors.ConfigError.bad_value` (key, bad value, allowed values).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence

from omegaconf import DictConfig

from csp_ablate import axes
from csp_ablate.axes import ACTIVATIONS, CSP_BASES, EXTRAS, FUSIONS, NECKS, TIERS  # noqa: F401  (re-exported)
from csp_ablate.errors import ConfigError

log = logging.getLogger("csp_ablate")

#: Fashion-MNIST's official training split (images); the val split is held out of it.
FASHION_MNIST_TRAIN = 60000


def given_keys(overrides: Sequence[str] | None = None) -> set[str]:
    """Keys the user set on the command line (``gamma=0.3`` -> ``gamma``); from Hydra when None."""
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {str(o).split("=", 1)[0].lstrip("+~") for o in overrides if "=" in str(o)}


def validate_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first bad value in ``cfg``.

    ``overrides``: the command line's overrides (default: Hydra's, when a job runs); they tell
    a value the user asked for from a group's default (γ with ``fusion=none``).
    """
    given = given_keys(overrides)
    _validate_axes(cfg, given)
    _validate_training(cfg, given)
    _validate_callbacks(cfg)


def _validate_callbacks(cfg: DictConfig) -> None:
    """Each entry of the ``callbacks`` group is a mapping with a ``_target_`` (instantiated in
    csp_ablate.train.build_extra_callbacks, where a wrong class is named)."""
    callbacks = cfg.get("callbacks")
    if callbacks is None:
        return
    if not isinstance(callbacks, DictConfig):
        raise ConfigError.bad_value("callbacks", callbacks, "a mapping of name -> {_target_: <Callback class>, ...}")
    for name, spec in callbacks.items():
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise ConfigError(
                f"callbacks.{name} has no _target_: each extra callback names its class, e.g. "
                f"+callbacks.{name}._target_=lightning.pytorch.callbacks.EarlyStopping "
                f"+callbacks.{name}.monitor=val/top1 (conf/callbacks/none.yaml).")


def _validate_axes(cfg: DictConfig, given: set[str]) -> None:
    model_name = cfg.model.name
    model_keys = set(cfg.model.keys())
    for axis in ("gamma", "fusion"):
        if cfg.get(axis) is not None and axis not in model_keys:
            raise ConfigError(
                f"Axis '{axis}={cfg.get(axis)}' does not apply to model={model_name}: it has no "
                f"partial stage. Use model=csppeleenet or a CSP-transformable timm backbone "
                f"({', '.join(CSP_BASES)}) for '{axis}', or drop the override."
            )
    if cfg.get("fusion") is not None:
        axes.check_fusion(cfg.fusion)
    if cfg.get("gamma") is not None:
        axes.check_gamma(cfg.gamma)
        axes.check_gamma_with_fusion(cfg.gamma, cfg.get("fusion"), "gamma" in given)
    axes.check_choice("activation", cfg.get("activation"), ACTIVATIONS)
    axes.check_choice("tier", cfg.get("tier"), TIERS)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError.bad_value("seed", seed, "an integer")
    axes.check_seed(seed)
    task = cfg.task.name
    if task == "detection":
        axes.check_choice("neck", cfg.get("neck"), NECKS, "(paper Table 2; e.g. neck=efm)")
        axes.check_extras(cfg.get("extras"))
    else:
        if cfg.get("neck") is not None:
            raise ConfigError(
                f"Axis 'neck={cfg.neck}' applies to task=detection only (allowed necks: "
                f"{', '.join(NECKS)}); this run is task={task}. Drop the override."
            )
        if cfg.get("extras"):
            raise ConfigError(
                f"Axis 'extras={list(cfg.extras)}' applies to task=detection only (allowed: "
                f"{', '.join(EXTRAS)}); this run is task={task}. Drop the override."
            )


def _validate_training(cfg: DictConfig, given: set[str]) -> None:
    """Schedule and data sizes: a run that would train zero steps or never end is refused."""
    trainer, data = cfg.get("trainer"), cfg.get("data")
    if trainer is not None:
        epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
        if epochs is not None:
            axes.check_positive_int("trainer.max_epochs", epochs,
                                    "(or trainer.max_epochs=null with trainer.max_steps=<steps>)")
        if steps is not None and not (isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
                                      and (steps == -1 or steps > 0)):
            raise ConfigError.bad_value("trainer.max_steps", steps, "a positive integer, or -1 (epochs decide)")
        if epochs is None and steps == -1:  # steps=None: check_schedule names the fix
            raise ConfigError("trainer.max_epochs=null needs trainer.max_steps > 0 (the run would never end).")
    if data is None:
        return
    for key in ("batch_size", "eval_batch_size"):
        if key in data:
            axes.check_positive_int(f"data.{key}", data.get(key))
    if "img_size" in data:
        axes.check_img_size(data.get("img_size"))
    fashion_mnist = str(data.get("_target_", "")).endswith("FashionMNISTDataModule")
    if not fashion_mnist:
        return
    if cfg.get("tier") == "paper" and "trainer.max_steps" not in given:
        raise ConfigError(
            "Invalid combination 'tier=paper' with 'data=fashion_mnist': tier=paper is the paper's "
            f"ImageNet schedule ({trainer.get('max_steps') if trainer is not None else '1,600,000'} "
            "steps at batch 128), days on Fashion-MNIST. Allowed: tier=smoke or tier=proxy for "
            "Fashion-MNIST; tier=paper with data=imagenet data.root=<ImageNet dir>; or an explicit "
            "trainer.max_steps=<steps>."
        )
    _check_batch_fits(data)


def _check_batch_fits(data: DictConfig) -> None:
    """With drop_last, a batch larger than the training set trains zero steps."""
    val_size = data.get("val_size") or 0
    subset = data.get("train_subset")
    if not isinstance(val_size, numbers.Integral):
        return
    n_train = FASHION_MNIST_TRAIN - int(val_size)
    if n_train < 1:  # the held-out val split would take every training image
        raise ConfigError.bad_value(
            "data.val_size", val_size, f"an integer below Fashion-MNIST's {FASHION_MNIST_TRAIN} training images",
            "The val split is held out of the training split; nothing would be left to train on.",
        )
    if isinstance(subset, numbers.Integral) and not isinstance(subset, bool):
        if subset < 1:
            raise ConfigError.bad_value("data.train_subset", subset, "a positive integer (or null: all images)")
        n_train = min(n_train, int(subset))
    batch = data.get("batch_size")
    if batch > n_train:
        raise ConfigError.bad_value(
            "data.batch_size", batch, f"at most the training set's {n_train} images",
            "Incomplete batches are dropped in training, so this run would train zero steps.",
        )


# ---- checks that need the data or the finished fit (called by train.run) ----------------------
def check_trains(cfg: DictConfig, datamodule) -> None:
    """A training loader without one full batch (drop_last) would train zero steps: refuse it
    before any model is built, naming the batch size and the training set's size."""
    try:
        loader = datamodule.train_dataloader()
        n_batches = len(loader)
    except TypeError:  # an iterable without a length: Lightning's own checks apply
        return
    if n_batches == 0:
        n_images = len(loader.dataset) if hasattr(loader.dataset, "__len__") else "?"
        raise ConfigError.bad_value(
            "data.batch_size", cfg.data.get("batch_size"), f"at most the training set's {n_images} images",
            "Incomplete batches are dropped in training, so this run would train zero steps.",
        )


def check_trained(cfg: DictConfig, global_step: int) -> None:
    """An untrained model is not a result: zero optimizer steps after fit is an error."""
    if global_step == 0:
        raise ConfigError(
            f"The run trained zero steps (trainer.max_epochs={cfg.trainer.get('max_epochs')}, "
            f"trainer.max_steps={cfg.trainer.get('max_steps')}, trainer.limit_train_batches="
            f"{cfg.trainer.get('limit_train_batches')}, data.batch_size={cfg.data.get('batch_size')}): an "
            "untrained model is not a result. Allowed: a schedule and batch size that train at least one step."
        )


def check_evaluated(cfg: DictConfig, n_images: int, split: str) -> None:
    """A metric over zero images is meaningless: the final evaluation must see at least one."""
    if n_images < 1:
        raise ConfigError(
            f"The run evaluated zero {split} images (data.eval_subset={cfg.data.get('eval_subset')}, "
            f"trainer.limit_{split}_batches={cfg.trainer.get(f'limit_{split}_batches')}): its metric would "
            f"be meaningless. Allowed: at least one {split} image."
        )


def check_schedule(cfg: DictConfig) -> None:
    """tier=paper counts steps, as the paper does; a model without a known count must say so.

    Called by ``train.run`` before the data load: it needs the tier's resolved schedule, which
    ``validate_config`` (called with ``max_steps=None`` allowed) leaves to this check.
    """
    trainer = cfg.trainer
    if trainer.get("max_steps") is None:
        raise ConfigError(
            f"tier={cfg.get('tier')} has no training length for model={cfg.model.name}: the paper "
            f"trains PeleeNet-family models for 1,600,000 steps and ResNet/ResNeXt-based ones for "
            f"8,000,000. Set trainer.max_steps=<steps> (or add the model to "
            f"paper_schedule.classification.steps_by_model in conf/tier/paper.yaml)."
        )
    if cfg.get("tier") == "paper" and "FashionDet" in str(cfg.data.get("_target_", "")):
        log.warning("tier=paper with data=fashion_det: the paper's schedule is for COCO (data=coco data.root=...)")
    if cfg.get("tier") == "paper" and "FashionMNIST" in str(cfg.data.get("_target_", "")):
        log.warning("tier=paper with data=fashion_mnist: the paper's schedule is for ImageNet (data=imagenet data.root=...)")
    if trainer.get("max_epochs") is None and int(trainer.max_steps) < 0:
        raise ConfigError("trainer.max_epochs=null needs trainer.max_steps > 0 (the run would never end).")
