"""Stratified fold assignment: a partition of the rows, balanced per stratum and overall, reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.core.folds import assign_folds

# Stratum names as prepare makes them (the set of classes present), with a skewed, realistic mix.
NAMES = ["", "3", "1", "4", "2", "3_4", "1_3", "2_3", "1_2_3"]
WEIGHTS = np.array([47, 36, 6, 5, 2, 2, 1, 0.5, 0.5])


def realistic_strata(n: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.choice(NAMES, size=n, p=WEIGHTS / WEIGHTS.sum()))


def count_matrix(strata: pd.Series, folds: np.ndarray, n_folds: int) -> pd.DataFrame:
    """Rows per (stratum, fold), every fold a column."""
    codes, names = pd.factorize(strata.to_numpy(), sort=True)
    counts = np.zeros((len(names), n_folds), dtype=np.int64)
    np.add.at(counts, (codes, folds), 1)
    return pd.DataFrame(counts, index=pd.Index(names, dtype=object), columns=range(n_folds))


@st.composite
def strata_lists(draw: st.DrawFn) -> list[str]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    return draw(st.lists(st.sampled_from(names), max_size=120))


@settings(max_examples=150, deadline=None)
@given(strata_lists(), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_balanced_partition(values: list[str], n_folds: int, seed: int) -> None:
    strata = pd.Series(values, dtype=object)
    folds = assign_folds(strata, n_folds, seed)
    assert folds.shape == (len(values),) and folds.dtype == np.int64
    # One fold per row, every row in one of 0..n_folds-1: the folds are disjoint and cover every row.
    assert ((folds >= 0) & (folds < n_folds)).all()
    if not values:
        return
    # Within each stratum, per-fold counts differ by at most 1.
    counts = count_matrix(strata, folds, n_folds)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all(), counts
    # Overall fold sizes differ by at most 1.
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.max() - sizes.min() <= 1, sizes
    # Same seed, same folds.
    np.testing.assert_array_equal(assign_folds(strata, n_folds, seed), folds)


@settings(max_examples=60, deadline=None)
@given(strata_lists(), st.integers(2, 6), st.integers(0, 1000), st.integers(0, 2**32 - 1))
def test_counts_do_not_depend_on_row_order(values: list[str], n_folds: int, seed: int, shuffle: int) -> None:
    strata = pd.Series(values, dtype=object)
    shuffled = strata.sample(frac=1.0, random_state=shuffle % 2**31).reset_index(drop=True)
    folds, shuffled_folds = assign_folds(strata, n_folds, seed), assign_folds(shuffled, n_folds, seed)
    pd.testing.assert_frame_equal(
        count_matrix(strata, folds, n_folds), count_matrix(shuffled, shuffled_folds, n_folds)
    )


def test_does_not_depend_on_the_series_index() -> None:
    strata = realistic_strata(200)
    reindexed = strata.set_axis(np.random.default_rng(3).permutation(np.arange(1000, 1200)))
    np.testing.assert_array_equal(assign_folds(strata, 5, 42), assign_folds(reindexed, 5, 42))


def test_realistic_table() -> None:
    strata = realistic_strata(1000)
    folds = assign_folds(strata, 5, 42)
    assert np.bincount(folds, minlength=5).tolist() == [200] * 5
    counts = count_matrix(strata, folds, 5)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()
    # Every stratum with at least 5 rows is in every fold.
    assert (counts[strata.value_counts().reindex(counts.index) >= 5] > 0).all(axis=None)


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    strata = realistic_strata(300)
    first = assign_folds(strata, 5, 42)
    np.testing.assert_array_equal(first, assign_folds(strata.copy(), 5, 42))
    others = [assign_folds(strata, 5, seed) for seed in (0, 1, 43)]
    for other in others:
        assert (other != first).mean() > 0.5  # a reshuffle, not a tweak
        # Still stratified and balanced, just different.
        counts = count_matrix(strata, other, 5)
        assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


def test_rare_strata_spread_over_the_folds() -> None:
    # Eleven common rows fill the folds to [3, 2, 2, 2, 2]; rare strata must then go to the emptier folds
    # instead of all starting at fold 0.
    strata = pd.Series(["common"] * 11 + ["r1", "r1", "r2", "r2", "r3", "r3"] + ["s1", "s2", "s3", "s4"])
    folds = assign_folds(strata, 5, 7)
    assert np.bincount(folds, minlength=5).tolist() == [5, 4, 4, 4, 4]
    rare = folds[11:17]
    for start in (0, 2, 4):
        assert rare[start] != rare[start + 1]  # a pair never shares a fold
    assert np.bincount(rare, minlength=5).max() - np.bincount(rare, minlength=5).min() <= 1
    singletons = folds[17:]
    assert len(set(singletons.tolist())) == 4  # four singletons, four different folds


@pytest.mark.parametrize("n_folds", [2, 5, 10])
def test_singletons_land_in_distinct_folds(n_folds: int) -> None:
    strata = pd.Series([f"only_{i}" for i in range(n_folds)])
    assert sorted(assign_folds(strata, n_folds, 0).tolist()) == list(range(n_folds))


def test_fewer_rows_than_folds() -> None:
    folds = assign_folds(pd.Series(["a", "a", "b"]), 5, 0)
    assert len(set(folds.tolist())) == 3


def test_missing_strata_are_a_stratum_too() -> None:
    strata = pd.Series(["a", None, "a", np.nan, None, "b", np.nan, "a"], dtype=object)
    folds = assign_folds(strata, 2, 0)
    assert ((folds == 0) | (folds == 1)).all()
    missing = folds[strata.isna().to_numpy()]
    assert sorted(np.bincount(missing, minlength=2).tolist()) == [2, 2]


def test_one_fold_and_empty_input() -> None:
    assert assign_folds(realistic_strata(20), 1, 0).tolist() == [0] * 20
    assert assign_folds(pd.Series([], dtype=object), 3, 0).size == 0


@pytest.mark.parametrize("n_folds", [0, -2])
def test_invalid_fold_count(n_folds: int) -> None:
    with pytest.raises(ValueError, match="n_folds"):
        assign_folds(pd.Series(["a"]), n_folds, 0)
