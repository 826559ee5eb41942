"""Cost of a model, checked against the paper: params, MACs/BFLOPs, CIO, per-layer cost and fps.

One module per concern:

* :mod:`~csp_ablate.profile.counting`: params, MACs / BFLOPs and CIO of one forward pass (our
  hook counter, cross-checked by ``FlopCounterMode``), the per-layer table, the bottleneck.
* :mod:`~csp_ablate.profile.throughput`: images per second.
* :mod:`~csp_ablate.profile.fidelity`: the paper's model specs, one profiled row per spec and
  the judging of each row against the published cost (:func:`~csp_ablate.profile.fidelity.judge`).
* :mod:`~csp_ablate.profile.markdown`: ``fidelity.csv|md`` and the CLI's one-model view.
* :mod:`~csp_ablate.profile.figure7`: the paper's Figure 7 for the classifiers and the detectors.
* :mod:`~csp_ablate.profile.sweep_fps`: the quiet fps of every row of a finished sweep
  (``sweep_dir=<dir>`` -> ``<dir>/fps.csv``, read by the report).
* :mod:`~csp_ablate.profile.transform`: the CSP transform on timm bases against timm's
  cspdarknet53 and the paper (``transform=true``), counted independently of the rest.
* :mod:`~csp_ablate.profile.cli`: ``python -m csp_ablate.profile`` (config ``conf/profiler.yaml``).

The training code needs :func:`model_cost`, :func:`count_bflops` and :func:`measure_fps`; they
and the rest of the public API are importable from this package (``from csp_ablate import
profile; profile.model_cost(...)``). The measured numbers and the investigation of every
residual: ``docs/fidelity.md``.
"""

from csp_ablate.profile.counting import (
    LayerCost,
    bottleneck,
    count_bflops,
    count_params_m,
    dense_block_cio,
    layer_costs,
    model_cost,
    partial_dense_block_cio,
    per_layer_table,
)
from csp_ablate.profile.fidelity import (
    ABS_TOLERANCE_PCT,
    DELTA_TOLERANCE_PT,
    NOT_BUILT,
    PAPER_BOTTLENECK_CUT_PCT,
    PAPER_CIO_M,
    ModelSpec,
    build,
    evaluate,
    fidelity_specs,
    infer_unstated_gamma,
    judge,
    na_to_none,
    profile_spec,
    reference_rows,
)
from csp_ablate.profile.figure7 import STAGES_2_3, bottleneck_report, detection_figure7, plot_per_layer
from csp_ablate.profile.markdown import fidelity_markdown, write_fidelity
from csp_ablate.profile.throughput import measure_fps, measure_throughput

__all__ = [
    "ABS_TOLERANCE_PCT",
    "DELTA_TOLERANCE_PT",
    "NOT_BUILT",
    "PAPER_BOTTLENECK_CUT_PCT",
    "PAPER_CIO_M",
    "STAGES_2_3",
    "LayerCost",
    "ModelSpec",
    "bottleneck",
    "bottleneck_report",
    "build",
    "count_bflops",
    "count_params_m",
    "dense_block_cio",
    "detection_figure7",
    "evaluate",
    "fidelity_markdown",
    "fidelity_specs",
    "infer_unstated_gamma",
    "judge",
    "layer_costs",
    "measure_fps",
    "measure_throughput",
    "model_cost",
    "na_to_none",
    "partial_dense_block_cio",
    "per_layer_table",
    "plot_per_layer",
    "profile_spec",
    "reference_rows",
    "write_fidelity",
]
