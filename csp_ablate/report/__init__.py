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
    ``claims.csv|.md``   each claim, the paper's effect, ours, a verdict and the reason.
    ``<figure>.png|.svg`` when the spec has a figure (Figure 4: top-1 ± CI against BFLOPs;
                         Table 2: AP ± CI against fps ± CI).

Statistics
    Per row: mean over completed seeds and the half-width of the 95 % Student-t interval,
    ``t(0.975, n-1) · s / sqrt(n)`` (NaN for n < 2). Deltas between two rows: difference of
    means with Welch's 95 % interval (unpaired: one seed gives two architectures different
    weights). Compute deltas are exact: ``(bflops / bflops_baseline - 1) · 100`` from the
    records' profiler counts (classification: 224×224, 1000 classes; detection: 320×320),
    identical for every seed. fps is measured per run (batch 1), so it is a metric with a CI.

Claim verdict rule (``reproduced`` / ``contradicted`` / ``inconclusive``)
    A claim compares row ``row`` with row ``vs`` on ``metric``; it states either an effect size
    ``paper`` (BFLOPs: relative %, top-1/AP/AP50: points, fps: frames/s) or only a
    ``direction`` (increase/decrease).

    Compute (BFLOPs), judged on the exact numbers, measured change ``m`` in %:
      * size claim ``p``: ``reproduced`` if ``m`` has the sign of ``p`` and
        ``|m - p| <= max(2 points, 0.25 · |p|)`` (the paper rounds to whole %, ±0.5, and
        darknet's counting conventions differ from torch's flop counter by about a point);
        else ``contradicted``.
      * direction claim: ``reproduced`` if ``m`` has the claimed sign and ``|m| >=
        min_effect`` (e.g. 5 % for "drops significantly"); else ``contradicted``.
    Accuracy (top-1, AP, AP50), our mean delta ``d`` with its 95 % Welch interval ``[lo, hi]``:
      * size claim ``p``: ``contradicted`` if ``p`` lies outside ``[lo, hi]`` (our runs are
        inconsistent with the paper's effect); ``reproduced`` if ``p`` lies inside and ``d``
        has the sign of ``p``; ``inconclusive`` if ``p`` lies inside but ``d`` has the other sign.
      * direction claim: ``reproduced`` if ``[lo, hi]`` lies entirely on the claimed side of
        0, ``contradicted`` if entirely on the other side, else ``inconclusive``.
      * ``inconclusive`` whenever a row has no completed run or fewer than 2 (no interval).
    Speed (fps), judged on the DIRECTION (sign) only: our fps is measured at batch 1 on the run's
    own device (a shared CPU for the proxy tiers), the paper's on a GPU, so no absolute or
    relative size carries over. A size claim ``p`` is judged as the direction claim "sign of
    ``p``" (``-2 fps`` = decrease) with the accuracy direction rule above: ``reproduced`` if the
    Welch interval of our fps delta lies entirely on that side of 0, ``contradicted`` if
    entirely on the other, else (or with < 2 seeds) ``inconclusive``. The claim's text, reason
    and claims.md say "sign only".
    The proxy trains on Fashion-MNIST (detection: a COCO-format proxy), not ImageNet or COCO: a
    verdict says whether the paper's effect shows up on the proxy, not whether it holds there.
"""

from __future__ import annotations

from csp_ablate.report.build import Report, build_report
from csp_ablate.report.spec import ReportSpec, load_spec

__all__ = ["Report", "ReportSpec", "build_report", "load_spec"]
