"""Mask post-processing: per-class threshold and minimum area, candidate counts, the rule search (against
a brute-force loop), and the gating modes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stages.core.metric import mask_dice
from stages.core.postprocess import (
    OFF_MIN_AREA_PX,
    Candidates,
    ClassRule,
    Gate,
    apply_rules,
    candidate_counts,
    gate,
    gate_for,
    gate_threshold_candidates,
    pair_dice,
    rule_scores,
    search_rules,
    select_masks,
    supported_modes,
    tune_class_thresholds,
    tune_image_threshold,
)

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


# ---------------------------------------------------------------------------------------------- candidates


def candidates_of(probabilities: np.ndarray, truth: np.ndarray, thresholds: tuple) -> Candidates:
    """Candidates of (N, K, H, W) probabilities and truth, image by image as the segment stage counts them."""
    counts = [candidate_counts(p, thresholds, t) for p, t in zip(probabilities, truth, strict=True)]
    return Candidates(
        tuple(f"img{n}" for n in range(len(probabilities))),
        np.asarray(thresholds, dtype=np.float64),
        np.stack([area for area, _ in counts]),
        np.stack([inter for _, inter in counts]),
        truth.reshape(*truth.shape[:2], -1).sum(axis=2),
    )


def naive_scores(probabilities: np.ndarray, truth: np.ndarray, gate: Gate, thresholds: tuple) -> np.ndarray:
    """(K, T, A) mean Dice by brute force: apply_rules image by image, the gate's wipes and weighted
    min areas applied to the masks, then mask_dice."""
    n, k = truth.shape[:2]
    result = np.zeros((k, len(thresholds), len(MIN_AREAS)))
    for t, threshold in enumerate(thresholds):
        for a, min_area in enumerate(MIN_AREAS):
            masks = np.stack([apply_rules(p, [ClassRule(threshold, 0)] * k) for p in probabilities])
            for i in range(n):
                for c in range(k):
                    area = masks[i, c].sum()
                    if not gate.keep[i, c] or gate.weight[i, c] * area < min_area:
                        masks[i, c] = 0
            result[:, t, a] = mask_dice(masks, truth).mean(axis=0)
    assert n > 0
    return result


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, Gate]:
    n = draw(st.integers(1, 4))
    k = draw(st.integers(2, 4))
    shape = (n, k, HEIGHT, WIDTH)
    probabilities = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(LEVELS)))
    # Per-mask scales and switches so that empty predictions and empty truths are common.
    scale = draw(hnp.arrays(np.float32, (n, k, 1, 1), elements=st.sampled_from((0.0, 0.5, 1.0))))
    pixels = draw(hnp.arrays(np.bool_, shape))
    present = draw(hnp.arrays(np.bool_, (n, k, 1, 1)))
    keep = draw(hnp.arrays(np.bool_, (n, k)))
    weight = draw(hnp.arrays(np.float64, (n, k), elements=st.sampled_from((0.0, 0.25, 0.5, 1.0))))
    return probabilities * scale, (pixels & present).astype(np.uint8), Gate(keep, weight)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_rule_scores_equal_brute_force(batch: tuple[np.ndarray, np.ndarray, Gate]) -> None:
    probabilities, truth, gated = batch
    candidates = candidates_of(probabilities, truth, THRESHOLDS)
    expected = naive_scores(probabilities, truth, gated, THRESHOLDS)
    np.testing.assert_allclose(rule_scores(candidates, MIN_AREAS, gated), expected, rtol=0, atol=1e-12)
    open_gate = Gate.open(*truth.shape[:2])
    np.testing.assert_allclose(
        rule_scores(candidates, MIN_AREAS),
        naive_scores(probabilities, truth, open_gate, THRESHOLDS),
        atol=1e-12,
    )
    # The Dice of the chosen rules, pair by pair, is what the search said it is.
    rules, best = search_rules(candidates, MIN_AREAS, gated)
    np.testing.assert_allclose(pair_dice(candidates, rules, gated).mean(axis=0), best, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(batches())
def test_candidates_survive_a_round_trip_through_their_table(
    batch: tuple[np.ndarray, np.ndarray, Gate],
) -> None:
    probabilities, truth, _ = batch
    candidates = candidates_of(probabilities, truth, THRESHOLDS)
    assert Candidates.from_frame(candidates.to_frame()).image_ids == candidates.image_ids
    frame = candidates.to_frame().sample(frac=1.0, random_state=0)  # any row order
    again = Candidates.from_frame(frame)  # images in order of first appearance
    order = [candidates.image_ids.index(image_id) for image_id in again.image_ids]
    np.testing.assert_array_equal(again.thresholds, candidates.thresholds)
    for name in ("pred_area", "intersection", "truth_area"):
        np.testing.assert_array_equal(getattr(again, name), getattr(candidates, name)[order])


def test_candidate_table_must_be_complete() -> None:
    truth = np.zeros((2, 2, 3, 3), np.uint8)
    frame = candidates_of(np.zeros((2, 2, 3, 3), np.float32), truth, THRESHOLDS).to_frame()
    with pytest.raises(ValueError, match="candidate rows"):
        Candidates.from_frame(frame.iloc[1:])
    with pytest.raises(ValueError, match="duplicate"):
        Candidates.from_frame(pd.concat([frame.iloc[1:], frame.iloc[1:2]]))


def test_candidate_counts_by_hand() -> None:
    probabilities = np.array([[[0.2, 0.4, 0.6, 0.8]], [[0.9, 0.9, 0.1, 0.1]]], dtype=np.float32)
    truth = np.array([[[0, 1, 1, 0]], [[0, 0, 0, 0]]], dtype=np.uint8)
    areas, intersections = candidate_counts(probabilities, (0.3, 0.7), truth)
    assert areas.tolist() == [[3, 1], [2, 2]]
    assert intersections is not None and intersections.tolist() == [[2, 0], [0, 0]]
    assert candidate_counts(probabilities, (0.3,))[1] is None


def test_search_picks_the_known_best_rule() -> None:
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
    candidates = candidates_of(probabilities.astype(np.float32), truth, (0.3, 0.4, 0.5))
    areas = (0, 10, 50, 300)

    rules, dice = search_rules(candidates, areas)
    assert rules == [ClassRule(0.4, 50), ClassRule(0.3, 0)]
    np.testing.assert_allclose(dice, [1.0, 1.0])
    scores = rule_scores(candidates, areas)
    # Without the min area, image 1's false blob costs it its whole Dice; min area 300 also wipes image 0.
    assert scores[0, 1, 0] == pytest.approx(0.5)
    assert scores[0, 1, 3] == pytest.approx(0.5)
    # Threshold 0.3 keeps the false 9 px blob on image 0: 2*200 / (209 + 200).
    assert scores[0, 0, 2] == pytest.approx((400 / 409 + 1) / 2)
    assert scores[0, 2, 2] == pytest.approx(0.5)  # 0.5 misses the defect on image 0

    # A gate that wipes image 1 (the clean one) removes its false blob: no min area is needed any more.
    wiped_clean = Gate(np.array([[True, True], [False, False]]), np.ones((2, 2)))
    assert search_rules(candidates, areas, wiped_clean)[0][0] == ClassRule(0.4, 0)
    # Soft gating: image 1's mask is doubted (weight 0.1), so min area 10 wipes it (16 * 0.1 < 10) while
    # image 0's confident 200 px defect stays.
    soft = Gate(np.ones((2, 2), bool), np.array([[1.0, 1.0], [0.1, 0.1]]))
    assert search_rules(candidates, areas, soft)[0][0] == ClassRule(0.4, 10)


def test_a_class_every_rule_loses_on_is_switched_off() -> None:
    shape = (20, 20)
    # Three clean images, each with a confident 300 px false positive in both classes, and one defective
    # image: class 1's defect is missed, class 2's (25 px) is found exactly. With min areas (0, 20)
    # every rule keeps the false positives: class 1 scores 0, class 2 0.25; submitting nothing 0.75.
    false_positive = blob(shape, slice(0, 15), slice(0, 20), 0.9)
    defect = blob(shape, slice(0, 5), slice(0, 5))
    probabilities = np.stack([np.stack([false_positive, false_positive])] * 3 + [np.zeros((2, *shape))])
    truth = np.zeros_like(probabilities, dtype=np.uint8)
    truth[3] = defect
    probabilities[3, 1] = defect * 0.9
    candidates = candidates_of(probabilities.astype(np.float32), truth, (0.3, 0.5))
    rules, dice = search_rules(candidates, (0, 20))
    assert rules == [ClassRule(0.3, OFF_MIN_AREA_PX)] * 2 and rules[0].off
    assert rules[0].describe() == "off" and ClassRule(0.3, 20).describe() == "p>=0.3 area>=20"
    np.testing.assert_allclose(dice, [0.75, 0.75])
    # What the search reports is what the rules do: nothing of either class is kept, on any image.
    np.testing.assert_allclose(pair_dice(candidates, rules).mean(axis=0), dice)
    assert not select_masks(candidates.pred_area, candidates.thresholds, rules, Gate.open(4, 2)).any()
    assert not apply_rules(probabilities[0].astype(np.float32), rules).any()

    # Min area 301 wipes every mask: it ties with submitting nothing, and a tie keeps the grid's rule.
    rules, dice = search_rules(candidates, (0, 20, 301))
    assert rules == [ClassRule(0.3, 301)] * 2
    np.testing.assert_allclose(dice, [0.75, 0.75])
    # A class-2 defect as large as the image survives min area 301 while the false positives do not:
    # the rule beats submitting nothing.
    probabilities[3, 1] = 0.9
    truth[3, 1] = 1
    rules, dice = search_rules(candidates_of(probabilities.astype(np.float32), truth, (0.3, 0.5)), (0, 301))
    assert rules[1] == ClassRule(0.3, 301) and dice[1] == pytest.approx(1.0)


def test_search_and_application_agree_on_a_probability_equal_to_the_threshold() -> None:
    # float32(0.7) is just below 0.7: the counts and apply_rules must both count it the same way.
    probabilities = np.full((1, 1, 2, 2), 0.7, dtype=np.float32)
    truth = np.ones((1, 1, 2, 2), dtype=np.uint8)
    candidates = candidates_of(probabilities, truth, (0.7,))
    rules, best = search_rules(candidates, (0,))
    applied = apply_rules(probabilities[0], rules)
    assert best[0] == mask_dice(applied[None], truth)[0, 0]


def test_select_masks_follows_rules_and_gate() -> None:
    areas = np.array([[[30, 10], [0, 0]], [[500, 400], [7, 3]]])  # (N=2, K=2, T=2)
    thresholds = np.array([0.4, 0.6])
    rules = [ClassRule(0.6, 20), ClassRule(0.4, 5)]
    kept = select_masks(areas, thresholds, rules, Gate.open(2, 2))
    assert kept.tolist() == [[False, False], [True, True]]  # 10 < 20; an empty mask is never kept
    soft = Gate(np.ones((2, 2), bool), np.array([[1.0, 1.0], [0.04, 0.5]]))
    assert select_masks(areas, thresholds, rules, soft).tolist() == [[False, False], [False, False]]
    with pytest.raises(ValueError, match="not in the candidate grid"):
        select_masks(areas, thresholds, [ClassRule(0.5, 0)] * 2, Gate.open(2, 2))


# ---------------------------------------------------------------------------------------------- gating


def test_gate_wipes_images_at_or_over_the_threshold() -> None:
    all_missing = np.array([0.1, 0.5, 0.49999, 0.9, 0.50001, 1.0, 0.0])
    assert gate(all_missing, 0.5).tolist() == [False, True, False, True, True, True, False]
    assert gate(all_missing, 0.0).all()
    assert gate(all_missing, 1.0).tolist() == [False] * 5 + [True, False]
    assert gate([0.3, 0.7], 0.7).tolist() == [False, True]


ALL_MISSING = np.array([0.1, 0.5, 0.9])
PRESENCE = np.array([[0.9, 0.05], [0.3, 0.6], [0.2, 0.1]])


def test_image_gating_wipes_every_class_of_a_gated_image() -> None:
    gated = gate_for("image", ALL_MISSING, PRESENCE, 2, image_threshold=0.5)
    assert gated.keep.tolist() == [[True, True], [False, False], [False, False]]
    assert (gated.weight == 1).all()
    np.testing.assert_array_equal(gated.keep[:, 0], ~gate(ALL_MISSING, 0.5))


def test_class_gating_wipes_each_class_below_its_own_threshold() -> None:
    gated = gate_for("class", ALL_MISSING, PRESENCE, 2, 0.5, class_thresholds=[0.3, 0.1])
    # p >= threshold is kept: 0.3 on class 1 and 0.1 on class 2 sit exactly on their thresholds.
    assert gated.keep.tolist() == [[True, False], [True, True], [False, True]]
    with pytest.raises(ValueError, match="per class"):
        gate_for("class", ALL_MISSING, None, 2, 0.5, [0.3, 0.1])


def test_soft_gating_weights_by_presence_and_never_wipes_outright() -> None:
    gated = gate_for("soft", ALL_MISSING, PRESENCE, 2, 0.5)
    assert gated.keep.all()
    np.testing.assert_array_equal(gated.weight, PRESENCE)
    binary = gate_for("soft", ALL_MISSING, None, 2, 0.5)  # a binary classifier: 1 - allMissing per class
    np.testing.assert_allclose(binary.weight, [[0.9, 0.9], [0.5, 0.5], [0.1, 0.1]])


def test_no_gating_and_unknown_modes() -> None:
    assert gate_for("none", ALL_MISSING, None, 2, 0.0).keep.all()
    with pytest.raises(ValueError, match="unknown gating mode"):
        gate_for("sometimes", ALL_MISSING, None, 2, 0.5)
    assert supported_modes(False) == ("none", "image", "soft")
    assert supported_modes(True) == ("none", "image", "class", "soft")


# ---------------------------------------------------------------------------------------------- tuned gates


def counts_table(pred: list[list[int]], inter: list[list[int]], truth: list[list[int]]) -> Candidates:
    """Candidates of one threshold (0.5) from per-image, per-class predicted, intersected and true areas."""
    return Candidates(
        tuple(f"img{n}" for n in range(len(pred))),
        np.array([0.5]),
        np.asarray(pred)[:, :, None],
        np.asarray(inter)[:, :, None],
        np.asarray(truth),
    )


# Six images, one class. Images 0-1: defects the U-Net finds; image 2: a tiny defect it misses; images
# 3-5: clean, with large false positives. allMissing ranks image 2 (the missed defect) above the clean ones.
TUNE = counts_table(
    pred=[[100], [100], [0], [900], [900], [900]],
    inter=[[90], [90], [0], [0], [0], [0]],
    truth=[[100], [100], [10], [0], [0], [0]],
)
TUNE_ALL_MISSING = np.array([0.05, 0.1, 0.9, 0.6, 0.7, 0.8])


def test_gate_threshold_candidates_realise_every_cut_and_are_capped() -> None:
    cuts = gate_threshold_candidates(np.array([0.2, 0.2, 0.6, 0.9]))
    np.testing.assert_allclose(cuts[:3], [0.0, 0.4, 0.75])
    assert cuts[3] > 0.9 and len(cuts) == 4
    many = gate_threshold_candidates(np.linspace(0, 1, 10_000), limit=50)
    assert len(many) <= 50 and many[0] == 0.0 and many[-1] > 1.0


def test_tuned_image_threshold_weighs_a_missed_defect_against_clean_false_positives() -> None:
    threshold, rules, dice = tune_image_threshold(TUNE, (0,), TUNE_ALL_MISSING)
    # Gating alone would keep every defective image (threshold above 0.9) and so the three clean false
    # positives; wiping from 0.6 up loses image 2, which the U-Net misses anyway, and removes all three.
    assert TUNE_ALL_MISSING[1] < threshold <= 0.6
    expected = pair_dice(TUNE, rules, gate_for("image", TUNE_ALL_MISSING, None, 1, threshold))
    assert dice[0] == pytest.approx(expected.mean()) == pytest.approx((2 * 180 / 200 + 3) / 6)
    above = gate_for("image", TUNE_ALL_MISSING, None, 1, 0.95)
    assert search_rules(TUNE, (0,), above)[1][0] < dice[0]


def test_tuned_image_threshold_takes_the_middle_of_the_best_plateau() -> None:
    # Every threshold between image 1 (0.1) and the lowest clean image (0.6) gives the best Dice.
    threshold, _, _ = tune_image_threshold(TUNE, (0,), TUNE_ALL_MISSING)
    cuts = gate_threshold_candidates(TUNE_ALL_MISSING)
    best = [c for c in cuts if 0.1 < c <= 0.6]
    assert threshold == best[len(best) // 2]


def test_tuned_class_thresholds_are_searched_per_class() -> None:
    two = Candidates(
        TUNE.image_ids,
        TUNE.thresholds,
        np.concatenate([TUNE.pred_area, TUNE.pred_area[::-1]], axis=1),
        np.concatenate([TUNE.intersection, TUNE.intersection[::-1]], axis=1),
        np.concatenate([TUNE.truth_area, TUNE.truth_area[::-1]], axis=1),
    )
    presence = np.stack([1 - TUNE_ALL_MISSING, (1 - TUNE_ALL_MISSING)[::-1]], axis=1)
    thresholds, rules, dice = tune_class_thresholds(two, (0,), presence)
    assert len(thresholds) == len(rules) == 2
    np.testing.assert_allclose(dice, dice[0])  # the second class is the first, mirrored
    keep = presence >= np.asarray(thresholds)[None, :]
    assert keep[:, 0].tolist() == [True, True, False, False, False, False]
    assert keep[:, 1].tolist() == [False, False, False, False, True, True]
