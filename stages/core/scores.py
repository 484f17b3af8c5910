"""The classifier's score tables (data/train_missing_count.csv, data/test_missing_count.csv), read and
checked: a hand-edited or foreign table fails with the file and line instead of a wrong threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.dataset import read_csv
from stages.core.errors import PipelineError

FLAG_COLUMNS = ("has_defect", "out_of_fold")


def read_scores(
    path: Path, num_classes: int, remake: str, required: Sequence[str] = ("ImageId", "allMissing")
) -> pd.DataFrame:
    """A score table: ImageId (once each), allMissing and any p_1..p_K as float probabilities in [0, 1],
    has_defect and out_of_fold (where present) as bools. `remake` says how to make the file again."""
    if not path.is_file():
        raise PipelineError(f"{path}: not found; {remake}")
    table = read_csv(path)
    absent = [column for column in required if column not in table.columns]
    if absent:
        raise PipelineError(f"{path}: no column {absent[0]} (columns: {', '.join(table.columns)}); {remake}")
    repeated = np.flatnonzero(table["ImageId"].duplicated().to_numpy())
    if repeated.size:
        image_id = table["ImageId"].iloc[repeated[0]]
        raise PipelineError(f"{path}: line {repeated[0] + 2}: image {image_id} is listed twice; {remake}")
    probabilities = ["allMissing", *(f"p_{k}" for k in range(1, num_classes + 1))]
    for column in (c for c in probabilities if c in table.columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
        if bad.size:
            raise PipelineError(
                f"{path}: line {bad[0] + 2}: {column} {table[column].iloc[bad[0]]!r} is not a probability "
                f"in [0, 1]; {remake}"
            )
        table[column] = values
    for column in (c for c in FLAG_COLUMNS if c in table.columns):
        bad = np.flatnonzero(~table[column].isin(["True", "False"]).to_numpy())
        if bad.size:
            raise PipelineError(
                f"{path}: line {bad[0] + 2}: {column} {table[column].iloc[bad[0]]!r} is not True or False; "
                f"{remake}"
            )
        table[column] = table[column] == "True"
    return table
