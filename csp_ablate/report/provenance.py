"""Provenance of a report's rows: which code built them, and whether they may be pooled at all.

Pure functions over the runs frame (one row per record, ``RECORD_KEYS`` columns):

- :func:`run_provenance`: per record, whether it was built from uncommitted code (``+dirty``
  SHA in any launch) or by launches of different commits (a resumed run finished by newer code).
- :func:`group_provenance`: the same per report row (a table row or a config hash), written to
  ``provenance.csv`` beside the tables, so a row built from dirty or mixed-SHA records is marked.
- :func:`check_poolable`: a report row pools seeds of ONE experiment; records of a row that
  differ in a result-changing record column (e.g. ``threads``: results depend on the thread
  count, issue 14) are refused with a :class:`PoolingError` that names the key and the values.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

#: Record columns that can change a result; records pooled into one row must agree on them
#: (missing values, e.g. ``threads`` in records written before it was recorded, are unknown
#: and do not split a row). ``config_hash`` catches the keys a record has no column for.
RESULT_COLUMNS = ("task", "dataset", "model", "gamma", "fusion", "neck", "extras", "activation", "tier",
                  "img_size", "epochs", "threads", "config_hash")
DIRTY = "+dirty"


class PoolingError(ValueError):
    """Records of one report row differ in a result-changing key."""


def launches_of(value: Any) -> list[dict[str, Any]]:
    """The ``launches`` cell as a list (a record holds a list; a re-read CSV holds JSON)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return []
        return parsed if isinstance(parsed, list) else []
    return []


def _shas(row: pd.Series) -> list[str]:
    shas = [str(launch.get("git_sha")) for launch in launches_of(row.get("launches")) if launch.get("git_sha")]
    final = row.get("git_sha")
    if isinstance(final, str) and final:
        shas.append(final)
    return shas


def run_provenance(runs: pd.DataFrame) -> pd.DataFrame:
    """Per record: ``dirty`` (any launch ran uncommitted code), ``mixed_sha`` (launches of
    different commits) and ``shas`` (the distinct commits, '+'-joined)."""
    shas = runs.apply(_shas, axis=1) if len(runs) else pd.Series([], dtype=object)
    commits = shas.map(lambda s: sorted({x.removesuffix(DIRTY) for x in s}))
    return pd.DataFrame({
        "dirty": shas.map(lambda s: any(x.endswith(DIRTY) for x in s)).astype(bool),
        "mixed_sha": commits.map(lambda c: len(c) > 1).astype(bool),
        "shas": commits.map(lambda c: "+".join(x[:12] for x in c)),
    }, index=runs.index)


def group_provenance(runs: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """One row per group (``groups``: each run's report row): n records, how many dirty, and
    whether the group mixes commits; ``provenance`` says it in one word for the tables."""
    prov = run_provenance(runs).assign(group=groups.values)
    prov = prov[prov["group"].notna()]
    out = prov.groupby("group", sort=False).agg(
        n=("dirty", "size"), n_dirty=("dirty", "sum"), n_mixed=("mixed_sha", "sum"),
        commits=("shas", lambda s: "+".join(sorted({c for x in s for c in x.split("+") if c}))),
    ).reset_index()
    # a record trained by launches of different commits; seeds of one row run at different
    # commits are shown (n_commits) but are each reproducible, so they are not "mixed"
    out["mixed_sha"] = out["n_mixed"] > 0
    out["n_commits"] = out["commits"].map(lambda c: len(c.split("+")) if c else 0)
    out["provenance"] = [
        "+".join(w for w, on in (("dirty", d > 0), ("mixed-sha", m)) if on) or "clean"
        for d, m in zip(out["n_dirty"], out["mixed_sha"])
    ]
    return out


def _text(value: Any) -> str:
    """A cell as text; 2.0 (an int column with gaps) reads as 2."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def check_poolable(runs: pd.DataFrame, groups: pd.Series, columns: tuple[str, ...] = RESULT_COLUMNS) -> None:
    """Raise :class:`PoolingError` when completed records of one group differ in a result key."""
    done = runs.assign(_group=groups.values)
    done = done[(done["status"] == "completed") & done["_group"].notna()]
    problems = []
    for group, frame in done.groupby("_group", sort=False):
        for col in (c for c in columns if c in frame):
            values = frame[col].dropna().map(_text).unique()
            if len(values) > 1:
                problems.append(f"row {group!r}: {col} = {', '.join(sorted(values))}")
                break  # the first differing key says enough for this row
    if problems:
        raise PoolingError(
            "refusing to pool records that differ in a result-changing key (same identity must mean "
            "the same result; rerun them with one setting, e.g. threads=N, or report them apart): "
            + "; ".join(problems)
        )


def launches_as_json(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the ``launches`` lists as JSON text, so runs.csv holds parseable cells."""
    if "launches" not in runs:
        return runs
    cell = runs["launches"].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, list) else v)
    return runs.assign(launches=cell)


def provenance_table(runs: pd.DataFrame, spec=None) -> pd.DataFrame:
    """``provenance.csv`` of a sweep: one row per table row (or per config hash without a
    spec), after refusing rows that would pool different experiments (:func:`check_poolable`)."""
    if spec is not None:
        from csp_ablate.report.tables import assign_rows

        groups = assign_rows(runs, spec)
    else:
        groups = runs["config_hash"]
    check_poolable(runs, groups)
    return group_provenance(runs, groups)
