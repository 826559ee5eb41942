"""`python -m csp_ablate`: the thin Hydra entry point.

Only Hydra/OmegaConf are imported at module level so that ``--help`` and ``--cfg job`` stay
fast; torch, Lightning, timm and W&B are imported inside the task function, i.e. only when a
job actually runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from csp_ablate.errors import ConfigError

log = logging.getLogger("csp_ablate")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; a multirun calls this once per grid point."""
    from csp_ablate.record import is_multirun
    from csp_ablate.validate import validate_config

    try:
        validate_config(cfg)
        from csp_ablate.train import run  # heavy imports happen here, not at start-up

        record = run(cfg)
    except ConfigError as err:
        from csp_ablate.record import write_failed_record

        write_failed_record(cfg, err)
        print(f"csp_ablate: error: {err}", file=sys.stderr)
        if is_multirun():
            return None  # the sweep goes on; the record marks the gap
        sys.exit(2)
    except Exception as err:  # a crash (NaN loss, OOM, bug): keep the evidence, isolate the job
        from csp_ablate.record import write_failed_record

        write_failed_record(cfg, err)
        if is_multirun():
            log.exception("job failed; recorded as status=failed, the sweep goes on")
            return None
        raise
    return record.get("top1")


if __name__ == "__main__":
    main()
