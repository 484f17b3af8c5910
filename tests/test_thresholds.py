"""Choosing the allMissing gating threshold: candidates, confusion counts, gating Dice, the four objectives,
the plateau rule, the per-class report and the ROC/PR curves, and the per-class presence thresholds of a
multilabel classifier, on hand-made score tables."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from stages.core.thresholds import (
    OBJECTIVES,
    best_threshold,
    candidate_thresholds,
    choose_threshold,
    class_gating_dice,
    class_report,
    class_threshold_report,
    confusion,
    curves,
    gating_dice,
    objective_curve,
)

NUM_CLASSES = 4

# Seven images, sorted by allMissing. Two defective images score low, one defective image with a single
# defect class hides at the top among four clean images.
#                       D    D    C    C    C    C    D
MIXED_SCORES = np.array([0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8])
MIXED_CLASSES = np.array([3, 2, 0, 0, 0, 0, 1])
MIXED_DEFECT = MIXED_CLASSES > 0
# candidate_thresholds(MIXED_SCORES):
MIXED_THRESHOLDS = [0.0, 0.15, 0.3, 0.45, 0.55, 0.65, 0.75, float(np.nextafter(0.8, np.inf))]


def table(scores: list[float], classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(all_missing, has_defect, defect_classes, candidate thresholds) of a hand-made table."""
    all_missing = np.asarray(scores, dtype=np.float64)
    defect_classes = np.asarray(classes)
    return all_missing, defect_classes > 0, defect_classes, candidate_thresholds(all_missing)


def curve(objective: str, min_precision: float = 0.9) -> np.ndarray:
    thresholds = candidate_thresholds(MIXED_SCORES)
    return objective_curve(
        objective, MIXED_SCORES, MIXED_DEFECT, MIXED_CLASSES, NUM_CLASSES, thresholds, min_precision
    )


def chosen(objective: str, min_precision: float = 0.9) -> float:
    thresholds = candidate_thresholds(MIXED_SCORES)
    return float(thresholds[choose_threshold(objective, thresholds, curve(objective, min_precision))])


# --- candidate thresholds ---------------------------------------------------------------------------------


def test_candidates_are_zero_midpoints_and_just_above_the_top() -> None:
    np.testing.assert_allclose(candidate_thresholds(MIXED_SCORES), MIXED_THRESHOLDS)
    top = candidate_thresholds(np.array([0.3, 0.3, 0.9]))
    assert top[-1] > 0.9 and top[-1] == np.nextafter(0.9, np.inf)
    np.testing.assert_allclose(top[:-1], [0.0, 0.6])
    np.testing.assert_array_equal(candidate_thresholds(np.array([])), [0.0])


def test_a_score_of_zero_does_not_duplicate_threshold_zero() -> None:
    got = candidate_thresholds(np.array([0.0, 0.5]))
    np.testing.assert_allclose(got, [0.0, 0.25, np.nextafter(0.5, np.inf)])


# --- confusion ----------------------------------------------------------------------------------------------


def test_threshold_zero_wipes_everything_and_above_the_top_wipes_nothing() -> None:
    counts = confusion(MIXED_SCORES, MIXED_DEFECT, np.array([0.0, np.nextafter(0.8, np.inf), 5.0]))
    # Threshold 0: every image is called clean.
    assert (counts.tp[0], counts.fn[0], counts.tn[0], counts.fp[0]) == (0, 3, 4, 0)
    for i in (1, 2):  # above the highest score: every image is kept
        assert (counts.tp[i], counts.fn[i], counts.tn[i], counts.fp[i]) == (3, 0, 0, 4)


def test_confusion_at_inner_thresholds_and_the_inclusive_rule() -> None:
    counts = confusion(MIXED_SCORES, MIXED_DEFECT, np.array([0.45, 0.4, 0.8, 0.8000001]))
    # 0.45 keeps 0.1 (D), 0.2 (D), 0.4 (C).
    assert (counts.tp[0], counts.fn[0], counts.tn[0], counts.fp[0]) == (2, 1, 3, 1)
    # allMissing >= threshold is wiped: the image at exactly 0.4 is wiped.
    assert (counts.tp[1], counts.fn[1], counts.tn[1], counts.fp[1]) == (2, 1, 4, 0)
    # ... and the defective image at exactly 0.8 is wiped by threshold 0.8, kept by 0.8000001.
    assert (counts.tp[2], counts.fn[2], counts.tn[2], counts.fp[2]) == (2, 1, 0, 4)
    assert (counts.tp[3], counts.fn[3], counts.tn[3], counts.fp[3]) == (3, 0, 0, 4)


def test_confusion_does_not_need_sorted_input() -> None:
    order = np.array([6, 2, 0, 5, 3, 1, 4])
    thresholds = candidate_thresholds(MIXED_SCORES)
    a = confusion(MIXED_SCORES, MIXED_DEFECT, thresholds)
    b = confusion(MIXED_SCORES[order], MIXED_DEFECT[order], thresholds)
    for name in ("tp", "fn", "tn", "fp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_precision_recall_specificity_with_their_empty_conventions() -> None:
    counts = confusion(MIXED_SCORES, MIXED_DEFECT, np.array([0.0, 0.45, 1.0]))
    np.testing.assert_allclose(counts.precision, [1.0, 2 / 3, 3 / 7])  # nothing kept: 1 by convention
    np.testing.assert_allclose(counts.recall, [0.0, 2 / 3, 1.0])
    np.testing.assert_allclose(counts.specificity, [1.0, 3 / 4, 0.0])
    only_clean = confusion(np.array([0.2, 0.7]), np.array([False, False]), np.array([0.5]))
    assert only_clean.recall[0] == 1.0  # no defective image: nothing to miss


def test_tied_scores_always_fall_on_the_same_side() -> None:
    all_missing, has_defect, defect_classes, thresholds = table([0.5, 0.5, 0.5, 0.2], [2, 0, 0, 1])
    np.testing.assert_allclose(thresholds, [0.0, 0.35, np.nextafter(0.5, np.inf)])
    counts = confusion(all_missing, has_defect, thresholds)
    np.testing.assert_array_equal(counts.tp, [0, 1, 2])
    np.testing.assert_array_equal(counts.fn, [2, 1, 0])
    np.testing.assert_array_equal(counts.tn, [2, 2, 0])
    np.testing.assert_array_equal(counts.fp, [0, 0, 2])
    np.testing.assert_allclose(
        gating_dice(all_missing, defect_classes, NUM_CLASSES, thresholds), [13 / 16, 14 / 16, 1.0]
    )


# --- gating Dice --------------------------------------------------------------------------------------------


def test_gating_dice_by_hand() -> None:
    got = gating_dice(MIXED_SCORES, MIXED_CLASSES, NUM_CLASSES, np.asarray(MIXED_THRESHOLDS))
    lost = [6, 3, 1, 1, 1, 1, 1, 0]  # defect pairs of the wiped images; 7 images x 4 classes = 28 pairs
    np.testing.assert_allclose(got, [1 - k / 28 for k in lost])


def test_gating_dice_at_zero_is_the_all_empty_submission() -> None:
    empty_pairs = 7 * NUM_CLASSES - MIXED_CLASSES.sum()
    got = gating_dice(MIXED_SCORES, MIXED_CLASSES, NUM_CLASSES, np.array([0.0]))
    assert got[0] == pytest.approx(empty_pairs / (7 * NUM_CLASSES)) == pytest.approx(22 / 28)


def test_separable_scores() -> None:
    # Defective images score low, clean images high.
    all_missing, has_defect, defect_classes, thresholds = table([0.1, 0.2, 0.8, 0.9], [1, 2, 0, 0])
    np.testing.assert_allclose(thresholds, [0.0, 0.15, 0.5, 0.85, np.nextafter(0.9, np.inf)])
    dice = objective_curve("dice", all_missing, has_defect, defect_classes, NUM_CLASSES, thresholds)
    np.testing.assert_allclose(dice, [13 / 16, 14 / 16, 1.0, 1.0, 1.0])
    # Gating Dice counts kept images as perfectly segmented, so every threshold that keeps both defective
    # images is optimal; the plateau rule takes its middle, the dice objective its lowest threshold.
    assert best_threshold(thresholds, dice) == 3
    best = choose_threshold("dice", thresholds, dice)
    assert best == 2 and thresholds[best] == pytest.approx(0.5)
    assert dice[best] == 1.0
    # The detection objectives do cut between the groups.
    for objective in ("f1", "youden", "recall_at_precision"):
        values = objective_curve(
            objective, all_missing, has_defect, defect_classes, NUM_CLASSES, thresholds, 0.9
        )
        best = best_threshold(thresholds, values)
        assert thresholds[best] == pytest.approx(0.5), objective
        assert values[best] == pytest.approx(1.0), objective


# --- the objectives on the mixed table ------------------------------------------------------------------


def test_f1_curve_by_hand() -> None:
    precision = np.array([1, 1, 1, 2 / 3, 1 / 2, 2 / 5, 1 / 3, 3 / 7])
    recall = np.array([0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve("f1"), 2 * precision * recall / (precision + recall))
    assert chosen("f1") == pytest.approx(0.3)
    assert curve("f1").max() == pytest.approx(0.8)


def test_dice_and_f1_disagree_over_a_small_defect_among_clean_images() -> None:
    # Keeping the lone defective image at 0.8 saves one defect pair: Dice keeps everything, F1 gives it up
    # to avoid keeping four clean images.
    assert chosen("dice") == pytest.approx(np.nextafter(0.8, np.inf))
    assert chosen("f1") == pytest.approx(0.3)
    dice = curve("dice")
    assert dice.max() == 1.0
    assert dice[2] == pytest.approx(27 / 28)


def test_youden_curve_by_hand() -> None:
    tpr = np.array([0, 1, 2, 2, 2, 2, 2, 3]) / 3
    fpr = np.array([0, 0, 0, 1, 2, 3, 4, 4]) / 4
    np.testing.assert_allclose(curve("youden"), tpr - fpr)
    np.testing.assert_allclose(
        curve("youden"), [0, 1 / 3, 2 / 3, 5 / 12, 1 / 6, -1 / 12, -1 / 3, 0], atol=1e-12
    )
    assert chosen("youden") == pytest.approx(0.3)


def test_youden_differs_from_f1_when_defects_dominate() -> None:
    # Six defective images and two clean ones; one clean image scores below a defective one.
    all_missing, has_defect, defect_classes, thresholds = table(
        [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.9], [1, 1, 1, 0, 1, 1, 1, 0]
    )
    youden = objective_curve("youden", all_missing, has_defect, defect_classes, NUM_CLASSES, thresholds)
    f1 = objective_curve("f1", all_missing, has_defect, defect_classes, NUM_CLASSES, thresholds)
    # Cut at 0.75 (keep everything but 0.9): TPR 1, FPR 1/2 -> 0.5; F1 = 2 * 6/7 / (1 + 6/7) = 12/13.
    # Cut at 0.325 (keep the first three): TPR 1/2, FPR 0 -> 0.5, F1 = 2/3.
    assert youden[best_threshold(thresholds, youden)] == pytest.approx(0.5)
    assert thresholds[best_threshold(thresholds, youden)] == pytest.approx(0.325)  # first plateau
    assert thresholds[best_threshold(thresholds, f1)] == pytest.approx(0.75)
    assert f1.max() == pytest.approx(12 / 13)


def test_recall_at_precision_floors() -> None:
    # Precision of the cuts: 1, 1, 1, 2/3, 1/2, 2/5, 1/3, 3/7 (index 0 keeps nothing and is never admissible).
    np.testing.assert_allclose(curve("recall_at_precision", 0.9), [-np.inf, 1 / 3, 2 / 3] + [-np.inf] * 5)
    assert chosen("recall_at_precision", 0.9) == pytest.approx(0.3)
    assert chosen("recall_at_precision", 1.0) == pytest.approx(0.3)
    # Floor 0.45: recall 2/3 on the plateau 0.3, 0.45, 0.55 -> its middle.
    assert chosen("recall_at_precision", 0.45) == pytest.approx(0.45)
    # Floor 0.4: keeping everything has precision 3/7 and full recall.
    assert chosen("recall_at_precision", 0.4) == pytest.approx(np.nextafter(0.8, np.inf))


def test_recall_at_precision_unreachable_floor_is_all_minus_infinity() -> None:
    # The lowest-scoring image is clean: every cut that keeps something has precision <= 1/2.
    all_missing, has_defect, defect_classes, thresholds = table([0.1, 0.2, 0.3], [0, 1, 0])
    values = objective_curve(
        "recall_at_precision", all_missing, has_defect, defect_classes, NUM_CLASSES, thresholds, 0.9
    )
    assert np.isneginf(values).all()
    with pytest.raises(ValueError, match="no threshold"):
        best_threshold(thresholds, values)
    # A floor of 1/2 is reached only by keeping the first two images (all three: precision 1/3).
    values = objective_curve(
        "recall_at_precision", all_missing, has_defect, defect_classes, NUM_CLASSES, thresholds, 0.5
    )
    np.testing.assert_allclose(values, [-np.inf, -np.inf, 1.0, -np.inf])


def test_every_objective_is_known_and_an_unknown_one_fails() -> None:
    for objective in OBJECTIVES:
        assert curve(objective).shape == (len(MIXED_THRESHOLDS),)
    with pytest.raises(ValueError, match="unknown objective 'auc'"):
        curve("auc")


# --- best_threshold -----------------------------------------------------------------------------------------


def test_best_threshold_is_the_middle_of_the_first_plateau() -> None:
    thresholds = np.linspace(0, 1, 8)
    assert best_threshold(thresholds, np.array([0, 1, 1, 1, 0, 1, 1, 0.5])) == 2
    assert best_threshold(thresholds, np.array([0, 1, 1, 0, 1, 1, 1, 1])) == 2  # even run: upper middle
    assert best_threshold(thresholds, np.array([0, 0, 0, 0, 0, 0, 0, 3])) == 7
    assert best_threshold(thresholds, np.array([5, 5, 5, 5, 5, 4, 4, 4])) == 2
    with_inf = np.array([-np.inf, -np.inf, 0.2, 0.7, 0.7, -np.inf, 0.7, 0.1])
    assert best_threshold(thresholds, with_inf) == 4


def test_best_threshold_rejects_all_minus_infinity() -> None:
    with pytest.raises(ValueError):
        best_threshold(np.array([0.0, 0.5, 1.0]), np.full(3, -np.inf))


# --- class report and curves --------------------------------------------------------------------------------


def test_class_report_by_hand() -> None:
    counts = confusion(MIXED_SCORES, MIXED_DEFECT, candidate_thresholds(MIXED_SCORES))
    report = class_report(counts, 2)  # threshold 0.3: tp 2, fn 1, tn 4, fp 0
    assert report["defect"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert report["clean"] == pytest.approx({"precision": 4 / 5, "recall": 1.0, "f1": 8 / 9, "support": 4})
    wipe_all = class_report(counts, 0)
    assert wipe_all["defect"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert wipe_all["clean"] == pytest.approx({"precision": 4 / 7, "recall": 1.0, "f1": 8 / 11, "support": 4})


def test_curves_auc_by_hand_and_against_sklearn() -> None:
    all_missing = np.array([0.1, 0.6, 0.4, 0.9])
    has_defect = np.array([True, True, False, False])
    # Defect scores 0.9, 0.4 against clean 0.6, 0.1: 3 of the 4 pairs are ordered right.
    result = curves(all_missing, has_defect)
    assert result["auc"] == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    scores, labels = rng.random(50), rng.random(50) < 0.4
    assert curves(scores, labels)["auc"] == pytest.approx(roc_auc_score(labels, 1 - scores))
    fpr, tpr = result["roc"]
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    precision, recall = result["pr"]
    assert len(precision) == len(recall) and recall[0] == 1.0


def test_curves_perfect_separation_and_single_class() -> None:
    assert curves(np.array([0.1, 0.2, 0.8]), np.array([True, True, False]))["auc"] == 1.0
    assert curves(np.array([0.9, 0.8, 0.1]), np.array([True, True, False]))["auc"] == 0.0
    for labels in (np.array([True, True]), np.array([False, False])):
        result = curves(np.array([0.2, 0.7]), labels)
        assert np.isnan(result["auc"]) and result["roc"] is None and result["pr"] is None


# --- properties against naive loops -------------------------------------------------------------------------

tables = st.integers(min_value=1, max_value=25).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 10).map(lambda k: k / 10), min_size=n, max_size=n),  # coarse: many ties
        st.lists(st.integers(0, NUM_CLASSES), min_size=n, max_size=n),
        st.lists(st.floats(-0.5, 1.5, allow_nan=False), max_size=5),
    )
)


@settings(max_examples=100, deadline=None)
@given(tables)
def test_vectorised_counts_match_a_naive_loop(case: tuple[list[float], list[int], list[float]]) -> None:
    scores, classes, extra = case
    all_missing, defect_classes = np.array(scores), np.array(classes)
    has_defect = defect_classes > 0
    thresholds = np.concatenate([candidate_thresholds(all_missing), extra])
    dice = gating_dice(all_missing, defect_classes, NUM_CLASSES, thresholds)
    counts = confusion(all_missing, has_defect, thresholds)
    for i, threshold in enumerate(thresholds):
        pair_scores: list[float] = []
        tp = fn = tn = fp = 0
        for score, n_classes in zip(scores, classes, strict=True):
            wiped, defective = score >= threshold, n_classes > 0
            if wiped:  # empty pairs right, defect pairs lost
                pair_scores += [0.0] * n_classes + [1.0] * (NUM_CLASSES - n_classes)
            else:  # counted as perfectly segmented
                pair_scores += [1.0] * NUM_CLASSES
            tp += int(defective and not wiped)
            fn += int(defective and wiped)
            tn += int(not defective and wiped)
            fp += int(not defective and not wiped)
        assert dice[i] == pytest.approx(sum(pair_scores) / len(pair_scores))
        assert (counts.tp[i], counts.fn[i], counts.tn[i], counts.fp[i]) == (tp, fn, tn, fp)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 20).map(lambda k: k / 20), min_size=1, max_size=30))
def test_candidates_realise_every_distinct_cut(scores: list[float]) -> None:
    all_missing = np.array(scores)
    thresholds = candidate_thresholds(all_missing)
    kept = [int((all_missing < t).sum()) for t in thresholds]
    distinct = np.unique(all_missing)
    # One candidate per possible kept set: nothing, each prefix of distinct scores, everything.
    assert kept == [0] + [int((all_missing <= s).sum()) for s in distinct]
    assert (thresholds[1:-1] > distinct[:-1]).all() and (thresholds[1:-1] < distinct[1:]).all()


# --- per-class thresholds (multilabel classifier) -----------------------------------------------------------

# Six images' presence probability of one class, and whether the class is there.
PRESENCE = np.array([0.05, 0.2, 0.3, 0.45, 0.7, 0.9])
PRESENT = np.array([False, False, True, False, True, True])


def test_class_gating_dice_by_hand() -> None:
    # Pairs with p < t are wiped: an absent class scores 1 there, a present one 0; kept pairs score 1.
    values = class_gating_dice(PRESENCE, PRESENT, np.array([0.0, 0.25, 0.35, 0.8, 1.0]))
    np.testing.assert_allclose(values, [1.0, 1.0, 5 / 6, 4 / 6, 3 / 6])


def test_class_threshold_keeps_every_present_pair_and_wipes_the_most_absent_ones() -> None:
    chosen = class_threshold_report(PRESENCE, PRESENT)
    # The lowest present score is 0.3: the highest candidate below it is the midpoint with 0.2.
    assert chosen["threshold"] == pytest.approx(0.25)
    assert chosen["gating_dice"] == 1.0
    assert chosen["all_empty_dice"] == pytest.approx(0.5)
    assert (chosen["present"], chosen["present_kept"]) == (3, 3)
    assert (chosen["absent_wiped"], chosen["absent_kept"]) == (2, 1)  # 0.45 is above the lowest present
    assert chosen["auc"] == pytest.approx(roc_auc_score(PRESENT, PRESENCE))


def test_class_threshold_of_a_class_never_present_wipes_every_pair() -> None:
    chosen = class_threshold_report(PRESENCE, np.zeros(6, bool))
    assert chosen["threshold"] > PRESENCE.max() and chosen["absent_wiped"] == 6
    assert np.isnan(chosen["auc"]) and chosen["gating_dice"] == 1.0


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 10).map(lambda v: v / 10), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
        )
    )
)
def test_class_gating_dice_matches_a_naive_loop(case: tuple[list[float], list[bool]]) -> None:
    presence, present = np.array(case[0]), np.array(case[1])
    thresholds = candidate_thresholds(presence)
    values = class_gating_dice(presence, present, thresholds)
    for value, threshold in zip(values, thresholds, strict=True):
        scores = [
            0.0 if (p < threshold and there) else 1.0 for p, there in zip(presence, present, strict=True)
        ]
        assert value == pytest.approx(np.mean(scores))
    chosen = class_threshold_report(presence, present)
    # Never loses a present pair, and no higher candidate would keep them all.
    assert chosen["present_kept"] == chosen["present"]
    higher = thresholds[thresholds > chosen["threshold"]]
    assert all(((presence < t) & present).any() for t in higher)
