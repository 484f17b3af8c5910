"""Submissions: validate_submission's checks (each error naming file and line) and SubmissionWriter, which
streams the same content as submission_frame and never leaves a partial file behind."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.core.dataset import (
    Labels,
    SubmissionWriter,
    parse_labels,
    read_csv,
    submission_frame,
    validate_submission,
)
from stages.core.errors import PipelineError
from tests.helpers import NEW_COLUMNS, NEW_SAMPLE_COLUMNS, LabelRow, grid_rows, labels_frame, sample_rows_for

SOURCE = "out/submission.csv"
ORDER = ["t2.jpg", "t0.jpg", "t1.jpg"]  # the sample's order, deliberately not sorted
SIZES = {"t2.jpg": (4, 6), "t0.jpg": (8, 10), "t1.jpg": (4, 6)}  # 24, 80 and 24 pixels
DEFECTS = {("t0.jpg", 2): "5 3 70 11", ("t2.jpg", 4): "1 24", ("t1.jpg", 1): "3 2"}
FORMATS = [("old", None), ("new", NEW_SAMPLE_COLUMNS), ("new", NEW_COLUMNS)]


def make_sample(csv_format: str, columns: tuple[str, ...] | None = None) -> Labels:
    frame = labels_frame(sample_rows_for(ORDER), csv_format, columns)
    return parse_labels(frame, "sample_submission.csv")


def submission(rows: list[LabelRow], csv_format: str, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A submission as read back from its CSV: every cell a string."""
    return labels_frame(rows, csv_format, columns)


def good_rows() -> list[LabelRow]:
    return grid_rows(ORDER, 4, DEFECTS)


def predictions() -> pd.DataFrame:
    """Predictions in the order the sample does not use, one image without predictions (t1.jpg)."""
    table = pd.DataFrame({"ImageId": ["t0.jpg", "t2.jpg"]})
    for class_id in range(1, 5):
        table[f"rle_{class_id}"] = [DEFECTS.get((image_id, class_id), "") for image_id in table["ImageId"]]
    return table


def line_of(rows: list[LabelRow], image_id: str, class_id: int) -> int:
    return rows.index(next(row for row in rows if row[:2] == (image_id, class_id))) + 2  # header is line 1


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("csv_format", "columns"), FORMATS)
def test_a_good_submission_is_accepted(csv_format: str, columns: tuple[str, ...] | None) -> None:
    sample = make_sample(csv_format, columns)
    labels = validate_submission(submission(good_rows(), csv_format, columns), sample, SIZES, 4, SOURCE)
    assert labels.csv_format == csv_format and labels.columns == sample.columns
    assert len(labels.pairs) == 12
    assert labels.image_ids == tuple(ORDER)


@pytest.mark.parametrize(("csv_format", "columns"), FORMATS)
def test_submission_frame_output_is_accepted(csv_format: str, columns: tuple[str, ...] | None) -> None:
    sample = make_sample(csv_format, columns)
    validate_submission(submission_frame(predictions(), sample, 4), sample, SIZES, 4, SOURCE)


@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_a_missing_image_is_named(csv_format: str) -> None:
    rows = [row for row in good_rows() if row[0] != "t0.jpg"]
    with pytest.raises(PipelineError, match=rf"^{re.escape(SOURCE)}: .*image t0\.jpg class 1"):
        validate_submission(submission(rows, csv_format), make_sample(csv_format), SIZES, 4, SOURCE)


def test_a_missing_class_is_named() -> None:
    rows = [row for row in good_rows() if row[:2] != ("t1.jpg", 3)]
    with pytest.raises(PipelineError, match=r"image t1\.jpg class 3"):
        validate_submission(submission(rows, "new"), make_sample("new"), SIZES, 4, SOURCE)


@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_a_duplicate_pair_names_its_line(csv_format: str) -> None:
    rows = good_rows()
    rows.insert(7, ("t0.jpg", 2, ""))  # t0.jpg class 2 is already on line 7; the copy lands on line 9
    assert line_of(rows, "t0.jpg", 2) == 7
    with pytest.raises(PipelineError, match=rf"^{re.escape(SOURCE)}: line 9: duplicate .*t0\.jpg class 2"):
        validate_submission(submission(rows, csv_format), make_sample(csv_format), SIZES, 4, SOURCE)


@pytest.mark.parametrize(
    "extra",
    [("zz.jpg", 1, ""), ("t1.jpg", 5, ""), ("t1.jpg", 0, "")],
    ids=["unknown image", "class past the last", "placeholder class 0"],
)
@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_an_extra_pair_is_rejected(csv_format: str, extra: LabelRow) -> None:
    rows = good_rows()
    rows.insert(5, extra)  # line 7
    image_id, class_id, _ = extra
    with pytest.raises(
        PipelineError, match=rf"^{re.escape(SOURCE)}: line 7: image {re.escape(image_id)} class {class_id} "
    ):
        validate_submission(submission(rows, csv_format), make_sample(csv_format), SIZES, 4, SOURCE)


@pytest.mark.parametrize(
    ("image_id", "text"),
    [("t2.jpg", "20 6"), ("t1.jpg", "25 1"), ("t0.jpg", "81 1"), ("t2.jpg", "5 3 4 1"), ("t1.jpg", "0 2")],
)
@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_a_bad_rle_names_line_and_image(csv_format: str, image_id: str, text: str) -> None:
    rows = [(i, c, text if (i, c) == (image_id, 3) else rle) for i, c, rle in good_rows()]
    line = line_of(rows, image_id, 3)
    with pytest.raises(
        PipelineError, match=rf"^{re.escape(SOURCE)}: line {line}: bad RLE for image {re.escape(image_id)}"
    ):
        validate_submission(submission(rows, csv_format), make_sample(csv_format), SIZES, 4, SOURCE)


def test_an_rle_fitting_a_larger_image_is_checked_against_its_own() -> None:
    # "70 11" fits t0.jpg's 80 pixels but not t1.jpg's 24: sizes are per image.
    rows = [(i, c, "70 11" if (i, c) == ("t1.jpg", 2) else rle) for i, c, rle in good_rows()]
    with pytest.raises(PipelineError, match=r"line 11: bad RLE for image t1\.jpg class 2"):
        validate_submission(submission(rows, "new"), make_sample("new"), SIZES, 4, SOURCE)


@pytest.mark.parametrize(
    ("csv_format", "columns", "sample_columns"),
    [
        ("new", NEW_COLUMNS, NEW_SAMPLE_COLUMNS),  # right names, not the sample's order
        ("new", NEW_SAMPLE_COLUMNS, None),  # a new-format submission for an old-format sample
        ("old", None, NEW_SAMPLE_COLUMNS),
    ],
)
def test_wrong_columns_are_rejected(
    csv_format: str, columns: tuple[str, ...] | None, sample_columns: tuple[str, ...] | None
) -> None:
    sample = make_sample("new" if sample_columns else "old", sample_columns)
    with pytest.raises(PipelineError, match=rf"^{re.escape(SOURCE)}: columns .* differ from the sample's"):
        validate_submission(submission(good_rows(), csv_format, columns), sample, SIZES, 4, SOURCE)


def test_unknown_columns_are_rejected() -> None:
    frame = submission(good_rows(), "old").rename(columns={"EncodedPixels": "Pixels"})
    with pytest.raises(PipelineError, match=re.escape(SOURCE)):
        validate_submission(frame, make_sample("old"), SIZES, 4, SOURCE)


# ---------------------------------------------------------------------------------------------- writer


def write_all(path: Path, sample: Labels, table: pd.DataFrame) -> None:
    by_image = {row.ImageId: [getattr(row, f"rle_{c}") for c in range(1, 5)] for row in table.itertuples()}
    with SubmissionWriter(path, sample, 4) as writer:
        for image_id in sample.image_ids:
            writer.write(image_id, by_image.get(image_id, [""] * 4))


@pytest.mark.parametrize(("csv_format", "columns"), FORMATS)
def test_writer_matches_submission_frame(
    tmp_path: Path, csv_format: str, columns: tuple[str, ...] | None
) -> None:
    sample = make_sample(csv_format, columns)
    table = predictions()
    streamed, framed = tmp_path / "streamed.csv", tmp_path / "framed.csv"
    write_all(streamed, sample, table)
    submission_frame(table, sample, 4).to_csv(framed, index=False)
    assert streamed.read_bytes() == framed.read_bytes()
    assert streamed.read_text().splitlines()[0] == ",".join(sample.columns)
    # ... and it reads back as a valid submission with the predicted RLEs in place.
    labels = validate_submission(read_csv(streamed), sample, SIZES, 4, str(streamed))
    written = labels.pairs.set_index(["ImageId", "ClassId"])["EncodedPixels"]
    predicted = {pair: text for pair, text in DEFECTS.items() if pair[0] != "t1.jpg"}
    assert {pair: text for pair, text in written.items() if text} == predicted
    assert sorted(path.name for path in tmp_path.iterdir()) == ["framed.csv", "streamed.csv"]


def test_writer_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("old content\n")
    write_all(path, make_sample("old"), predictions())
    assert path.read_text().startswith("ImageId_ClassId,EncodedPixels\nt2.jpg_1,\n")


def assert_nothing_left(folder: Path, expected: set[str] | None = None) -> None:
    assert {path.name for path in folder.iterdir()} == (expected or set())


def test_writer_rejects_an_image_out_of_order(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    with (
        pytest.raises(PipelineError, match=r"got image t0\.jpg where the sample submission has t2\.jpg"),
        SubmissionWriter(path, make_sample("new", NEW_SAMPLE_COLUMNS), 4) as writer,
    ):
        writer.write("t0.jpg", [""] * 4)
    assert_nothing_left(tmp_path)


def test_writer_rejects_a_repeated_image(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    with (
        pytest.raises(PipelineError, match=r"got image t2\.jpg where the sample submission has t0\.jpg"),
        SubmissionWriter(path, make_sample("old"), 4) as writer,
    ):
        writer.write("t2.jpg", [""] * 4)
        writer.write("t2.jpg", [""] * 4)
    assert_nothing_left(tmp_path)


def test_writer_rejects_an_image_past_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    with (
        pytest.raises(PipelineError, match=r"got image zz\.jpg"),
        SubmissionWriter(path, make_sample("old"), 4) as w,
    ):
        for image_id in ORDER:
            w.write(image_id, [""] * 4)
        w.write("zz.jpg", [""] * 4)
    assert_nothing_left(tmp_path)


def test_writer_rejects_a_wrong_number_of_masks(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    with (
        pytest.raises(PipelineError, match=r"t2\.jpg has 3 masks, expected 4"),
        SubmissionWriter(path, make_sample("old"), 4) as writer,
    ):
        writer.write("t2.jpg", [""] * 3)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("written", [0, 2])
def test_writer_with_a_missing_image_leaves_no_file(tmp_path: Path, written: int) -> None:
    path = tmp_path / "submission.csv"
    missing = re.escape(ORDER[written])
    with (
        pytest.raises(PipelineError, match=rf"no prediction for image {missing} "),
        SubmissionWriter(path, make_sample("new", NEW_SAMPLE_COLUMNS), 4) as writer,
    ):
        for image_id in ORDER[:written]:
            writer.write(image_id, [""] * 4)
    assert_nothing_left(tmp_path)


def test_writer_with_a_missing_image_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("previous\n")
    with pytest.raises(PipelineError), SubmissionWriter(path, make_sample("old"), 4) as writer:
        writer.write("t2.jpg", [""] * 4)
    assert path.read_text() == "previous\n"
    assert_nothing_left(tmp_path, {"submission.csv"})


def test_an_exception_inside_the_block_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    with (
        pytest.raises(RuntimeError, match="model crashed"),
        SubmissionWriter(path, make_sample("old"), 4) as w,
    ):
        w.write("t2.jpg", ["1 2", "", "", ""])
        raise RuntimeError("model crashed")
    assert_nothing_left(tmp_path)


def test_an_exception_after_every_image_still_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    with pytest.raises(KeyboardInterrupt), SubmissionWriter(path, make_sample("new"), 4) as writer:
        for image_id in ORDER:
            writer.write(image_id, [""] * 4)
        raise KeyboardInterrupt
    assert_nothing_left(tmp_path)


def test_writer_of_unusual_image_names_matches_the_frame(tmp_path: Path) -> None:
    # Image names are quoted the same way by both writers (csv.QUOTE_MINIMAL) and encoded as UTF-8.
    names = ["a,b.jpg", 'q"uote.jpg', "défaut_é.jpg"]
    sample = parse_labels(labels_frame(sample_rows_for(names), "old"), "sample")
    table = pd.DataFrame({"ImageId": names, **{f"rle_{c}": [f"{c} 1", "", "2 2"] for c in range(1, 5)}})
    streamed, framed = tmp_path / "streamed.csv", tmp_path / "framed.csv"
    write_all(streamed, sample, table)
    submission_frame(table, sample, 4).to_csv(framed, index=False)
    assert streamed.read_bytes() == framed.read_bytes()
    back = parse_labels(read_csv(streamed), "back")
    assert back.image_ids == tuple(names)
    assert np.array_equal(back.pairs["ClassId"].to_numpy(), np.tile(np.arange(1, 5), 3))
    assert "défaut_é.jpg_1".encode() in streamed.read_bytes()  # UTF-8, as pandas writes


@pytest.mark.parametrize("columns", [NEW_SAMPLE_COLUMNS, NEW_COLUMNS])
def test_a_sample_with_placeholder_class_zero(tmp_path: Path, columns: tuple[str, ...]) -> None:
    # Some samples list each image once with ClassId 0: the submission still has every class 1..4.
    sample = parse_labels(labels_frame([(i, 0, "1 1") for i in ORDER], "new", columns), "sample")
    frame = submission_frame(predictions(), sample, 4)
    assert len(frame) == 12
    validate_submission(frame, sample, SIZES, 4, SOURCE)
    path = tmp_path / "submission.csv"
    write_all(path, sample, predictions())
    labels = validate_submission(read_csv(path), sample, SIZES, 4, SOURCE)
    assert labels.pairs["ClassId"].tolist() == [1, 2, 3, 4] * 3
    rows = [(i, c, "") for i in ORDER for c in range(0, 5)]
    with pytest.raises(PipelineError, match=r"line 2: image t2\.jpg class 0 is not in the sample"):
        validate_submission(labels_frame(rows, "new", columns), sample, SIZES, 4, SOURCE)
