"""``python -m csp_ablate.report <sweep dir> [--wandb]``: rebuild a sweep's report from its records."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csp_ablate.report",
        description="Rebuild runs.csv, summary, the paper table, claims and figure of a sweep dir "
        "from its record.json files alone (imports no torch).",
    )
    parser.add_argument("sweep_dir", type=Path, help="a Hydra sweep dir (hydra.sweep.dir), e.g. results/proxy/table1")
    parser.add_argument("--spec", default=None,
                        help="report spec to use: a sweep name (sweeps/<name>.yaml) or a YAML path; "
                        "default: the records' `sweep`")
    parser.add_argument("--wandb", action="store_true",
                        help="also log a W&B `report` run (offline unless an API key is set)")
    parser.add_argument("--wandb-project", default="csp_ablate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from csp_ablate.report import build_report, load_spec
    from csp_ablate.report.provenance import PoolingError
    from csp_ablate.report.records import scan_records
    import yaml

    spec = None
    try:  # a bad spec file is the user's to fix: one paragraph, exit 2, nothing written
        if args.spec and args.spec.endswith((".yaml", ".yml")):
            spec = load_spec(None, path=Path(args.spec))
        elif args.spec:
            load_spec(args.spec)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
        print(f"csp_ablate.report: error: Invalid value for '--spec': {args.spec!r} "
              f"({type(err).__name__}: {err}). Allowed: a sweep name with a sweeps/<name>.yaml, or a "
              "readable YAML file whose `report:` block has `rows` (see sweeps/table1.yaml).", file=sys.stderr)
        return 2
    try:
        report = build_report(args.sweep_dir, spec=spec, spec_name=None if spec else args.spec)
    except (FileNotFoundError, PoolingError) as err:  # no records / one row mixes experiments
        print(f"csp_ablate.report: error: {err}", file=sys.stderr)
        return 2
    print(report.line())
    skipped = [p for p, _, why in scan_records(args.sweep_dir) if why] if args.sweep_dir.is_dir() else []
    if skipped:
        print(f"csp_ablate.report: error: {len(skipped)} record file(s) skipped (see the warnings above: "
              "malformed JSON or a value of the wrong type); the report covers the others. Fix or move "
              f"them: {', '.join(map(str, skipped))}", file=sys.stderr)
        return 2
    if args.wandb:
        from csp_ablate.report.wandb_report import log_report_run

        run_id = log_report_run(report, project=args.wandb_project)
        print(f"[csp_ablate.report] W&B report run: {run_id} (dir {args.sweep_dir / 'wandb'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
