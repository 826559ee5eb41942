"""Model zoo of the CSPNet ablations.

Importing this package registers the PeleeNet family in timm (``peleenet``, ``csppeleenet``,
``speleenet``, ``peleenext``; see :mod:`csp_ablate.models.peleenet`), after which
``timm.create_model(name, ...)`` builds them like any timm model, ``features_only`` included.

:data:`MODEL_AXES` says which of the paper's axes each model accepts; :func:`create_backbone`
is the one place that turns axis values into model kwargs (also for timm's own Table 3 models,
whose ``act_layer`` it sets from the ``activation`` axis).
"""

from __future__ import annotations

from typing import Any

from csp_ablate.errors import ConfigError
from csp_ablate.models import csp_transform, peleenet  # noqa: F401  (register the entrypoints in timm)
from csp_ablate.models.csp_transform import CSP_BASES, csp_name
from csp_ablate.models.layers import ACTIVATIONS, DEFAULT_ACTIVATION, get_act_layer
from csp_ablate.models.peleenet import FUSIONS, PeleeNet

__all__ = [
    "ACTIVATIONS",
    "CSP_BASES",
    "DEFAULT_ACTIVATION",
    "FUSIONS",
    "MODEL_AXES",
    "PELEE_MODELS",
    "TIMM_MODELS",
    "PeleeNet",
    "create_backbone",
    "get_act_layer",
]

#: Our PeleeNet family (registered in timm by importing this package).
PELEE_MODELS: tuple[str, ...] = ("peleenet", "csppeleenet", "speleenet", "peleenext")
#: timm's own models: Table 3's and DenseNet-121 (a CSP transform base); the ``activation``
#: axis maps to their ``act_layer``.
TIMM_MODELS: tuple[str, ...] = (
    "resnet50", "cspresnet50", "resnext50_32x4d", "cspresnext50", "darknet53", "cspdarknet53", "densenet121",
)

#: The paper's model axes each registered model accepts; others must be rejected. timm's
#: backbones in :data:`CSP_BASES` take gamma/fusion through the CSP transform
#: (:mod:`csp_ablate.models.csp_transform`); without them they stay timm's own model.
MODEL_AXES: dict[str, frozenset[str]] = {
    "peleenet": frozenset({"activation"}),
    "csppeleenet": frozenset({"gamma", "fusion", "activation"}),
    "speleenet": frozenset({"activation"}),
    "peleenext": frozenset({"activation"}),
    **{name: frozenset({"activation"}) for name in TIMM_MODELS},
    **{name: frozenset({"gamma", "fusion", "activation"}) for name in CSP_BASES},
}
_AXES = frozenset().union(*MODEL_AXES.values())


def create_backbone(name: str, activation: str | None = None, **kwargs: Any):
    """Build a registered model by name, never with pretrained weights.

    Args:
        name: a key of :data:`MODEL_AXES`.
        activation: ``leaky`` | ``relu`` | ``swish`` | ``mish``; ``None`` keeps the model's own
            default (``leaky`` for the PeleeNet family, timm's default for timm's models).
        **kwargs: ``gamma``/``fusion`` where :data:`MODEL_AXES` allows them, plus any timm
            keyword (``num_classes``, ``in_chans``, ``features_only``, ``out_indices``, ...).

    Raises:
        ConfigError: unknown model, an axis the model does not take, a bad axis value, or
            ``pretrained=True`` (no weights are ever downloaded).
    """
    import timm

    if name not in MODEL_AXES:
        raise ConfigError.bad_value("model", name, sorted(MODEL_AXES))
    if kwargs.pop("pretrained", False):
        raise ConfigError.bad_value("pretrained", True, [False], hint="Models are always trained from scratch.")
    given = {k for k in kwargs if k in _AXES} | ({"activation"} if activation is not None else set())
    for key in sorted(given - MODEL_AXES[name]):
        raise ConfigError(
            f"Invalid key '{key}' for model '{name}': the axis does not apply to this model. "
            f"Allowed: {', '.join(sorted(MODEL_AXES[name]))}."
        )
    if name in CSP_BASES:
        gamma, fusion = kwargs.pop("gamma", None), kwargs.pop("fusion", None)
        if fusion is not None:  # the CSP transform; fusion=none is the untouched backbone
            if gamma is None and fusion != "none":
                raise ConfigError(f"model={name} fusion={fusion} needs gamma (e.g. gamma=0.5): the share of each "
                                  "stage's channels that bypasses its blocks.")
            name, kwargs = csp_name(name), {**kwargs, "gamma": gamma, "fusion": fusion}
        elif gamma is not None:
            raise ConfigError(f"model={name} gamma={gamma} needs fusion (none, csp, first or last); without both "
                              f"axes model={name} is timm's own {name}.")
    if activation is not None:
        if name in PELEE_MODELS:
            kwargs["activation"] = activation
        else:
            kwargs["act_layer"] = get_act_layer(activation)
    return timm.create_model(name, pretrained=False, **kwargs)
