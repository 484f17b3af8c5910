"""Reading a Kaggle-layout folder (both train.csv formats, sizes from the files, every error naming file and
row) and writing submissions in the sample's format."""

from __future__ import annotations

import csv
import errno
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from stages.core import rle
from stages.core.dataset import (
    Dataset,
    Labels,
    SubmissionWriter,
    check_duplicates,
    check_uniform_sizes,
    image_size,
    index_dataset,
    parse_labels,
    read_csv,
    submission_frame,
)
from stages.core.errors import PipelineError
from tests.helpers import (
    NEW_SAMPLE_COLUMNS,
    OLD_FIXTURE,
    LabelRow,
    Size,
    defect_rows,
    grid_rows,
    labels_frame,
    read_fixture_rows,
    sample_rows_for,
    write_image,
    write_images,
    write_kaggle_folder,
    write_labels_csv,
)

# Not Severstal's 256x1600 and not all alike: sizes must come from the files.
TRAIN_IMAGES: dict[str, Size] = {"a.jpg": (16, 40), "b.jpg": (16, 40), "c.jpg": (20, 30), "d.jpg": (16, 40)}
TEST_IMAGES: dict[str, Size] = {"t1.jpg": (16, 40), "t0.jpg": (24, 48)}
TEST_ORDER = ["t1.jpg", "t0.jpg"]  # the sample's order, deliberately not sorted
DEFECTS: dict[tuple[str, int], str] = {
    ("a.jpg", 1): "1 5",
    ("a.jpg", 3): "10 3 40 2",
    ("b.jpg", 4): "600 41",  # ends on the last of 16x40 = 640 pixels
    ("c.jpg", 1): "1 600",  # all of 20x30
    ("c.jpg", 2): "590 11",
}
# New-format line numbers of DEFECTS' rows (line 1 is the header).
NEW_LINES = {pair: line for line, pair in enumerate(DEFECTS, start=2)}

EXPECTED_TRAIN = pd.DataFrame(
    {
        "ImageId": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "height": np.array([16, 16, 20, 16], dtype=np.int64),
        "width": np.array([40, 40, 30, 40], dtype=np.int64),
        "rle_1": ["1 5", "", "1 600", ""],
        "rle_2": ["", "", "590 11", ""],
        "rle_3": ["10 3 40 2", "", "", ""],
        "rle_4": ["", "600 41", "", ""],
        "has_defect": [True, True, True, False],
        "classes": ["1_3", "4", "1_2", ""],
    }
)


def train_rows(train_format: str, defects: dict[tuple[str, int], str] | None = None) -> list[LabelRow]:
    defects = DEFECTS if defects is None else defects
    if train_format == "old":
        return grid_rows(TRAIN_IMAGES, 4, defects)
    return defect_rows(defects)  # d.jpg has no row: clean


def make_dataset(
    root: Path,
    train_format: str = "new",
    sample_format: str = "new",
    train: list[LabelRow] | None = None,
    sample: list[LabelRow] | None = None,
    train_images: dict[str, Size] | None = None,
    test_images: dict[str, Size] | None = None,
    sample_columns: tuple[str, ...] | None = None,
) -> Path:
    return write_kaggle_folder(
        root,
        train_rows=train_rows(train_format) if train is None else train,
        sample_rows=sample_rows_for(TEST_ORDER) if sample is None else sample,
        train_images=TRAIN_IMAGES if train_images is None else train_images,
        test_images=TEST_IMAGES if test_images is None else test_images,
        train_format=train_format,
        sample_format=sample_format,
        sample_columns=sample_columns,
    )


def old_line(image_id: str, class_id: int) -> int:
    """Line of a pair in an old-format train.csv written by grid_rows over TRAIN_IMAGES."""
    return 2 + list(TRAIN_IMAGES).index(image_id) * 4 + class_id - 1


def assert_error(error: pytest.ExceptionInfo[PipelineError], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("sample_format", ["old", "new"])
@pytest.mark.parametrize("train_format", ["old", "new"])
def test_index_dataset_reads_both_formats_alike(
    tmp_path: Path, train_format: str, sample_format: str
) -> None:
    dataset = index_dataset(make_dataset(tmp_path, train_format, sample_format))
    assert isinstance(dataset, Dataset)
    assert dataset.train_format == train_format
    assert dataset.sample.csv_format == sample_format
    assert dataset.num_classes == 4
    pd.testing.assert_frame_equal(dataset.train, EXPECTED_TRAIN, check_dtype=False)
    assert dataset.train["height"].dtype == np.int64 and dataset.train["has_defect"].dtype == bool
    expected_test = pd.DataFrame({"ImageId": TEST_ORDER, "height": [16, 24], "width": [40, 48]})
    pd.testing.assert_frame_equal(dataset.test, expected_test, check_dtype=False)
    assert dataset.train_images == tmp_path / "train_images"
    assert dataset.test_images == tmp_path / "test_images"


def test_old_and_new_train_give_the_same_table(tmp_path: Path) -> None:
    old = index_dataset(make_dataset(tmp_path / "old", "old"))
    new = index_dataset(make_dataset(tmp_path / "new", "new"))
    pd.testing.assert_frame_equal(old.train, new.train)


def test_images_on_disk_without_rows_are_clean(tmp_path: Path) -> None:
    images = {**TRAIN_IMAGES, "0clean.png": (12, 8), "e.jpg": (16, 40)}
    dataset = index_dataset(make_dataset(tmp_path, "new", train_images=images))
    train = dataset.train.set_index("ImageId")
    assert list(train.index) == sorted(images)
    for image_id in ["0clean.png", "d.jpg", "e.jpg"]:
        row = train.loc[image_id]
        assert not row["has_defect"] and row["classes"] == ""
        assert all(row[f"rle_{c}"] == "" for c in range(1, 5))
    assert tuple(train.loc["0clean.png", ["height", "width"]]) == (12, 8)


def test_files_that_are_not_images_are_ignored(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    (root / "train_images" / "notes.txt").write_text("not an image")
    assert "notes.txt" not in set(index_dataset(root).train["ImageId"])


def test_sizes_come_from_the_files(tmp_path: Path) -> None:
    images = {"a.jpg": (7, 300), "b.jpg": (31, 5), "c.jpg": (20, 30), "d.jpg": (1, 1)}
    dataset = index_dataset(make_dataset(tmp_path, "old", train=grid_rows(images, 4), train_images=images))
    assert dataset.train[["height", "width"]].to_numpy().tolist() == [[7, 300], [31, 5], [20, 30], [1, 1]]
    assert image_size(tmp_path / "train_images" / "a.jpg") == (7, 300)


def test_rles_are_checked_against_each_images_own_size(tmp_path: Path) -> None:
    # "1 600" fills c.jpg (20x30) exactly; on a 16x40 image it is fine too, but "1 601" on c.jpg is not.
    defects = {**DEFECTS, ("c.jpg", 1): "1 601"}
    root = make_dataset(tmp_path, "new", train=train_rows("new", defects))
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error,
        str(root / "train.csv"),
        f"line {NEW_LINES[('c.jpg', 1)]}",
        "image c.jpg class 1",
        "past the image's 600 pixels",
    )


@pytest.mark.parametrize("num_classes", [1, 3, 6])
def test_class_count_from_old_format_data(tmp_path: Path, num_classes: int) -> None:
    defects = {("a.jpg", num_classes): "1 5"}
    root = make_dataset(
        tmp_path,
        "old",
        "old",
        train=grid_rows(TRAIN_IMAGES, num_classes, defects),
        sample=sample_rows_for(TEST_ORDER, num_classes),
    )
    dataset = index_dataset(root)
    assert dataset.num_classes == num_classes
    rle_columns = [c for c in dataset.train.columns if c.startswith("rle_")]
    assert rle_columns == [f"rle_{c}" for c in range(1, num_classes + 1)]
    assert dataset.train.loc[0, f"rle_{num_classes}"] == "1 5"


def test_class_count_from_the_sample_when_train_lacks_classes(tmp_path: Path) -> None:
    # Only class 1 defects in train.csv, but the sample lists classes 1..4: the dataset has 4 classes.
    root = make_dataset(tmp_path, "new", train=[("a.jpg", 1, "1 5")])
    dataset = index_dataset(root)
    assert dataset.num_classes == 4
    assert not dataset.train[["rle_2", "rle_3", "rle_4"]].ne("").to_numpy().any()


def test_class_count_from_train_when_the_sample_has_placeholder_classes(tmp_path: Path) -> None:
    # Kaggle's later sample lists each image once with ClassId 0: the classes then come from train.csv.
    sample = [(image_id, 0, "1 409600") for image_id in TEST_ORDER]
    defects = {("a.jpg", 1): "1 5", ("b.jpg", 3): "2 2"}
    dataset = index_dataset(make_dataset(tmp_path, "new", train=train_rows("new", defects), sample=sample))
    assert dataset.num_classes == 3
    assert list(dataset.test["ImageId"]) == TEST_ORDER


@pytest.mark.parametrize(
    "columns", [("ImageId", "EncodedPixels", "ClassId"), ("ClassId", "ImageId", "EncodedPixels")]
)
def test_new_format_columns_in_any_order(tmp_path: Path, columns: tuple[str, ...]) -> None:
    root = make_dataset(tmp_path, "new", sample_columns=columns)
    write_labels_csv(root / "train.csv", train_rows("new"), "new", columns)
    dataset = index_dataset(root)
    pd.testing.assert_frame_equal(dataset.train, EXPECTED_TRAIN, check_dtype=False)
    assert dataset.sample.columns == columns


def test_whitespace_around_cells_is_ignored(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    text = (root / "train.csv").read_text().replace("a.jpg,1,1 5", " a.jpg , 1 , 1 5 ")
    (root / "train.csv").write_text(text)
    assert index_dataset(root).train.loc[0, "rle_1"] == "1 5"


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("train_format", ["old", "new"])
def test_listed_image_missing_on_disk(tmp_path: Path, train_format: str) -> None:
    images = {name: size for name, size in TRAIN_IMAGES.items() if name != "b.jpg"}
    root = make_dataset(tmp_path, train_format, train_images=images)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    line = old_line("b.jpg", 1) if train_format == "old" else NEW_LINES[("b.jpg", 4)]
    assert_error(error, str(root / "train.csv"), f"line {line}", "image b.jpg is missing", "train_images")


@pytest.mark.parametrize("folder", ["train_images", "test_images"])
def test_unreadable_image(tmp_path: Path, folder: str) -> None:
    root = make_dataset(tmp_path)
    name = "b.jpg" if folder == "train_images" else "t0.jpg"
    (root / folder / name).write_bytes(b"this is not a JPEG at all" * 10)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / folder / name), "unreadable image")


def test_empty_image_file_is_unreadable(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    (root / "train_images" / "d.jpg").write_bytes(b"")
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train_images" / "d.jpg"), "unreadable image")


def test_duplicate_rows_new_format(tmp_path: Path) -> None:
    rows = [*train_rows("new"), ("a.jpg", 1, "20 2")]
    root = make_dataset(tmp_path, "new", train=rows)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error,
        str(root / "train.csv"),
        f"line {len(rows) + 1}",
        "duplicate row",
        "a.jpg class 1",
        "first at line 2",
    )


def test_duplicate_rows_old_format(tmp_path: Path) -> None:
    rows = train_rows("old")
    rows.insert(6, ("b.jpg", 2, ""))  # b.jpg_2 again, right after b.jpg_2
    root = make_dataset(tmp_path, "old", train=rows)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error, str(root / "train.csv"), "line 8", "b.jpg class 2", f"first at line {old_line('b.jpg', 2)}"
    )


def test_duplicate_rows_in_the_sample(tmp_path: Path) -> None:
    sample = [*sample_rows_for(TEST_ORDER), ("t1.jpg", 3, "1 1")]
    root = make_dataset(tmp_path, sample=sample)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "sample_submission.csv"), f"line {len(sample) + 1}", "t1.jpg class 3")


@pytest.mark.parametrize("train_format", ["old", "new"])
def test_class_beyond_an_old_format_samples_classes(tmp_path: Path, train_format: str) -> None:
    rows = [*train_rows(train_format), ("d.jpg", 5, "1 1")]
    root = make_dataset(tmp_path, train_format, "old", train=rows)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train.csv"), f"line {len(rows) + 1}", "unknown ClassId 5", "1..4")


# The last two are past int64 (found by tests/test_fuzz.py): the cast to int64 made 1e30 into -2**63 (with a
# RuntimeWarning) and 2**64 - 1 into -1, and the error quoted those numbers.
@pytest.mark.parametrize("bad", ["x", "1.5", "-1", "", "inf", "1e30", "18446744073709551615"])
def test_non_integer_class_new_format(tmp_path: Path, bad: str) -> None:
    rows = train_rows("new")
    rows.insert(2, ("d.jpg", bad, "1 1"))
    root = make_dataset(tmp_path, "new", train=rows)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train.csv"), "line 4", f"unknown ClassId {bad!r}")


def test_class_zero_in_train_is_unknown(tmp_path: Path) -> None:
    rows = [*train_rows("new"), ("d.jpg", 0, "1 1")]
    root = make_dataset(tmp_path, "new", train=rows)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train.csv"), f"line {len(rows) + 1}", "unknown ClassId 0")


def test_non_integer_class_old_format(tmp_path: Path) -> None:
    rows = train_rows("old")
    rows[5] = ("b.jpg", "x", "")
    root = make_dataset(tmp_path, "old", train=rows)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train.csv"), "line 7", "unknown ClassId 'x'")


def test_old_format_key_without_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, "old")
    lines = (root / "train.csv").read_text().splitlines()
    lines[3] = "a.jpg,"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train.csv"), "line 4", "'a.jpg'", "'<image>_<class>'")


@pytest.mark.parametrize(
    ("sample_format", "bad"), [("old", "x"), ("new", "x"), ("new", "-1"), ("old", "2.5")]
)
def test_unknown_class_in_the_sample(tmp_path: Path, sample_format: str, bad: str) -> None:
    sample = sample_rows_for(TEST_ORDER)
    sample.insert(3, ("t1.jpg", bad, "1 1"))
    root = make_dataset(tmp_path, "old", sample_format, sample=sample)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "sample_submission.csv"), "line 5", f"unknown ClassId {bad!r}")


@pytest.mark.parametrize("train_format", ["old", "new"])
def test_bad_rle_names_file_line_image_and_class(tmp_path: Path, train_format: str) -> None:
    # Fine for a 256x1600 image, past the end of b.jpg's 16x40 = 640 pixels.
    defects = {**DEFECTS, ("b.jpg", 4): "600 50"}
    root = make_dataset(tmp_path, train_format, train=train_rows(train_format, defects))
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    line = old_line("b.jpg", 4) if train_format == "old" else NEW_LINES[("b.jpg", 4)]
    assert_error(
        error,
        str(root / "train.csv"),
        f"line {line}",
        "image b.jpg class 4",
        "'600 50' ends at pixel 649, past the image's 640 pixels",
    )


@pytest.mark.parametrize("text", ["1 2 3", "5 x", "0 4", "10 2 3 1", "10 5 12 1"])
def test_malformed_rle(tmp_path: Path, text: str) -> None:
    defects = {**DEFECTS, ("a.jpg", 3): text}
    root = make_dataset(tmp_path, "new", train=train_rows("new", defects))
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error, str(root / "train.csv"), f"line {NEW_LINES[('a.jpg', 3)]}", "bad RLE", "a.jpg class 3"
    )


@pytest.mark.parametrize(
    ("which", "columns"),
    [
        ("train.csv", ["ImageId", "EncodedPixels"]),
        ("train.csv", ["ImageId", "ClassId", "EncodedPixels", "Extra"]),
        ("train.csv", ["imageid", "classid", "encodedpixels"]),
        ("sample_submission.csv", ["ImageId_ClassId", "EncodedPixels", "ClassId"]),
    ],
)
def test_unknown_csv_columns(tmp_path: Path, which: str, columns: list[str]) -> None:
    root = make_dataset(tmp_path)
    pd.DataFrame({column: ["a.jpg"] for column in columns}).to_csv(root / which, index=False)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / which), "unknown CSV columns", repr(columns[0]))


def test_missing_sample_test_image(tmp_path: Path) -> None:
    sample = [*sample_rows_for(TEST_ORDER), *sample_rows_for(["t9.jpg"])]
    root = make_dataset(tmp_path, sample=sample)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error, str(root / "sample_submission.csv"), "line 10", "image t9.jpg is missing", "test_images"
    )


@pytest.mark.parametrize("missing", ["train.csv", "sample_submission.csv", "train_images", "test_images"])
def test_missing_files_and_folders(tmp_path: Path, missing: str) -> None:
    root = make_dataset(tmp_path)
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(target), "not found")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        index_dataset(tmp_path / "nowhere")
    assert_error(error, str(tmp_path / "nowhere"), "not found")


def test_no_defect_class(tmp_path: Path) -> None:
    sample = [(image_id, 0, "1 1") for image_id in TEST_ORDER]
    root = make_dataset(tmp_path, "new", train=[], sample=sample)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "train.csv"), "no defect class")


@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_header_only_labels_parse_to_nothing(tmp_path: Path, csv_format: str) -> None:
    path = write_labels_csv(tmp_path / "labels.csv", [], csv_format)
    labels = parse_labels(read_csv(path), str(path))
    assert labels.csv_format == csv_format and labels.image_ids == () and len(labels.pairs) == 0


def test_parse_labels_lines_and_classes() -> None:
    frame = labels_frame([("x.jpg", 2, " 1 3 "), ("y.jpg", "3.0", ""), ("x.jpg", 1, "")], "old")
    labels = parse_labels(frame, "somewhere.csv")
    assert labels.pairs["line"].tolist() == [2, 3, 4]
    assert labels.pairs["ClassId"].tolist() == [2, 3, 1]
    assert labels.pairs["EncodedPixels"].tolist() == ["1 3", "", ""]
    assert labels.image_ids == ("x.jpg", "y.jpg")
    check_duplicates(labels, "somewhere.csv")


def test_image_with_underscores_in_its_name_old_format() -> None:
    labels = parse_labels(labels_frame([("img_2_b.jpg", 4, "")], "old"), "s.csv")
    assert labels.pairs.loc[0, "ImageId"] == "img_2_b.jpg" and labels.pairs.loc[0, "ClassId"] == 4


@pytest.mark.parametrize("train_format", ["old", "new"])
@pytest.mark.parametrize("image_id", ["a\nb.jpg", "a\rb.jpg", "a\tb.jpg", "a\x1b[31mb.jpg", "a\u2028b.jpg"])
def test_image_id_with_a_control_character(tmp_path: Path, train_format: str, image_id: str) -> None:
    # Found by tests/test_fuzz.py: quoted image names with a line break made multi-line error messages
    # (say "image a<newline>b.jpg is missing"); now the name itself is the error, quoted.
    rows = train_rows(train_format)
    rows[0] = (image_id, 1, "")
    root = make_dataset(tmp_path, train_format)
    # Every cell quoted: pandas leaves a lone carriage return unquoted, which would split the row instead.
    labels_frame(rows, train_format).to_csv(root / "train.csv", index=False, quoting=csv.QUOTE_ALL)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error,
        str(root / "train.csv"),
        "line 2",
        f"ImageId {image_id!r} contains a line break or control character",
    )


@pytest.mark.parametrize(
    ("content", "fields"),
    [
        (b"ImageId,ClassId,EncodedPixels\nx,a.jpg,1,1 2\n", "4 fields, the header 3"),
        (b"ImageId,ClassId,EncodedPixels\nx,y,a.jpg,1,1 2\nb.jpg,2,1 1\n", "5 fields, the header 3"),
        (b"ImageId_ClassId,EncodedPixels\na.jpg_1,1 2,\n", "3 fields, the header 2"),
    ],
)
def test_first_row_with_more_fields_than_the_header(tmp_path: Path, content: bytes, fields: str) -> None:
    # Found by tests/test_fuzz.py: pandas took the extra leading fields as the index and shifted the cells,
    # so the first file read as image a.jpg, class 1, RLE "1 2" without a word.
    path = tmp_path / "train.csv"
    path.write_bytes(content)
    with pytest.raises(PipelineError) as error:
        read_csv(path)
    assert_error(error, str(path), f"not a readable CSV (the first row has {fields})")


def test_unreadable_csv(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(b'ImageId,ClassId,EncodedPixels\na.jpg,1,"1 2\n\xff\xfe\x00')
    with pytest.raises(PipelineError) as error:
        read_csv(path)
    assert_error(error, str(path), "not a readable CSV")


def test_a_folder_in_place_of_the_csv_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.mkdir()
    with pytest.raises(PipelineError) as error:
        read_csv(path)
    assert_error(error, str(path), "cannot read")


def test_empty_image_id_new_format(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\n,3,1 2\n")
    with pytest.raises(PipelineError) as error:
        parse_labels(read_csv(path), str(path))
    assert_error(error, str(path), "line 3", "empty ImageId")


def test_an_implausible_class_count_is_an_error_not_a_hang(tmp_path: Path) -> None:
    sample = sample_rows_for(TEST_ORDER)
    sample.insert(3, ("t1.jpg", 1000000000, ""))
    root = make_dataset(tmp_path, "new", "new", sample=sample)
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(
        error, str(root / "sample_submission.csv"), "ClassId 1000000000 is not plausible", "at most 255"
    )


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_image_cut_short_is_an_error(tmp_path: Path, suffix: str) -> None:
    """PIL reads the size from the header and OpenCV decodes the rest grey: the file's end is checked."""
    root = make_dataset(tmp_path)
    path = root / "train_images" / f"e{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, (64, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(path), noise)  # most of the file past the header
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(path), "truncated or corrupt image", "JPEG" if suffix == ".jpg" else "PNG")


@pytest.mark.parametrize("appended", [b"\x00" * 100, b"trailer data " * 400])
def test_bytes_after_the_end_marker_are_allowed(tmp_path: Path, appended: bytes) -> None:
    """Padding after FFD9, or a long trailer some cameras append (decoded in full to tell it from a cut)."""
    root = make_dataset(tmp_path)
    path = root / "train_images" / "a.jpg"
    path.write_bytes(path.read_bytes() + appended)
    assert len(index_dataset(root).train) == len(TRAIN_IMAGES)


def test_uniform_sizes_name_the_odd_image(tmp_path: Path) -> None:
    images = {name: (16, 40) for name in TRAIN_IMAGES}
    tests = {name: (16, 40) for name in TEST_IMAGES}
    dataset = index_dataset(make_dataset(tmp_path, train_images=images, test_images=tests))
    check_uniform_sizes(dataset)
    odd = index_dataset(
        make_dataset(tmp_path / "odd", train_images=images, test_images={**tests, "t0.jpg": (16, 48)})
    )
    with pytest.raises(PipelineError) as error:
        check_uniform_sizes(odd)
    assert_error(
        error, str(tmp_path / "odd" / "test_images" / "t0.jpg"), "16x48 pixels", "images are 16x40",
        "prepare.image_sizes: mixed",
    )  # fmt: skip
    with pytest.raises(PipelineError, match=r"c\.jpg: image of 20x30 pixels"):
        check_uniform_sizes(index_dataset(make_dataset(tmp_path / "mixed")))  # the default data: mixed sizes


def test_images_the_old_format_does_not_list_are_a_warning(tmp_path: Path) -> None:
    images = {**TRAIN_IMAGES, "e.jpg": (16, 40), "f.jpg": (16, 40)}
    root = make_dataset(tmp_path, "old", train_images=images)
    dataset = index_dataset(root)
    unlisted = root / "train_images" / "e.jpg"
    assert dataset.warnings == (
        f"{unlisted}: not listed in {root / 'train.csv'}, treated as clean (and 1 more)",
    )
    assert not dataset.train.set_index("ImageId").loc[["e.jpg", "f.jpg"], "has_defect"].any()
    assert index_dataset(make_dataset(tmp_path / "new", "new", train_images=images)).warnings == ()


def test_test_images_the_sample_does_not_list_are_a_warning(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, test_images={**TEST_IMAGES, "t9.jpg": (16, 40)})
    dataset = index_dataset(root)
    assert dataset.warnings == (
        f"{root / 'test_images' / 't9.jpg'}: not listed in {root / 'sample_submission.csv'}, not predicted",
    )
    assert list(dataset.test["ImageId"]) == TEST_ORDER


def test_empty_test_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, test_images={})
    with pytest.raises(PipelineError) as error:
        index_dataset(root)
    assert_error(error, str(root / "test_images"), "no test images", "sample_submission.csv lists 2")


@pytest.mark.parametrize("image_id", ["a.jpg_3", "b.JPG_12"])
def test_an_old_format_row_in_a_new_format_file(image_id: str) -> None:
    frame = labels_frame([("a.jpg", 1, "1 5"), (image_id, "", "1 10")], "new")
    with pytest.raises(PipelineError) as error:
        parse_labels(frame, "train.csv")
    assert_error(error, "train.csv: line 3", repr(image_id), "old-format key", "one format")


# ---------------------------------------------------------------------------------------------- writing

PREDICTIONS = pd.DataFrame(
    {"ImageId": ["t0.jpg"], "rle_1": [""], "rle_2": ["5 3"], "rle_3": [np.nan], "rle_4": ["1 1 9 2"]}
)


def sample_labels(tmp_path: Path, csv_format: str, columns: tuple[str, ...] | None = None) -> Labels:
    rows = sample_rows_for(TEST_ORDER)
    if csv_format == "new":
        columns = columns or NEW_SAMPLE_COLUMNS
    path = write_labels_csv(tmp_path / "sample_submission.csv", rows, csv_format, columns)
    return parse_labels(read_csv(path), str(path))


class FullDiskFile:
    """A file whose close fails as a full disk's does when the last buffered rows are flushed."""

    def __init__(self, file: object) -> None:
        self.file = file

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)

    def close(self) -> None:
        self.file.close()  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_submission_writer_on_a_full_disk(tmp_path: Path) -> None:
    sample = sample_labels(tmp_path, "new")
    path = tmp_path / "submission.csv"
    path.write_text("previous")
    full = r"submission\.csv: cannot write \(No space left on device\)"
    with pytest.raises(PipelineError, match=full), SubmissionWriter(path, sample, 4) as writer:
        writer._file = FullDiskFile(writer._file)  # type: ignore[assignment]
        for image_id in TEST_ORDER:
            writer.write(image_id, ["", "", "", ""])
    assert path.read_text() == "previous"
    assert not list(tmp_path.glob(".*.tmp"))


def test_submission_in_old_format(tmp_path: Path) -> None:
    out = submission_frame(PREDICTIONS, sample_labels(tmp_path, "old"), 4)
    assert list(out.columns) == ["ImageId_ClassId", "EncodedPixels"]
    assert out.to_numpy().tolist() == [
        ["t1.jpg_1", ""],
        ["t1.jpg_2", ""],
        ["t1.jpg_3", ""],
        ["t1.jpg_4", ""],
        ["t0.jpg_1", ""],
        ["t0.jpg_2", "5 3"],
        ["t0.jpg_3", ""],
        ["t0.jpg_4", "1 1 9 2"],
    ]


@pytest.mark.parametrize("columns", [NEW_SAMPLE_COLUMNS, ("ImageId", "ClassId", "EncodedPixels")])
def test_submission_in_new_format(tmp_path: Path, columns: tuple[str, ...]) -> None:
    out = submission_frame(PREDICTIONS, sample_labels(tmp_path, "new", columns), 4)
    assert list(out.columns) == list(columns)
    assert out["ImageId"].tolist() == ["t1.jpg"] * 4 + ["t0.jpg"] * 4
    assert out["ClassId"].tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
    assert out["EncodedPixels"].tolist() == ["", "", "", "", "", "5 3", "", "1 1 9 2"]


@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_submission_round_trips_through_csv(tmp_path: Path, csv_format: str) -> None:
    sample = sample_labels(tmp_path, csv_format)
    path = tmp_path / "submission.csv"
    submission_frame(PREDICTIONS, sample, 4).to_csv(path, index=False)
    # The written file reads back like the sample: same format and header, every pair once, in order.
    assert path.read_text().splitlines()[0] == ",".join(sample.columns)
    written = parse_labels(read_csv(path), str(path))
    check_duplicates(written, str(path))
    assert written.csv_format == csv_format and written.columns == sample.columns
    assert list(zip(written.pairs["ImageId"], written.pairs["ClassId"], strict=True)) == [
        (image_id, class_id) for image_id in TEST_ORDER for class_id in range(1, 5)
    ]
    assert written.pairs["EncodedPixels"].tolist()[5] == "5 3"


@pytest.mark.parametrize("csv_format", ["old", "new"])
def test_submission_without_predictions_is_all_empty(tmp_path: Path, csv_format: str) -> None:
    predictions = pd.DataFrame({"ImageId": pd.Series([], dtype=str), **{f"rle_{c}": [] for c in range(1, 5)}})
    out = submission_frame(predictions, sample_labels(tmp_path, csv_format), 4)
    assert len(out) == 8 and (out["EncodedPixels"] == "").all()


def test_submission_with_unknown_image(tmp_path: Path) -> None:
    predictions = pd.concat([PREDICTIONS, PREDICTIONS.assign(ImageId="zz.jpg")])
    with pytest.raises(PipelineError, match=r"zz\.jpg"):
        submission_frame(predictions, sample_labels(tmp_path, "old"), 4)


def test_submission_with_an_image_predicted_twice(tmp_path: Path) -> None:
    predictions = pd.concat([PREDICTIONS, PREDICTIONS])
    with pytest.raises(PipelineError, match=r"t0\.jpg"):
        submission_frame(predictions, sample_labels(tmp_path, "new"), 4)


def test_submission_order_follows_the_sample_not_the_predictions(tmp_path: Path) -> None:
    predictions = pd.DataFrame(
        {"ImageId": ["t0.jpg", "t1.jpg"], **{f"rle_{c}": [f"{c} 1", f"{c + 10} 1"] for c in range(1, 5)}}
    )
    out = submission_frame(predictions, sample_labels(tmp_path, "old"), 4)
    assert out["ImageId_ClassId"].tolist()[:2] == ["t1.jpg_1", "t1.jpg_2"]
    assert out["EncodedPixels"].tolist() == ["11 1", "12 1", "13 1", "14 1", "1 1", "2 1", "3 1", "4 1"]


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def fixture_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LabelRow]]:
    """A Kaggle folder with the real old-format fixture as train.csv and blank 256x1600 JPEGs."""
    if not OLD_FIXTURE.is_file():
        pytest.skip(f"real fixture {OLD_FIXTURE} is absent")
    rows = read_fixture_rows()
    root = tmp_path_factory.mktemp("real_old")
    images = dict.fromkeys(dict.fromkeys(image_id for image_id, _, _ in rows), (256, 1600))
    write_images(root / "train_images", images, jpeg_quality=5)
    write_images(root / "test_images", {"t.jpg": (256, 1600)}, jpeg_quality=5)
    shutil.copyfile(OLD_FIXTURE, root / "train.csv")
    write_labels_csv(root / "sample_submission.csv", sample_rows_for(["t.jpg"]), "old")
    return root, rows


def test_real_old_format_fixture(fixture_folder: tuple[Path, list[LabelRow]]) -> None:
    root, rows = fixture_folder
    dataset = index_dataset(root)
    assert dataset.train_format == "old" and dataset.num_classes == 4
    train = dataset.train.set_index("ImageId")
    assert len(train) == 100
    assert (train["height"] == 256).all() and (train["width"] == 1600).all()
    for image_id, class_id, text in rows:
        assert train.loc[image_id, f"rle_{class_id}"] == text
    assert int(train["has_defect"].sum()) == 60
    for image_id, row in train.iterrows():
        present = [c for c in range(1, 5) if row[f"rle_{c}"]]
        assert row["classes"] == "_".join(map(str, present)), image_id
        assert all(rle.decode(row[f"rle_{c}"], (256, 1600)).any() for c in present)


def test_real_fixture_in_new_format_gives_the_same_table(
    fixture_folder: tuple[Path, list[LabelRow]], tmp_path: Path
) -> None:
    root, rows = fixture_folder
    new_root = tmp_path / "real_new"
    new_root.mkdir()
    for name in ["train_images", "test_images", "sample_submission.csv"]:
        (new_root / name).symlink_to(root / name)
    write_labels_csv(new_root / "train.csv", [row for row in rows if row[2]], "new")
    new = index_dataset(new_root)
    assert new.train_format == "new"
    pd.testing.assert_frame_equal(new.train, index_dataset(root).train)


def test_real_fixture_rle_too_long_for_smaller_images(
    fixture_folder: tuple[Path, list[LabelRow]], tmp_path: Path
) -> None:
    # The same real strings on 128x1600 images: some run must fall past the end, and it is reported.
    root, rows = fixture_folder
    small = tmp_path / "small"
    images = dict.fromkeys(dict.fromkeys(image_id for image_id, _, _ in rows), (128, 1600))
    write_images(small / "train_images", images, jpeg_quality=5)
    (small / "test_images").symlink_to(root / "test_images")
    (small / "sample_submission.csv").symlink_to(root / "sample_submission.csv")
    shutil.copyfile(OLD_FIXTURE, small / "train.csv")
    with pytest.raises(PipelineError) as error:
        index_dataset(small)
    assert_error(error, str(small / "train.csv"), "bad RLE", "past the image's 204800 pixels")


def test_write_image_helper_sizes(tmp_path: Path) -> None:
    # The helper itself: (height, width) in, the same read back.
    assert image_size(write_image(tmp_path / "x.png", (3, 11))) == (3, 11)
