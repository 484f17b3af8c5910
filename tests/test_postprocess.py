"""Mask post-processing: per-class threshold and minimum area, the streaming grid search of both, gating."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stages.core.metric import mask_dice
from stages.core.postprocess import ClassRule, GridSearch, apply_rules, gate

HEIGHT, WIDTH = 8, 12
THRESHOLDS = (0.3, 0.5, 0.7)
MIN_AREAS = (0, 1, 5, 20, 60)
# Probabilities on a 0.1 grid, so some pixels sit exactly on a threshold (">=" must count them).
LEVELS = tuple(np.float32(v / 10) for v in range(11))


def blob(shape: tuple[int, int], rows: slice, cols: slice, value: float = 1.0) -> np.ndarray:
    plane = np.zeros(shape, dtype=np.float32)
    plane[rows, cols] = value
    return plane


# ---------------------------------------------------------------------------------------------- apply_rules


def test_threshold_is_per_class_and_inclusive() -> None:
    plane = np.array([[0.2, 0.4, 0.6, 0.8]], dtype=np.float32)
    probabilities = np.stack([plane, plane, plane])
    rules = [ClassRule(0.3, 0), ClassRule(np.float32(0.6).item(), 0), ClassRule(0.9, 0)]
    masks = apply_rules(probabilities, rules)
    assert masks.dtype == np.uint8 and masks.shape == probabilities.shape
    assert masks[:, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]


def test_min_area_wipes_the_whole_mask_not_single_blobs() -> None:
    shape = (10, 10)
    two_small = blob(shape, slice(0, 2), slice(0, 2)) + blob(shape, slice(8, 10), slice(8, 10))  # 4 + 4 px
    big_and_small = blob(shape, slice(0, 4), slice(0, 5)) + blob(shape, slice(9, 10), slice(7, 10))  # 20 + 3
    probabilities = np.stack([two_small, big_and_small])
    masks = apply_rules(probabilities, [ClassRule(0.5, 10), ClassRule(0.5, 10)])
    assert masks[0].sum() == 0  # 8 px in all: below 10, wiped entirely
    # 23 px in all: kept as it is, the small blob included (the rule is per mask, not per component).
    np.testing.assert_array_equal(masks[1], big_and_small.astype(np.uint8))


def test_min_area_is_inclusive() -> None:
    probabilities = blob((4, 4), slice(0, 1), slice(0, 4))[None]  # 4 px
    assert apply_rules(probabilities, [ClassRule(0.5, 4)]).sum() == 4
    assert apply_rules(probabilities, [ClassRule(0.5, 5)]).sum() == 0


def test_area_scale_converts_to_original_pixels() -> None:
    probabilities = blob((5, 5), slice(0, 2), slice(0, 5))[None]  # 10 px at this size
    assert apply_rules(probabilities, [ClassRule(0.5, 40)], area_scale=4.0).sum() == 10  # 40 original px
    assert apply_rules(probabilities, [ClassRule(0.5, 41)], area_scale=4.0).sum() == 0
    assert apply_rules(probabilities, [ClassRule(0.5, 11)]).sum() == 0  # unscaled: only 10 px
    assert apply_rules(probabilities, [ClassRule(0.5, 5)], area_scale=0.5).sum() == 10
    assert apply_rules(probabilities, [ClassRule(0.5, 6)], area_scale=0.5).sum() == 0


def test_min_area_zero_keeps_any_non_empty_mask() -> None:
    single = blob((6, 6), slice(3, 4), slice(2, 3))  # 1 px
    probabilities = np.stack([single, np.zeros((6, 6), np.float32)])
    masks = apply_rules(probabilities, [ClassRule(0.5, 0), ClassRule(0.5, 0)], area_scale=0.01)
    np.testing.assert_array_equal(masks[0], single.astype(np.uint8))
    assert masks[1].sum() == 0


# ---------------------------------------------------------------------------------------------- GridSearch


def naive_mean_dice(
    probabilities: np.ndarray, truth: np.ndarray, area_scale: float, thresholds: tuple, min_areas: tuple
) -> np.ndarray:
    """(K, T, A) mean Dice by brute force: apply_rules image by image, then mask_dice."""
    n, k = truth.shape[:2]
    result = np.zeros((k, len(thresholds), len(min_areas)))
    for t, threshold in enumerate(thresholds):
        for a, min_area in enumerate(min_areas):
            rules = [ClassRule(threshold, min_area)] * k
            masks = np.stack([apply_rules(p, rules, area_scale) for p in probabilities])
            result[:, t, a] = mask_dice(masks, truth).mean(axis=0)
    assert n > 0
    return result


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    n = draw(st.integers(1, 4))
    k = draw(st.integers(2, 4))
    shape = (n, k, HEIGHT, WIDTH)
    probabilities = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(LEVELS)))
    # Per-mask scales and switches so that empty predictions and empty truths are common.
    scale = draw(hnp.arrays(np.float32, (n, k, 1, 1), elements=st.sampled_from((0.0, 0.5, 1.0))))
    pixels = draw(hnp.arrays(np.bool_, shape))
    present = draw(hnp.arrays(np.bool_, (n, k, 1, 1)))
    area_scale = draw(st.sampled_from((1.0, 0.5, 3.0)))
    return probabilities * scale, (pixels & present).astype(np.uint8), area_scale


@settings(max_examples=60, deadline=None)
@given(batches())
def test_grid_search_equals_brute_force(batch: tuple[np.ndarray, np.ndarray, float]) -> None:
    probabilities, truth, area_scale = batch
    grid = GridSearch(THRESHOLDS, MIN_AREAS, truth.shape[1])
    grid.update(probabilities, truth, area_scale)
    expected = naive_mean_dice(probabilities, truth, area_scale, THRESHOLDS, MIN_AREAS)
    np.testing.assert_allclose(grid.mean_dice(), expected, rtol=0, atol=1e-12)
    assert grid.count == len(probabilities)


@settings(max_examples=30, deadline=None)
@given(batches(), batches(), st.sampled_from((1.0, 2.0)))
def test_grid_search_streams(
    first: tuple[np.ndarray, np.ndarray, float],
    second: tuple[np.ndarray, np.ndarray, float],
    area_scale: float,
) -> None:
    k = min(first[0].shape[1], second[0].shape[1])
    (p1, t1, _), (p2, t2, _) = first, second
    p1, t1, p2, t2 = p1[:, :k], t1[:, :k], p2[:, :k], t2[:, :k]
    streamed = GridSearch(THRESHOLDS, MIN_AREAS, k)
    streamed.update(p1, t1, area_scale)
    streamed.update(p2, t2, area_scale)
    whole = GridSearch(THRESHOLDS, MIN_AREAS, k)
    whole.update(np.concatenate([p1, p2]), np.concatenate([t1, t2]), area_scale)
    assert streamed.count == whole.count == len(p1) + len(p2)
    np.testing.assert_allclose(streamed.mean_dice(), whole.mean_dice(), rtol=0, atol=1e-12)
    # ... and both are the mean over all images, not a mean of the two batches' means.
    expected = naive_mean_dice(
        np.concatenate([p1, p2]), np.concatenate([t1, t2]), area_scale, THRESHOLDS, MIN_AREAS
    )
    np.testing.assert_allclose(streamed.mean_dice(), expected, rtol=0, atol=1e-12)


def test_grid_search_picks_the_known_best_rule() -> None:
    shape = (20, 20)
    # Image 0, class 1: a large true defect (rows 0-9, 200 px) predicted at 0.45, and a small false blob
    # elsewhere at 0.35 (9 px): threshold 0.4 keeps the defect and drops the blob; 0.5 loses the defect.
    truth0 = blob(shape, slice(0, 10), slice(0, 20))
    prob0 = np.maximum(0.45 * truth0 + blob(shape, slice(15, 18), slice(5, 8), 0.35), 0.05)
    # Image 1, class 1: clean, with a false 16 px blob at 0.45 that only a min area above 16 removes.
    truth1 = np.zeros(shape, np.float32)
    prob1 = blob(shape, slice(12, 16), slice(12, 16), 0.45)
    # Class 2: clean everywhere and never predicted: every rule scores 1, ties go to the lowest ones.
    probabilities = np.stack([np.stack([prob0, np.zeros(shape)]), np.stack([prob1, np.zeros(shape)])])
    truth = np.stack([np.stack([truth0, truth1 * 0]), np.stack([truth1, truth1 * 0])]).astype(np.uint8)

    grid = GridSearch((0.3, 0.4, 0.5), (0, 10, 50, 300), num_classes=2)
    grid.update(probabilities.astype(np.float32), truth)
    rules, dice = grid.best()
    assert rules == [ClassRule(0.4, 50), ClassRule(0.3, 0)]
    np.testing.assert_allclose(dice, [1.0, 1.0])
    scores = grid.mean_dice()
    # Without the min area, image 1's false blob costs it its whole Dice; min area 300 also wipes image 0.
    assert scores[0, 1, 0] == pytest.approx(0.5)
    assert scores[0, 1, 3] == pytest.approx(0.5)
    # Threshold 0.3 keeps the false 9 px blob on image 0: 2*200 / (209 + 200).
    assert scores[0, 0, 2] == pytest.approx((400 / 409 + 1) / 2)
    assert scores[0, 2, 2] == pytest.approx(0.5)  # 0.5 misses the defect on image 0


def test_grid_search_scales_areas_to_original_pixels() -> None:
    probabilities = blob((4, 4), slice(0, 1), slice(0, 4), 0.9)[None, None]  # 4 px, a false positive
    truth = np.zeros_like(probabilities, dtype=np.uint8)
    grid = GridSearch((0.5,), (10, 20), num_classes=1)
    grid.update(probabilities, truth, area_scale=4.0)  # 16 original px: wiped by 20, kept by 10
    np.testing.assert_allclose(grid.mean_dice()[0, 0], [0.0, 1.0])


# ---------------------------------------------------------------------------------------------- gate


def test_gate_wipes_images_at_or_over_the_threshold() -> None:
    all_missing = np.array([0.1, 0.5, 0.49999, 0.9, 0.50001, 1.0, 0.0])
    assert gate(all_missing, 0.5).tolist() == [False, True, False, True, True, True, False]
    assert gate(all_missing, 0.0).all()
    assert gate(all_missing, 1.0).tolist() == [False] * 5 + [True, False]
    assert gate([0.3, 0.7], 0.7).tolist() == [False, True]


def test_search_and_application_agree_on_a_probability_equal_to_the_threshold() -> None:
    # float32(0.7) is just below 0.7: the search and apply_rules must both count it the same way.
    probabilities = np.full((1, 1, 2, 2), 0.7, dtype=np.float32)
    truth = np.ones((1, 1, 2, 2), dtype=np.uint8)
    grid = GridSearch((0.7,), (0,), num_classes=1)
    grid.update(probabilities, truth)
    applied = apply_rules(probabilities[0], grid.best()[0])
    assert grid.mean_dice()[0, 0, 0] == mask_dice(applied[None], truth)[0, 0]
