"""The paper's published numbers (a copy of the project's ``paper/reference.csv``).

One row per published figure: ``table`` (table1, figure4, table2, table3, readme_det), the
axes (``model``, ``activation``, ``gamma``, ``fusion``, ``neck``, ``extras``, ``input``), the
values (``params_m``, ``bflops``, ``top1``, ``ap``, ``ap50``, ``fps``), relative claims
(``*_delta`` against the row named in ``delta_vs``) and the ``source`` of each number.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

REFERENCE_CSV = Path(__file__).with_name("reference.csv")


@cache
def _load():
    import pandas as pd

    return pd.read_csv(REFERENCE_CSV, dtype={"extras": "string", "neck": "string", "fusion": "string"})


def load_reference(table: str | None = None):
    """The published numbers as a DataFrame (a copy), optionally one ``table`` only."""
    df = _load()
    if table is not None:
        df = df[df["table"] == table]
    return df.reset_index(drop=True).copy()
