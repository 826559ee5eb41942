"""The paper's axes in one place: names, allowed values, checks and column order (no torch).

Validation (:mod:`csp_ablate.validate`) imports these at start-up, before torch; the model
registries in :mod:`csp_ablate.models` hold the same lists next to the code that implements
them, and ``tests/test_failures.py`` keeps both in step, so a new neck, extra or fusion cannot
be accepted by one and rejected by the other.

Every check raises :class:`~csp_ablate.errors.ConfigError` with one paragraph naming the key,
the bad value and what is allowed (:meth:`ConfigError.bad_value`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from csp_ablate.errors import ConfigError

#: Paper Fig. 3: none = single path (a), csp (b), fusion first (c), fusion last (d).
FUSIONS: tuple[str, ...] = ("none", "csp", "first", "last")
ACTIVATIONS: tuple[str, ...] = ("leaky", "relu", "swish", "mish")
#: Table 2's necks; fpn = prn under FPN's name; yolov3: Figure 7's PeleeNet-YOLO.
NECKS: tuple[str, ...] = ("prn", "cem_sam", "gfm", "efm", "fpn", "yolov3")
EXTRAS: tuple[str, ...] = ("giou", "spp", "sam", "swish")
TIERS: tuple[str, ...] = ("smoke", "proxy", "paper")
#: timm backbones whose stages the CSP transform rewrites (``csp_ablate.models.csp_transform.CSP_BASES``).
CSP_BASES: tuple[str, ...] = ("densenet121", "resnet50", "resnext50_32x4d", "darknet53")
#: The γ of CSPPeleeNet's defaults; with ``fusion=none`` γ is unused (the network is PeleeNet).
DEFAULT_GAMMA = 0.5
#: Seeds go to numpy/torch/random via Lightning's ``seed_everything``: unsigned 32 bit.
SEED_MIN, SEED_MAX = 0, 2**32 - 1
#: Every registered model downsamples 32× (5 stride-2 steps); below 32 px the deepest map is
#: a single padded pixel and the stage no longer sees the image.
MIN_IMG_SIZE = 32

#: The axes' columns of a record, in order (``record.AXES``; runs.csv, tables).
RECORD_AXES: tuple[str, ...] = (
    "task", "dataset", "model", "gamma", "fusion", "neck", "extras", "activation", "tier",
    "img_size", "epochs",
)
#: The W&B tags of a run (``fusion:last``), filterable in the UI (:func:`csp_ablate.tracking.axis_tags`).
TAG_AXES: tuple[str, ...] = ("model", "gamma", "fusion", "activation", "neck", "extras", "tier", "dataset", "seed")
#: What names a run in a log line, in order.
LABEL_AXES: tuple[str, ...] = ("model", "gamma", "fusion", "neck", "extras", "activation", "tier", "seed")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_gamma(gamma: object) -> float:
    """γ, the share of a stage's base channels that bypasses the dense block: (0, 1)."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 < float(gamma) < 1.0:
        raise ConfigError.bad_value(
            "gamma", gamma, "a number strictly between 0 and 1 (e.g. 0.25, 0.5, 0.75)",
            "gamma is the share of a stage's base channels that bypasses the dense block.",
        )
    return float(gamma)


def check_fusion(fusion: object) -> str:
    if fusion not in FUSIONS:
        raise ConfigError.bad_value(
            "fusion", fusion, FUSIONS, "(paper Fig. 3: none=a single path, csp=b, first=c, last=d)"
        )
    return str(fusion)


def check_choice(key: str, value: object, allowed: Iterable[str], hint: str = "") -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError.bad_value(key, value, allowed, hint)
    return str(value)


def check_extras(extras: object) -> list[str]:
    """A list of distinct known extras (a duplicate would change the config hash, not the model)."""
    if extras is None or isinstance(extras, (str, bytes)) or not hasattr(extras, "__iter__"):
        raise ConfigError.bad_value("extras", extras, "a list, e.g. extras=[giou,sam] or extras=[]")
    values = [str(e) for e in extras]
    for extra in values:
        check_choice("extras", extra, EXTRAS, "e.g. extras=[giou,sam]")
    dupes = sorted({e for e in values if values.count(e) > 1})
    if dupes:
        raise ConfigError.bad_value(
            "extras", values, "each of " + ", ".join(EXTRAS) + " at most once",
            f"{', '.join(dupes)} is given twice: the detector is the same, the config hash is not.",
        )
    return values


def check_seed(seed: object) -> int:
    if not _is_int(seed) or not SEED_MIN <= int(seed) <= SEED_MAX:
        raise ConfigError.bad_value(
            "seed", seed, f"an integer from {SEED_MIN} to {SEED_MAX} (2**32 - 1)",
            "The seed goes to numpy, torch and random, which take an unsigned 32-bit value.",
        )
    return int(seed)


def check_positive_int(key: str, value: object, hint: str = "") -> int:
    if not _is_int(value) or int(value) < 1:
        raise ConfigError.bad_value(key, value, "a positive integer", hint)
    return int(value)


def check_img_size(value: object) -> int:
    if not _is_int(value) or int(value) < MIN_IMG_SIZE:
        raise ConfigError.bad_value(
            "data.img_size", value, f"an integer >= {MIN_IMG_SIZE}",
            f"Every model downsamples {MIN_IMG_SIZE}x: a smaller input leaves the last stage a "
            "single padded pixel (Fashion-MNIST's 28 px are padded to 32 by default).",
        )
    return int(value)


def check_gamma_with_fusion(gamma: object, fusion: object, gamma_given: bool) -> None:
    """γ given explicitly with ``fusion=none``: the network is PeleeNet whatever γ, but the config
    hash differs, so a sweep would train and report the same model under several names."""
    if fusion == "none" and gamma_given and gamma is not None and gamma != DEFAULT_GAMMA:
        raise ConfigError(
            f"Invalid combination 'gamma={gamma}' with 'fusion=none': with fusion=none no channels "
            f"bypass the dense blocks, so gamma is unused and the model is identical to PeleeNet "
            f"(only the config hash would differ). Allowed: drop gamma= (the single-path row uses "
            f"gamma={DEFAULT_GAMMA}), or use fusion=csp, first or last with gamma."
        )
