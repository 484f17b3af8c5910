"""Reader for a Kaggle-layout Severstal folder and writer of submissions in its sample's format.

Layout: train.csv, train_images/, test_images/, sample_submission.csv. train.csv comes in two published
formats, both accepted:
  old  `ImageId_ClassId,EncodedPixels`   4 rows per image, empty EncodedPixels where there is no defect
  new  `ImageId,ClassId,EncodedPixels`   defect rows only; images in train_images/ without rows are clean
sample_submission.csv likewise (old, or new with columns in any order).

The parsing functions are pure (DataFrames in, DataFrames out); `index_dataset` does the file I/O.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from stages.core import rle
from stages.core.errors import PipelineError, RLEError
from stages.core.io import atomic_path

OLD_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
NEW_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Larger ClassIds are unknown outright: to_numeric may give float64, which stops holding every integer here,
# or uint64, and neither would survive the cast to int64 (a 2**64 - 1 would come out as -1).
MAX_CLASS_ID = 2**53
# The number of defect classes a dataset may have (Severstal: 4); each is a mask channel and a table column.
MAX_CLASSES = 255
# Error messages quote image names as they are: a C0/C1 control character (line break, tab, NUL, escape) or
# a Unicode line or paragraph separator in one would break the message's single line, or the terminal.
_CONTROL_CHARACTER = "[\x00-\x1f\x7f-\x9f\u2028\u2029]"
# An old-format key `<image>_<class>` (0002cc93b.jpg_3): never an image name, whose suffix comes last.
_OLD_KEY = re.compile(r".+\.(?:" + "|".join(s[1:] for s in IMAGE_SUFFIXES) + r")_[0-9]+", re.IGNORECASE)


def rle_column(class_id: int) -> str:
    return f"rle_{class_id}"


@dataclass(frozen=True)
class Labels:
    """A labels CSV in long form: one row per (ImageId, ClassId) as listed in the file."""

    pairs: pd.DataFrame  # ImageId, ClassId (int), EncodedPixels (str, "" = empty), line (1-based CSV line)
    csv_format: str  # "old" | "new"
    columns: tuple[str, ...]  # the header as written, to write submissions back in the same format
    image_ids: tuple[str, ...]  # images in order of first appearance


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV with every cell as a string and empty cells as "" (never NaN)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    except OSError as error:  # a folder where the file should be, no permission to read it, ...
        raise PipelineError(f"{path}: cannot read ({error.strerror or type(error).__name__})") from None
    # When the first row has more fields than the header, pandas silently takes the extra leading fields
    # as the index, shifting every cell one column over (later rows with too many fields are errors).
    if not isinstance(frame.index, pd.RangeIndex):
        extra = frame.index.nlevels
        raise PipelineError(
            f"{path}: not a readable CSV (the first row has {len(frame.columns) + extra} fields, "
            f"the header {len(frame.columns)})"
        )
    return frame


def parse_labels(frame: pd.DataFrame, source: str) -> Labels:
    """Parse a train/sample/truth/submission CSV in either published format into long form."""
    columns = tuple(frame.columns)
    lines = np.arange(len(frame)) + 2  # line 1 is the header
    if set(columns) == set(OLD_COLUMNS):
        key = frame["ImageId_ClassId"].str.strip()
        # reindex: on a header-only file rpartition returns no columns at all.
        parts = key.str.rpartition("_").reindex(columns=range(3))
        image_ids, sep, class_text = parts.to_numpy(dtype=object).T
        bad = np.flatnonzero((sep == "") | (image_ids == ""))
        if bad.size:
            raise PipelineError(
                f"{source}: line {lines[bad[0]]}: ImageId_ClassId {key.iloc[bad[0]]!r} "
                "is not '<image>_<class>'"
            )
        format_name = "old"
    elif set(columns) == set(NEW_COLUMNS):
        image_ids = frame["ImageId"].str.strip().to_numpy()
        class_text = frame["ClassId"].str.strip().to_numpy()
        empty = np.flatnonzero(image_ids == "")
        if empty.size:
            raise PipelineError(f"{source}: line {lines[empty[0]]}: empty ImageId")
        old_keys = np.flatnonzero([_OLD_KEY.fullmatch(image_id) is not None for image_id in image_ids])
        if old_keys.size:
            raise PipelineError(
                f"{source}: line {lines[old_keys[0]]}: {image_ids[old_keys[0]]!r} is an old-format key "
                f"(<image>_<class>) in a new-format file ({','.join(columns)}); "
                "use one format for the whole file"
            )
        format_name = "new"
    else:
        raise PipelineError(
            f"{source}: unknown CSV columns {list(columns)}; expected {list(OLD_COLUMNS)} (old format) "
            f"or {list(NEW_COLUMNS)} (new format)"
        )
    bad = np.flatnonzero(pd.Series(image_ids, dtype=object).str.contains(_CONTROL_CHARACTER).to_numpy(bool))
    if bad.size:
        raise PipelineError(
            f"{source}: line {lines[bad[0]]}: ImageId {image_ids[bad[0]]!r} "
            "contains a line break or control character"
        )
    class_ids = pd.to_numeric(pd.Series(class_text), errors="coerce").to_numpy()
    bad = np.flatnonzero(
        ~np.isfinite(class_ids)
        | (class_ids != np.round(class_ids))
        | (class_ids < 0)
        | (class_ids > MAX_CLASS_ID)
    )
    if bad.size:
        raise PipelineError(f"{source}: line {lines[bad[0]]}: unknown ClassId {class_text[bad[0]]!r}")
    pairs = pd.DataFrame(
        {
            "ImageId": image_ids.astype(str),
            "ClassId": class_ids.astype(np.int64),
            "EncodedPixels": frame["EncodedPixels"].str.strip().to_numpy(),
            "line": lines,
        }
    )
    order = tuple(dict.fromkeys(pairs["ImageId"]))
    return Labels(pairs=pairs, csv_format=format_name, columns=columns, image_ids=order)


def check_duplicates(labels: Labels, source: str) -> None:
    duplicated = labels.pairs.duplicated(["ImageId", "ClassId"], keep="first")
    if duplicated.any():
        row = labels.pairs[duplicated].iloc[0]
        first = labels.pairs[
            (labels.pairs["ImageId"] == row["ImageId"]) & (labels.pairs["ClassId"] == row["ClassId"])
        ].iloc[0]
        raise PipelineError(
            f"{source}: line {row['line']}: duplicate row for image {row['ImageId']} class {row['ClassId']} "
            f"(first at line {first['line']})"
        )


def class_ids_of(labels: Labels) -> tuple[int, ...]:
    """The defect classes a labels file declares: ClassId 0 is the placeholder some samples use."""
    return tuple(sorted(int(c) for c in labels.pairs["ClassId"].unique() if c > 0))


def check_classes(labels: Labels, num_classes: int, source: str, allow_placeholder: bool = False) -> None:
    lowest = 0 if allow_placeholder else 1
    bad = labels.pairs[(labels.pairs["ClassId"] < lowest) | (labels.pairs["ClassId"] > num_classes)]
    if len(bad):
        row = bad.iloc[0]
        raise PipelineError(
            f"{source}: line {row['line']}: unknown ClassId {row['ClassId']} (classes are 1..{num_classes})"
        )


def wide_table(labels: Labels, image_ids: list[str] | tuple[str, ...], num_classes: int) -> pd.DataFrame:
    """One row per image (in the given order), one RLE column per class ("" = empty), has_defect."""
    table = pd.DataFrame({"ImageId": list(image_ids)})
    pairs = labels.pairs[labels.pairs["EncodedPixels"] != ""]
    for class_id in range(1, num_classes + 1):
        rles = pairs[pairs["ClassId"] == class_id].set_index("ImageId")["EncodedPixels"]
        # object first: with no RLE for this class, map gives float64 NaNs, which fillna("") must not meet.
        table[rle_column(class_id)] = table["ImageId"].map(rles).astype(object).fillna("").astype(str)
    rle_cols = [rle_column(c) for c in range(1, num_classes + 1)]
    present = table[rle_cols].ne("")
    table["has_defect"] = present.any(axis=1)
    # The set of classes present, e.g. "3" or "1_3" ("" = clean): the stratum for fold assignment.
    table["classes"] = [
        "_".join(str(c) for c, on in zip(range(1, num_classes + 1), flags, strict=True) if on)
        for flags in present.to_numpy()
    ]
    return table


def validate_rles(table: pd.DataFrame, num_classes: int, labels: Labels, source: str) -> None:
    """Decode-check every RLE against its image's size (columns height, width); errors name the CSV line."""
    line_of = labels.pairs.set_index(["ImageId", "ClassId"])["line"]
    for class_id in range(1, num_classes + 1):
        column = rle_column(class_id)
        for image_id, text, height, width in table.loc[
            table[column] != "", ["ImageId", column, "height", "width"]
        ].itertuples(index=False):
            try:
                rle.parse_runs(text, int(height) * int(width))
            except RLEError as error:
                line = line_of.get((image_id, class_id), "?")
                raise PipelineError(
                    f"{source}: line {line}: bad RLE for image {image_id} class {class_id}: {error}"
                ) from None


# A JPEG ends with the end-of-image marker FFD9, a PNG with its IEND chunk. A file cut short keeps its
# header (PIL reads the size from it) and OpenCV decodes it without a word, the missing rows grey: so the
# end is checked too, on the last bytes only. Only a file without the marker there (cut short, or, rarely,
# with data appended after its end) is decoded in full to tell which.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
END_MARKER_NAMES = {"JPEG": "FFD9 end-of-image marker", "PNG": "IEND chunk"}
TAIL_BYTES = 1024


def ends_whole(path: Path, image_format: str | None) -> bool:
    """Whether a JPEG or PNG file has its end marker among its last bytes (other formats: not checked)."""
    marker = END_MARKERS.get(image_format or "")
    if marker is None:
        return True
    with path.open("rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - TAIL_BYTES))
        return marker in file.read()


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image file's header, without decoding the pixels; a JPEG or PNG cut short
    is an error."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if not ends_whole(path, image.format):
                try:
                    image.load()
                except OSError:
                    raise PipelineError(
                        f"{path}: truncated or corrupt image (a {image.format} file ends with the "
                        f"{END_MARKER_NAMES[image.format]}, this one does not); copy the file again"
                    ) from None
    except FileNotFoundError:
        raise PipelineError(f"{path}: image listed in the CSV is missing on disk") from None
    except (UnidentifiedImageError, OSError) as error:
        raise PipelineError(f"{path}: unreadable image ({error})") from None
    return height, width


def list_images(folder: Path) -> list[str]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise PipelineError(f"{folder}: folder not found") from None
    return sorted(name for name in names if name.lower().endswith(IMAGE_SUFFIXES))


@dataclass(frozen=True)
class Dataset:
    """An indexed, validated Kaggle-layout folder."""

    root: Path
    train: pd.DataFrame  # ImageId, height, width, rle_1..rle_K, has_defect, classes
    test: pd.DataFrame  # ImageId, height, width (the sample submission's images, in its order)
    num_classes: int
    train_format: str
    sample: Labels
    warnings: tuple[str, ...] = ()  # one line each: images that are used otherwise than one might expect

    @property
    def train_images(self) -> Path:
        return self.root / "train_images"

    @property
    def test_images(self) -> Path:
        return self.root / "test_images"


def _with_sizes(table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    sizes = [image_size(folder / image_id) for image_id in table["ImageId"]]
    table = table.copy()
    table.insert(1, "height", np.array([s[0] for s in sizes], dtype=np.int64))
    table.insert(2, "width", np.array([s[1] for s in sizes], dtype=np.int64))
    return table


def index_dataset(root: str | Path) -> Dataset:
    """Read and validate a Kaggle-layout folder; every problem is a PipelineError naming file and row."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: dataset folder not found (set data.root in params.yaml)")
    train_csv, sample_csv = root / "train.csv", root / "sample_submission.csv"
    train = parse_labels(read_csv(train_csv), str(train_csv))
    sample = parse_labels(read_csv(sample_csv), str(sample_csv))
    check_duplicates(train, str(train_csv))
    check_duplicates(sample, str(sample_csv))

    # The class count comes from the data: the sample submission's classes when it lists them (the
    # submission must match it, so a train.csv class beyond them is an error in either format), else the
    # highest ClassId in train.csv (an old-format train.csv lists every class for every image).
    sample_classes = class_ids_of(sample)
    num_classes = max(sample_classes) if sample_classes else max(class_ids_of(train), default=0)
    if num_classes > MAX_CLASSES:
        # The table gets one RLE column per class: a stray huge ClassId would make millions of them.
        source = sample_csv if sample_classes else train_csv
        raise PipelineError(
            f"{source}: ClassId {num_classes} is not plausible (at most {MAX_CLASSES} defect classes)"
        )
    if num_classes < 1:
        raise PipelineError(f"{train_csv}: no defect class found (no ClassId >= 1)")
    check_classes(train, num_classes, str(train_csv))
    check_classes(sample, num_classes, str(sample_csv), allow_placeholder=True)

    on_disk = list_images(root / "train_images")
    on_disk_set, listed = set(on_disk), set(train.image_ids)
    missing = [image_id for image_id in train.image_ids if image_id not in on_disk_set]
    if missing:
        row = train.pairs[train.pairs["ImageId"] == missing[0]].iloc[0]
        raise PipelineError(
            f"{train_csv}: line {row['line']}: image {missing[0]} is missing from {root / 'train_images'}"
        )
    # Images on disk without rows are clean (the new format lists defect rows only). The old format lists
    # every image: one it does not is worth a word.
    unlisted = [name for name in on_disk if name not in listed]
    warnings = []
    if unlisted and train.csv_format == "old":
        warnings.append(
            f"{root / 'train_images' / unlisted[0]}: not listed in {train_csv}, treated as clean"
            + _and_more(unlisted)
        )
    image_ids = list(train.image_ids) + unlisted
    train_table = _with_sizes(wide_table(train, sorted(image_ids), num_classes), root / "train_images")
    validate_rles(train_table, num_classes, train, str(train_csv))

    test_dir = root / "test_images"
    test_on_disk = set(list_images(test_dir))
    if not test_on_disk:
        raise PipelineError(
            f"{test_dir}: no test images ({sample_csv} lists {len(sample.image_ids)}); "
            "copy the test images there"
        )
    absent = [image_id for image_id in sample.image_ids if image_id not in test_on_disk]
    if absent:
        row = sample.pairs[sample.pairs["ImageId"] == absent[0]].iloc[0]
        raise PipelineError(f"{sample_csv}: line {row['line']}: image {absent[0]} is missing from {test_dir}")
    extra = sorted(test_on_disk - set(sample.image_ids))
    if extra:
        warnings.append(
            f"{test_dir / extra[0]}: not listed in {sample_csv}, not predicted" + _and_more(extra)
        )
    test_table = _with_sizes(pd.DataFrame({"ImageId": list(sample.image_ids)}), test_dir)
    return Dataset(
        root=root,
        train=train_table,
        test=test_table,
        num_classes=num_classes,
        train_format=train.csv_format,
        sample=sample,
        warnings=tuple(warnings),
    )


def _and_more(names: Sequence[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def check_uniform_sizes(dataset: Dataset) -> None:
    """Every train and test image must have the dataset's most common size: a stray size is most often a
    wrong or re-saved file (Severstal's images are all 256x1600). The error names the file, its size and
    the expected one."""
    tables = ((dataset.train, dataset.train_images), (dataset.test, dataset.test_images))
    sizes = [
        (int(height), int(width), folder / image_id)
        for table, folder in tables
        for image_id, height, width in table[["ImageId", "height", "width"]].itertuples(index=False)
    ]
    if not sizes:
        return
    (expected, _), *_ = Counter((height, width) for height, width, _ in sizes).most_common(1)
    for height, width, path in sizes:
        if (height, width) != expected:
            raise PipelineError(
                f"{path}: image of {height}x{width} pixels (height x width) but the dataset's images are "
                f"{expected[0]}x{expected[1]}; replace it, or set prepare.image_sizes: mixed to allow "
                "images of different sizes"
            )


def submission_rows(image_id: str, rles: Sequence[str], sample: Labels) -> list[list[object]]:
    """The rows of one image (classes 1..K in order) in the sample submission's format and column order."""
    rows = []
    for class_id, text in enumerate(rles, start=1):
        values = {
            "ImageId": image_id,
            "ClassId": class_id,
            "EncodedPixels": text,
            "ImageId_ClassId": f"{image_id}_{class_id}",
        }
        rows.append([values[column] for column in sample.columns])
    return rows


def submission_frame(predictions: pd.DataFrame, sample: Labels, num_classes: int) -> pd.DataFrame:
    """A submission in the sample submission's format: every sample image with every class exactly once.

    `predictions` has ImageId and rle_1..rle_K ("" = no defect); images missing from it get empty masks.
    """
    unknown = sorted(set(predictions["ImageId"]) - set(sample.image_ids))
    if unknown:
        raise PipelineError(f"predictions for image {unknown[0]} which the sample submission does not list")
    repeated = predictions["ImageId"][predictions["ImageId"].duplicated()]
    if len(repeated):
        raise PipelineError(f"predictions list image {repeated.iloc[0]} more than once")
    columns = [rle_column(c) for c in range(1, num_classes + 1)]
    by_image = predictions.set_index("ImageId")[columns].astype(object).fillna("").astype(str)
    empty = [""] * num_classes
    rows = []
    for image_id in sample.image_ids:
        rles = by_image.loc[image_id].tolist() if image_id in by_image.index else empty
        rows += submission_rows(image_id, rles, sample)
    return pd.DataFrame(rows, columns=list(sample.columns))


class SubmissionWriter:
    """Writes a submission image by image, in the sample's order and format, to a temporary file that
    replaces `path` only when every sample image was written: memory stays flat however many images."""

    def __init__(self, path: Path, sample: Labels, num_classes: int) -> None:
        self.path, self.sample, self.num_classes = Path(path), sample, num_classes
        self.written = 0

    def __enter__(self) -> SubmissionWriter:
        self._atomic = atomic_path(self.path)
        # UTF-8 whatever the locale, as pandas writes and read_csv reads (image names may be non-ASCII).
        self._file = self._atomic.__enter__().open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(self.sample.columns)
        return self

    def write(self, image_id: str, rles: Sequence[str]) -> None:
        expected = self.sample.image_ids[self.written] if self.written < len(self.sample.image_ids) else None
        if image_id != expected:
            raise PipelineError(
                f"{self.path}: got image {image_id} where the sample submission has {expected}"
            )
        if len(rles) != self.num_classes:
            raise PipelineError(
                f"{self.path}: image {image_id} has {len(rles)} masks, expected {self.num_classes}"
            )
        self._csv.writerows(submission_rows(image_id, rles, self.sample))
        self.written += 1

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        closing: OSError | None = None
        try:
            self._file.close()  # flushes the last rows: a full disk may show only here
        except OSError as failed:
            closing = failed
        if error is None and closing is not None:
            kind, error, trace = type(closing), closing, closing.__traceback__
        if error is None and self.written != len(self.sample.image_ids):
            missing = self.sample.image_ids[self.written]
            error = PipelineError(f"{self.path}: no prediction for image {missing} (and any after it)")
            self._atomic.__exit__(PipelineError, error, None)
            raise error
        self._atomic.__exit__(kind, error, trace)  # raises a PipelineError for a full disk
        if closing is not None and error is closing:
            raise closing  # not raised by the with block: re-raised here, after the cleanup


def validate_submission(
    frame: pd.DataFrame, sample: Labels, sizes: dict[str, tuple[int, int]], num_classes: int, source: str
) -> Labels:
    """Check a submission before it is written: the sample's columns, every sample image with every class
    exactly once and nothing else, every RLE inside its image. Errors name `source` and the line."""
    if tuple(frame.columns) != tuple(sample.columns):
        raise PipelineError(
            f"{source}: columns {list(frame.columns)} differ from the sample's {list(sample.columns)}"
        )
    labels = parse_labels(frame.astype(str), source)
    check_duplicates(labels, source)
    pairs = labels.pairs
    expected = pd.MultiIndex.from_product([list(sample.image_ids), range(1, num_classes + 1)])
    present = pd.MultiIndex.from_frame(pairs[["ImageId", "ClassId"]])
    extra = ~present.isin(expected)
    if extra.any():
        row = pairs[extra].iloc[0]
        raise PipelineError(
            f"{source}: line {row['line']}: image {row['ImageId']} class {row['ClassId']} "
            "is not in the sample submission"
        )
    missing = expected[~expected.isin(present)]
    if len(missing):
        image_id, class_id = missing[0]
        raise PipelineError(f"{source}: no row for image {image_id} class {class_id}")
    for image_id, class_id, text, line in pairs[pairs["EncodedPixels"] != ""].itertuples(index=False):
        height, width = sizes[image_id]
        try:
            rle.parse_runs(text, height * width)
        except RLEError as error:
            raise PipelineError(
                f"{source}: line {line}: bad RLE for image {image_id} class {class_id}: {error}"
            ) from None
    return labels
