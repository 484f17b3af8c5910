"""Stratified fold assignment by defect-class combination."""

from __future__ import annotations

import numpy as np
import pandas as pd


def assign_folds(strata: pd.Series, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row, balanced within each stratum and across folds.

    Each stratum is shuffled and dealt round-robin; the dealing starts at the fold that is smallest so far,
    so rare strata (fewer members than folds) do not all pile into fold 0.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = np.full(len(strata), -1, dtype=np.int64)
    sizes = np.zeros(n_folds, dtype=np.int64)
    # Codes rather than values: a missing stratum (None/NaN) is a stratum too, not a row left at -1.
    codes, names = pd.factorize(pd.Series(strata).to_numpy(), use_na_sentinel=False)
    counts = np.bincount(codes, minlength=len(names))
    # Largest strata first, ties by name, so the result does not depend on row order within the table.
    for code in sorted(range(len(names)), key=lambda c: (-counts[c], str(names[c]))):
        members = rng.permutation(np.flatnonzero(codes == code))
        # Deal to the folds in order of current size (smallest first, ties by index).
        order = np.lexsort((np.arange(n_folds), sizes))
        dealt = order[np.arange(members.size) % n_folds]
        folds[members] = dealt
        sizes += np.bincount(dealt, minlength=n_folds)
    return folds
