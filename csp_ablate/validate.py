"""Validate a composed config before anything heavy is imported.

Hydra already rejects unknown group options (``model=nosuchnet``, ``tier=huge``) with the list
of available ones; this module checks the values Hydra cannot know about: the paper axes and
whether they apply to the chosen model and task. Messages follow
:meth:`csp_ablate.errors.ConfigError.bad_value` (key, bad value, allowed values).
"""

from __future__ import annotations

import numbers

from omegaconf import DictConfig

from csp_ablate.errors import ConfigError

FUSIONS = ("none", "csp", "first", "last")
ACTIVATIONS = ("leaky", "relu", "swish", "mish")
NECKS = ("prn", "cem_sam", "gfm", "efm", "fpn", "yolov3")  # fpn = prn; yolov3: Figure 7's PeleeNet-YOLO
EXTRAS = ("giou", "spp", "sam", "swish")
TIERS = ("smoke", "proxy", "paper")
#: timm backbones whose stages the CSP transform rewrites (= csp_ablate.models.CSP_BASES; torch-free copy)
CSP_BASES = ("densenet121", "resnet50", "resnext50_32x4d", "darknet53")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first bad axis value in ``cfg``."""
    model_name = cfg.model.name
    model_keys = set(cfg.model.keys())
    for axis in ("gamma", "fusion"):
        if cfg.get(axis) is not None and axis not in model_keys:
            raise ConfigError(
                f"Axis '{axis}={cfg.get(axis)}' does not apply to model={model_name}: it has no "
                f"partial stage. Use model=csppeleenet or a CSP-transformable timm backbone "
                f"({', '.join(CSP_BASES)}) for '{axis}', or drop the override."
            )
    if cfg.get("fusion") is not None and cfg.fusion not in FUSIONS:
        raise ConfigError.bad_value(
            "fusion", cfg.fusion, FUSIONS, "(paper Fig. 3: none=a single path, csp=b, first=c, last=d)"
        )
    gamma = cfg.get("gamma")
    if gamma is not None:
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 < gamma < 1.0:
            raise ConfigError.bad_value(
                "gamma", gamma, "a number strictly between 0 and 1 (e.g. 0.25, 0.5, 0.75)",
                "gamma is the share of a stage's base channels that bypasses the dense block.",
            )
    if cfg.get("activation") not in ACTIVATIONS:
        raise ConfigError.bad_value("activation", cfg.get("activation"), ACTIVATIONS)
    if cfg.get("tier") not in TIERS:
        raise ConfigError.bad_value("tier", cfg.get("tier"), TIERS)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError.bad_value("seed", seed, "an integer")
    task = cfg.task.name
    if task == "detection":
        if cfg.get("neck") not in NECKS:
            raise ConfigError.bad_value("neck", cfg.get("neck"), NECKS, "(paper Table 2; e.g. neck=efm)")
        extras = cfg.get("extras")
        if extras is None or isinstance(extras, (str, bytes)) or not hasattr(extras, "__iter__"):
            raise ConfigError.bad_value("extras", extras, "a list, e.g. extras=[giou,sam] or extras=[]")
        for extra in extras:
            if extra not in EXTRAS:
                raise ConfigError.bad_value("extras", extra, EXTRAS, "e.g. extras=[giou,sam]")
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
