"""csp_ablate: rerun, check and extend the ablations of the CSPNet paper.

Importing the package is cheap on purpose (no torch): the Hydra entry point's ``--help`` and
``--cfg job`` must stay fast. Heavy modules (models, data, tasks) are imported where used.
"""

__version__ = "0.1.0"
