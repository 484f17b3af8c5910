"""The local leaderboard, run as users run it: `python -m stages.score SUBMISSION TRUTH [--json]`."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.errors import PipelineError
from stages.score import parse_size, score_files
from tests.helpers import REPO, LabelRow, defect_rows, grid_rows, write_images, write_labels_csv

IMAGES = ["i1.jpg", "i2.jpg", "i3.jpg"]
SIZE = (16, 40)  # 640 pixels
DEFECTS = {
    ("i1.jpg", 1): "1 10",
    ("i1.jpg", 3): "100 20",
    ("i2.jpg", 4): "600 41",  # ends on the last pixel of a 16x40 image
    ("i3.jpg", 1): "50 5",
    ("i3.jpg", 2): "5 5",
}
TRUTH_ROWS = grid_rows(IMAGES, 4, DEFECTS)  # every pair, empty ones included: 12 pairs, 5 defects
EMPTY_FRACTION = 7 / 12
EMPTY_PER_CLASS = {"1": 1 / 3, "2": 2 / 3, "3": 2 / 3, "4": 2 / 3}


def run_score(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stages.score", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def score_json(*args: str | Path) -> dict[str, object]:
    result = run_score(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def write_truth(folder: Path, csv_format: str = "new", rows: list[LabelRow] | None = None) -> Path:
    return write_labels_csv(folder / "truth.csv", TRUTH_ROWS if rows is None else rows, csv_format)


def test_truth_against_itself(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    report = score_json(truth, truth, "--image-size", "16x40")
    assert report == {"mean_dice": 1.0, "per_class": {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}, "n_images": 3}
    assert isinstance(report["n_images"], int)


@pytest.mark.parametrize(
    ("csv_format", "rows"),
    [("old", []), ("new", []), ("new", grid_rows(IMAGES, 4)), ("old", grid_rows(IMAGES[:2], 4))],
    ids=["old-header-only", "new-header-only", "new-all-pairs-empty", "old-some-pairs-empty"],
)
def test_all_empty_submission_scores_the_empty_fraction(tmp_path: Path, csv_format: str, rows: list) -> None:
    truth = write_truth(tmp_path)
    submission = write_labels_csv(tmp_path / "submission.csv", rows, csv_format)
    report = score_files(submission, truth, default_size=SIZE).as_dict()
    assert report["mean_dice"] == EMPTY_FRACTION
    assert report["per_class"] == pytest.approx(EMPTY_PER_CLASS)
    assert report["n_images"] == 3


def test_all_empty_submission_from_the_command_line(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    submission = write_labels_csv(tmp_path / "submission.csv", [], "old")
    report = score_json(submission, truth, "--image-size", "16x40")
    assert report == {"mean_dice": EMPTY_FRACTION, "per_class": EMPTY_PER_CLASS, "n_images": 3}


def test_old_format_submission_against_new_format_truth(tmp_path: Path) -> None:
    truth = write_truth(tmp_path, "new")
    # i1/1: 5 of the true 10 pixels, nothing else wrong: Dice 2*5/15 there, 1 elsewhere.
    predicted = {**DEFECTS, ("i1.jpg", 1): "1 5"}
    submission = write_labels_csv(tmp_path / "submission.csv", grid_rows(IMAGES, 4, predicted), "old")
    report = score_json(submission, truth, "--image-size", "16x40")
    assert report["mean_dice"] == pytest.approx((11 + 2 / 3) / 12)
    assert report["per_class"] == pytest.approx({"1": (2 + 2 / 3) / 3, "2": 1.0, "3": 1.0, "4": 1.0})


def test_new_format_defect_rows_against_old_format_truth(tmp_path: Path) -> None:
    truth = write_truth(tmp_path, "old")
    submission = write_labels_csv(tmp_path / "submission.csv", defect_rows(DEFECTS), "new")
    assert score_files(submission, truth, default_size=SIZE).mean_dice == 1.0


def test_text_output(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    result = run_score(truth, truth, "--image-size", "16x40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "mean Dice 1.00000 over 3 images"
    assert "  class 4: 1.00000" in result.stdout.splitlines()


def test_extra_pair_is_an_error(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    rows = [*TRUTH_ROWS[:5], ("i9.jpg", 1, ""), *TRUTH_ROWS[5:]]
    submission = write_labels_csv(tmp_path / "submission.csv", rows, "new")
    result = run_score(submission, truth, "--image-size", "16x40")
    assert_one_line_error(result, str(submission), "line 7", "i9.jpg", "not in the truth")


def test_bad_submission_rle_is_an_error(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    rows = [("i2.jpg", 4, "600 50"), ("i1.jpg", 1, "1 10")]
    submission = write_labels_csv(tmp_path / "submission.csv", rows, "new")
    result = run_score(submission, truth, "--image-size", "16x40")
    assert_one_line_error(result, str(submission), "line 2", "bad RLE", "past the image's 640 pixels")
    # The same run fits Severstal's default 256x1600: the size option is what made it an error.
    assert score_files(submission, truth).mean_dice < 1.0


def test_bad_truth_rle_is_an_error(tmp_path: Path) -> None:
    truth = write_truth(tmp_path, "old", grid_rows(IMAGES, 4, {**DEFECTS, ("i3.jpg", 2): "5 5 1 1"}))
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(truth))}: line 11: bad RLE: .*unsorted"):
        score_files(truth, truth, default_size=SIZE)


def test_sizes_from_test_images_beside_the_truth(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    write_images(tmp_path / "test_images", {"i1.jpg": SIZE, "i2.jpg": (16, 37), "i3.jpg": SIZE})
    # i2.jpg is 16x37 = 592 pixels: the truth's own "600 41" no longer fits, whatever --image-size says.
    with pytest.raises(
        PipelineError, match=rf"^{re.escape(str(truth))}: line 9: bad RLE: .*past the image's 592 pixels"
    ):
        score_files(truth, truth, default_size=(256, 1600))


def test_images_option(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    write_images(tmp_path / "elsewhere", dict.fromkeys(IMAGES, SIZE))
    report = score_files(truth, truth, images=tmp_path / "elsewhere")
    assert report.n_images == 3 and report.mean_dice == 1.0
    (tmp_path / "elsewhere" / "i3.jpg").unlink()
    with pytest.raises(PipelineError, match=r"i3\.jpg"):
        score_files(truth, truth, images=tmp_path / "elsewhere")


def test_missing_submission_file(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(tmp_path / 'nope.csv'))}: not found$"):
        score_files(tmp_path / "nope.csv", truth)


def test_num_classes_option_and_duplicate_rows(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    report = score_files(truth, truth, default_size=SIZE, num_classes=5)
    assert report.per_class["5"] == 1.0 and report.mean_dice == 1.0
    submission = write_labels_csv(tmp_path / "submission.csv", [*TRUTH_ROWS, TRUTH_ROWS[3]], "new")
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(submission))}: line 14: duplicate row"):
        score_files(submission, truth, default_size=SIZE)


def test_image_size_option() -> None:
    assert parse_size("16x40") == (16, 40)
    assert parse_size("256X1600") == (256, 1600)


@pytest.mark.parametrize("size", ["16", "16x0", "axb", "16x40x3", "-1x5"])
def test_bad_image_size_option(size: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(size))):
        parse_size(size)


def test_defect_rows_only_truth_grades_the_folder_images_as_clean(tmp_path: Path) -> None:
    truth = write_labels_csv(tmp_path / "truth.csv", defect_rows(DEFECTS), "new")
    write_images(tmp_path / "test_images", {**dict.fromkeys(IMAGES, SIZE), "clean.jpg": SIZE})
    full = write_labels_csv(tmp_path / "full.csv", grid_rows([*IMAGES, "clean.jpg"], 4, DEFECTS), "new")
    report = score_files(full, truth)
    assert report.n_images == 4 and report.mean_dice == 1.0
    empty = write_labels_csv(tmp_path / "empty.csv", [], "new")
    assert score_files(empty, truth).mean_dice == pytest.approx(11 / 16)


def test_num_classes_below_the_truths_classes_is_an_error(tmp_path: Path) -> None:
    truth = write_truth(tmp_path)
    with pytest.raises(PipelineError, match=r"--num-classes must be at least 4"):
        score_files(truth, truth, default_size=SIZE, num_classes=3)
