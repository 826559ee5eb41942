"""Records -> runs.csv -> paper-shaped tables, figure and claim verdicts (pandas/matplotlib only).

``python -m csp_ablate.report <sweep dir>`` rebuilds every file from the ``record.json`` files
alone; the Hydra callback :class:`csp_ablate.callbacks.ReportCallback` runs the same
:func:`build_report` at the end of every multirun. Nothing here imports torch.

Files written at the root of the sweep dir (all atomically: temp file + rename)
    ``runs.csv``         one row per job (grid point), columns exactly ``record.RECORD_KEYS``;
                         failed jobs included with their ``error``.
    ``summary.csv|.md``  one row per configuration (config hash): n, n_failed, cost, metric
                         ``<m>_mean`` / ``<m>_ci95``; for every multirun, ad-hoc ones included.
    For a named sweep whose ``sweeps/<name>.yaml`` has a ``report:`` block:
    ``<table>.csv|.md``  the spec's rows in the paper's order: #Param, BFLOPs, compute delta vs
                         the baseline (relative %), per spec metric (``metrics:``; default top-1,
                         Table 2: AP, AP50, fps) mean ± 95 % CI (n) and its delta vs the baseline
                         with its CI (top-1/AP/AP50 in points, fps in frames/s), ``paper_*``
                         columns from reference.csv. One baseline: ``<m>_delta``; several
                         (``baselines: [gfm, efm]``): ``<m>_delta_vs_<row>`` for each.
    ``claims.csv|.md``   each claim: the paper's effect and margin δ, ours with its interval,
                         the verdict (and Holm's), mde80, seeds_needed and the reason.
    ``<figure>.png|.svg`` when the spec has a figure (Figure 4: top-1 ± CI against BFLOPs;
                         Table 2: AP ± CI against fps ± CI).

Statistics
    Per row: mean over completed seeds and the half-width of the 95 % Student-t interval,
    ``t(0.975, n-1) · s / sqrt(n)`` (NaN for n < 2). Deltas between two rows (table and claims):
    difference of means with a 95 % t-interval whose variance is the within-row variance pooled
    across all rows of the sweep (fps: Welch's), see :mod:`csp_ablate.report.verdicts`. Compute
    deltas are exact: ``(bflops / bflops_baseline - 1) · 100`` from the records' profiler counts
    (classification: 224×224, 1000 classes; detection: 320×320), identical for every seed.

Claim verdicts (``reproduced`` / ``contradicted`` / ``inconclusive``), power (``mde80``,
``seeds_needed``) and Holm's correction (``verdict_holm``): the rule is stated once, in the
docstring of :mod:`csp_ablate.report.verdicts`, and printed at the top of every claims.md.
The proxy trains on Fashion-MNIST (detection: a COCO-format proxy), not ImageNet or COCO: a
verdict says whether the paper's effect shows up on the proxy, not whether it holds there.
"""

from __future__ import annotations

from csp_ablate.report.build import Report, build_report
from csp_ablate.report.spec import ReportSpec, load_spec

__all__ = ["Report", "ReportSpec", "build_report", "load_spec"]
