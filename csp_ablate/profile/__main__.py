"""``python -m csp_ablate.profile``: see :mod:`csp_ablate.profile.cli`."""

from csp_ablate.profile.cli import main

if __name__ == "__main__":
    main()
