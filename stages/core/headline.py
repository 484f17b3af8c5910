"""Headline metrics: the few figures of a stage a person compares between runs.

They are the DVC metrics files (dvc.yaml `metrics:`, data/metrics/<stage>.json): `dvc metrics show`,
`dvc metrics diff` and `dvc exp show` give every key of every such file a column or a row, so a headline
file is a flat JSON object of numbers and everything else (nesting, strings, per-fold figures) stays in the
stage's detail file, a plain output. A stage takes each headline value from its detail values, never
computing it a second time, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path

from stages.core.io import write_json


def headline(values: Mapping[str, object]) -> dict[str, int | float]:
    """The flat object of numbers to write: a bool becomes 0/1, and an undefined figure (None or NaN, an AUC
    on one class, say) is left out rather than written as null, which DVC shows as a value of its own."""
    result: dict[str, int | float] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, numbers.Integral):  # a bool too: True -> 1
            result[key] = int(value)
        elif isinstance(value, numbers.Real):
            if math.isfinite(float(value)):
                result[key] = float(value)
        else:  # a programming error, not a user's: headline files hold numbers only
            raise TypeError(f"headline metric {key!r}: {value!r} is not a number")
    return result


def write_headline(values: Mapping[str, object], path: str | Path) -> None:
    """Write a stage's headline file atomically (with the stage's other outputs, under cli.run)."""
    write_json(headline(values), path)
