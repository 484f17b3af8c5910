"""The competition metric: Dice per (image, class) pair, empty on empty = 1, on masks and on RLE strings,
grading a submission against the truth and summarizing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.core import rle
from stages.core.dataset import parse_labels
from stages.core.errors import PipelineError, RLEError
from stages.core.metric import dice_from_counts, grade, mask_dice, mask_report, rle_dice, summarize
from tests.helpers import LabelRow, grid_rows, labels_frame


def test_dice_from_counts_hand_cases() -> None:
    assert dice_from_counts(3, 5, 2) == pytest.approx(0.5)  # 2*2 / (3+5)
    assert dice_from_counts(4, 4, 4) == 1.0
    assert dice_from_counts(0, 0, 0) == 1.0  # empty prediction of an empty truth
    assert dice_from_counts(0, 5, 0) == 0.0
    assert dice_from_counts(7, 0, 0) == 0.0
    assert dice_from_counts(1, 2, 0) == 0.0
    got = dice_from_counts(np.array([3, 0, 10]), np.array([5, 0, 10]), np.array([2, 0, 5]))
    np.testing.assert_allclose(got, [0.5, 1.0, 0.5])


def test_mask_dice_hand_case() -> None:
    pred = np.zeros((4, 4), dtype=np.uint8)
    truth = np.zeros((4, 4), dtype=np.uint8)
    pred[0, :3] = 1  # 3 pixels
    truth[0, 1:4] = 1  # 5 pixels, 2 of them shared with pred
    truth[1, :2] = 1
    assert float(mask_dice(pred, truth)) == pytest.approx(4 / 8)
    assert float(mask_dice(truth, pred)) == pytest.approx(4 / 8)


def test_mask_dice_empty_cases() -> None:
    empty, some = np.zeros((3, 5), dtype=bool), np.eye(3, 5, dtype=bool)
    assert float(mask_dice(empty, empty)) == 1.0
    assert float(mask_dice(empty, some)) == 0.0
    assert float(mask_dice(some, empty)) == 0.0
    assert float(mask_dice(some, some)) == 1.0


def test_mask_dice_per_mask_over_last_two_axes() -> None:
    pred = np.zeros((2, 3, 4, 5), dtype=np.uint8)
    truth = np.zeros_like(pred)
    pred[0, 0, 0, 0] = truth[0, 0, 0, 0] = 1  # 1.0
    pred[0, 1, 1, 1] = 1  # pred only: 0.0
    truth[1, 2, :2, 0] = 1
    pred[1, 2, 0, 0] = 1  # 2*1 / (1+2)
    dice = mask_dice(pred, truth)
    assert dice.shape == (2, 3)
    np.testing.assert_allclose(dice, [[1.0, 0.0, 1.0], [1.0, 1.0, 2 / 3]])


def test_mask_dice_nonbinary_values_count_as_set() -> None:
    pred = np.array([[0, 255], [7, 0]], dtype=np.uint8)
    truth = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert float(mask_dice(pred, truth)) == 1.0


def test_mask_dice_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        mask_dice(np.zeros((2, 3)), np.zeros((3, 2)))


def test_rle_dice_hand_cases() -> None:
    # pred pixels 1-3, truth pixels 2-6: 3 and 5 pixels, 2 shared.
    assert rle_dice("1 3", "2 5", 10) == pytest.approx(0.5)
    assert rle_dice("2 5", "1 3", 10) == pytest.approx(0.5)
    assert rle_dice("1 3 8 2", "1 3 8 2", 10) == 1.0
    assert rle_dice("1 3", "4 3", 10) == 0.0  # touching, not overlapping
    # pred {1,2,3,7}, truth {3..8}: 2*2 / (4+6)
    assert rle_dice("1 3 7 1", "3 6", 10) == pytest.approx(0.4)


@pytest.mark.parametrize("empty", ["", None, float("nan"), "  "])
def test_rle_dice_empty_cases(empty: object) -> None:
    assert rle_dice(empty, "", 10) == 1.0
    assert rle_dice(empty, None, 10) == 1.0
    assert rle_dice(empty, "3 2", 10) == 0.0
    assert rle_dice("3 2", empty, 10) == 0.0


def test_rle_dice_validates_against_the_image_size() -> None:
    assert rle_dice("8 3", "8 3", 10) == 1.0
    with pytest.raises(RLEError, match="past the image's 9 pixels"):
        rle_dice("8 3", "1 1", 9)
    with pytest.raises(RLEError, match="overlapping"):
        rle_dice("1 1", "1 3 2 1", 10)


def split_runs(text: str, rng: np.random.Generator) -> str:
    """The same pixels with some runs split into touching pieces (a valid but non-canonical RLE)."""
    tokens = [int(t) for t in text.split()]
    out: list[int] = []
    for start, length in zip(tokens[0::2], tokens[1::2], strict=True):
        if length > 1 and rng.random() < 0.5:
            cut = int(rng.integers(1, length))
            out += [start, cut, start + cut, length - cut]
        else:
            out += [start, length]
    return " ".join(map(str, out))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 50),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(0, 2**32 - 1),
)
def test_rle_dice_equals_mask_dice(height: int, width: int, p_pred: float, p_truth: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = (rng.random((height, width)) < p_pred).astype(np.uint8)
    truth = (rng.random((height, width)) < p_truth).astype(np.uint8)
    if rng.random() < 0.3:
        truth = pred.copy()
        truth[rng.integers(0, height), rng.integers(0, width)] ^= 1
    expected = float(mask_dice(pred, truth))
    n = height * width
    assert rle_dice(rle.encode(pred), rle.encode(truth), n) == pytest.approx(expected, abs=1e-12)
    split = rle_dice(split_runs(rle.encode(pred), rng), split_runs(rle.encode(truth), rng), n)
    assert split == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------- grade


def long_labels(rows: list[LabelRow], csv_format: str = "new") -> pd.DataFrame:
    return parse_labels(labels_frame(rows, csv_format), "x.csv").pairs


TRUTH_DEFECTS = {("a", 1): "1 3", ("a", 2): "5 5", ("b", 3): "2 5"}
TRUTH = grid_rows(["a", "b", "c"], 3, TRUTH_DEFECTS)  # 9 pairs, 3 non-empty
N_PIXELS = {"a": 20, "b": 20, "c": 20}


def graded(
    submission_rows: list[LabelRow], csv_format: str = "new", n_pixels: dict[str, int] | None = None
) -> pd.DataFrame:
    """Grade label rows against TRUTH (images a, b, c; classes 1..3)."""
    truth = long_labels(TRUTH, "old")
    return grade(
        long_labels(submission_rows, csv_format), truth, 3, n_pixels or N_PIXELS, "sub.csv", "truth.csv"
    )


def test_grade_truth_against_itself() -> None:
    scores = graded(TRUTH)
    assert list(scores.columns) == ["ImageId", "ClassId", "dice"]
    assert list(zip(scores["ImageId"], scores["ClassId"], strict=True)) == [
        (image, class_id) for image in "abc" for class_id in (1, 2, 3)
    ]
    assert (scores["dice"] == 1.0).all()


def test_grade_missing_pairs_count_as_empty() -> None:
    # Only a/1 predicted (half right): every other pair is an empty prediction.
    scores = graded([("a", 1, "2 5")]).set_index(["ImageId", "ClassId"])["dice"]
    assert scores[("a", 1)] == pytest.approx(2 * 2 / (3 + 5))
    assert scores[("a", 2)] == 0.0 and scores[("b", 3)] == 0.0  # defects missed
    assert scores.drop([("a", 1), ("a", 2), ("b", 3)]).eq(1.0).all()  # clean pairs right
    assert graded([])["dice"].mean() == pytest.approx(6 / 9)


def test_grade_false_positive() -> None:
    scores = graded([*TRUTH[:8], ("c", 3, "1 1")]).set_index(["ImageId", "ClassId"])["dice"]
    assert scores[("c", 3)] == 0.0
    assert scores.drop(("c", 3)).eq(1.0).all()


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        (("d", 1, ""), "image d class 1"),
        (("a", 4, "1 1"), "image a class 4"),
        (("b", 0, ""), "image b class 0"),
    ],
)
def test_grade_pair_not_in_the_truth(extra: LabelRow, what: str) -> None:
    with pytest.raises(
        PipelineError, match=rf"^sub\.csv: line 4: {what} is not in the truth \(truth\.csv\)$"
    ):
        graded([TRUTH[0], TRUTH[1], extra, TRUTH[2]])


def test_grade_bad_submission_rle_names_the_line() -> None:
    with pytest.raises(PipelineError, match=r"^sub\.csv: line 3: bad RLE: .*past the image's 20 pixels"):
        graded([("a", 1, "1 3"), ("b", 2, "18 5")])


def test_grade_bad_truth_rle_names_the_line() -> None:
    truth = long_labels(grid_rows(["a"], 2, {("a", 2): "3 x"}), "old")
    with pytest.raises(PipelineError, match=r"^truth\.csv: line 3: bad RLE: .*non-integer token 'x'"):
        grade(long_labels([]), truth, 2, {"a": 20}, "sub.csv", "truth.csv")


def test_grade_uses_each_images_own_size() -> None:
    submission = [("b", 3, "2 5"), ("c", 1, "40 10")]
    scores = graded(submission, n_pixels={"a": 20, "b": 20, "c": 60})
    assert scores["dice"].tolist()[-3] == 0.0  # c/1: a false positive, but a valid one
    with pytest.raises(PipelineError, match="line 3"):
        graded(submission)


def test_grade_accepts_an_old_format_submission() -> None:
    assert (graded(TRUTH, "old")["dice"] == 1.0).all()


# ---------------------------------------------------------------------------------------------- reports


def test_summarize_per_class_and_overall() -> None:
    pairs = pd.DataFrame(
        {
            "ImageId": ["a", "a", "b", "b", "c", "c"],
            "ClassId": [2, 1, 1, 2, 1, 2],
            "dice": [0.0, 1.0, 0.5, 1.0, 0.0, 0.5],
        }
    )
    report = summarize(pairs)
    assert report.mean_dice == pytest.approx(3.0 / 6)
    assert report.per_class == pytest.approx({"1": 0.5, "2": 0.5})
    assert list(report.per_class) == ["1", "2"]
    assert report.n_images == 3
    assert report.as_dict() == {"mean_dice": report.mean_dice, "per_class": report.per_class, "n_images": 3}


def test_summarize_classes_in_numeric_order() -> None:
    pairs = pd.DataFrame({"ImageId": ["a"] * 3, "ClassId": [10, 2, 1], "dice": [1.0, 0.0, 0.25]})
    report = summarize(pairs)
    assert list(report.per_class) == ["1", "2", "10"]
    assert report.per_class["1"] == 0.25 and report.per_class["10"] == 1.0


def test_summarize_of_grade() -> None:
    report = summarize(graded([("a", 1, "2 5")]))
    assert report.n_images == 3
    assert report.per_class == pytest.approx({"1": (0.5 + 1 + 1) / 3, "2": 2 / 3, "3": 2 / 3})
    assert report.mean_dice == pytest.approx((0.5 + 6) / 9)


def test_mask_report() -> None:
    pred = np.zeros((2, 2, 3, 3), dtype=np.uint8)
    truth = np.zeros_like(pred)
    truth[0, 1, 0, 0] = 1  # missed: image x, class 2 scores 0
    pred[1, 0, :, 0] = 1
    truth[1, 0, 0, :] = 1  # 3 and 3 pixels, 1 shared: 1/3
    report = mask_report(["x", "y"], pred, truth)
    assert report.per_class == pytest.approx({"1": (1 + 1 / 3) / 2, "2": 0.5})
    assert report.mean_dice == pytest.approx((1 + 0 + 1 / 3 + 1) / 4)
    assert report.n_images == 2
    assert not math.isnan(report.mean_dice)
