"""One-off migration (issue 14): absolute machine paths in committed records -> relative ones.

Records written before issue 14 hold ``wandb_dir`` as an absolute path of the machine that ran
them (``/work/main/results/proxy/table1/0/wandb/...``). A committed record must hold paths
relative to its own dir (DESIGN.md "Result contracts"); ``csp_ablate.record.write_record`` now
writes them so. This rewrites the old ones in place:

    python scripts/relativize_record_paths.py results/        # prints each change

The path is re-rooted at the repository: the part from ``results/`` on (or the record's own
dir, when the run was made in another checkout) is taken relative to the record's dir. Only
string values that are absolute paths change; the JSON keeps its key order.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePosixPath


def relative_path(value: str, record_dir: Path, repo: Path) -> str:
    """``value`` (an absolute path of any machine) relative to ``record_dir`` in ``repo``."""
    parts = PurePosixPath(value).parts
    rel_dir = record_dir.resolve().relative_to(repo.resolve()).parts  # e.g. results/proxy/table1/0
    for i in range(len(parts) - len(rel_dir) + 1):  # the record's own dir inside the old path
        if parts[i : i + len(rel_dir)] == rel_dir:
            return str(PurePosixPath(*parts[i + len(rel_dir) :])) or "."
    if "results" in parts:  # elsewhere under results/: re-root at this repository
        inside = PurePosixPath(*parts[parts.index("results") :])
        return os.path.relpath(repo / inside, record_dir.resolve())
    raise ValueError(f"{value}: no results/ in the path; cannot re-root it")


def relativize(path: Path, repo: Path) -> dict[str, tuple[str, str]]:
    """Rewrite the absolute paths in one record file; returns {key: (old, new)}."""
    record = json.loads(path.read_text())
    changes = {}
    for key, value in record.items():
        if isinstance(value, str) and PurePosixPath(value).is_absolute():
            changes[key] = (value, relative_path(value, path.parent, repo))
            record[key] = changes[key][1]
    if changes:
        path.write_text(json.dumps(record, indent=2) + "\n")
    return changes


def main(root: str) -> None:
    repo = Path(__file__).resolve().parents[1]
    for path in sorted(Path(root).rglob("record*.json")):
        for key, (old, new) in relativize(path, repo).items():
            print(f"{path}: {key}: {old} -> {new}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
