"""Alias kept for the older spelling: the CSP transform's fidelity lives in
:mod:`csp_ablate.profile.transform` (``python -m csp_ablate.profile transform=true``)."""

from csp_ablate.profile.transform import *  # noqa: F401,F403  (darknet_fidelity, delta_table, OUT_DIR, ...)
from csp_ablate.profile.transform import main

if __name__ == "__main__":
    main()
