"""Shared test helpers: tiny Kaggle-layout Severstal folders and labels CSVs written into a temporary folder.

A label row is a triple `(image_id, class_id, encoded_pixels)` ("" = empty mask). `write_labels_csv` writes
such rows in either published format:

    old  ImageId_ClassId,EncodedPixels        `<image>_<class>` keys
    new  ImageId,ClassId,EncodedPixels        (or any column order given as `columns`)

The rows are written exactly as given: for the old format pass every (image, class) pair (`grid_rows`
builds them), for a new-format train.csv pass only the defect rows (`defect_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# The shared fixtures folder sits beside the repository folder; it is read in place, never copied in.
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
OLD_FIXTURE = FIXTURES / "severstal_test_masks_sample_old_format.csv"

LabelRow = tuple[str, int | str, str]  # class as int, or any text to test bad ClassIds
Size = tuple[int, int]  # (height, width)

OLD_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
NEW_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
NEW_SAMPLE_COLUMNS = ("ImageId", "EncodedPixels", "ClassId")  # Kaggle's new sample puts EncodedPixels second


def grid_rows(
    image_ids: Iterable[str], num_classes: int, defects: Mapping[tuple[str, int], str] | None = None
) -> list[LabelRow]:
    """Every (image, class) pair, classes 1..num_classes per image, with the RLE from `defects` or ""."""
    defects = defects or {}
    return [
        (image_id, class_id, defects.get((image_id, class_id), ""))
        for image_id in image_ids
        for class_id in range(1, num_classes + 1)
    ]


def defect_rows(defects: Mapping[tuple[str, int], str]) -> list[LabelRow]:
    """The non-empty pairs only, in the mapping's order (a new-format train.csv)."""
    return [(image_id, class_id, text) for (image_id, class_id), text in defects.items() if text]


def labels_frame(
    rows: Iterable[LabelRow], csv_format: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Label rows as the DataFrame of a CSV in the given format ("old" | "new"), every cell a string."""
    rows = list(rows)
    if csv_format == "old":
        frame = pd.DataFrame(
            {
                "ImageId_ClassId": [f"{image_id}_{class_id}" for image_id, class_id, _ in rows],
                "EncodedPixels": [text for _, _, text in rows],
            },
            dtype=object,
        )
        default = OLD_COLUMNS
    elif csv_format == "new":
        frame = pd.DataFrame(
            {
                "ImageId": [image_id for image_id, _, _ in rows],
                "ClassId": [str(class_id) for _, class_id, _ in rows],
                "EncodedPixels": [text for _, _, text in rows],
            },
            dtype=object,
        )
        default = NEW_COLUMNS
    else:
        raise ValueError(f"unknown CSV format {csv_format!r}")
    return frame[list(columns or default)]


def write_labels_csv(
    path: Path, rows: Iterable[LabelRow], csv_format: str, columns: Sequence[str] | None = None
) -> Path:
    """Write label rows as a CSV in the given format; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels_frame(rows, csv_format, columns).to_csv(path, index=False)
    return path


def write_image(path: Path, size: Size, value: int = 0, jpeg_quality: int = 90) -> Path:
    """A 3-channel image of (height, width) filled with `value`, in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    pixels = np.full((height, width, 3), value, dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), pixels, params):
        raise OSError(f"cv2.imwrite failed for {path}")
    return path


def write_images(folder: Path, images: Mapping[str, Size], jpeg_quality: int = 90) -> None:
    """One blank image per name, of the given (height, width); creates the folder even when empty."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in images.items():
        write_image(folder / name, size, jpeg_quality=jpeg_quality)


def write_kaggle_folder(
    root: Path,
    train_rows: Iterable[LabelRow],
    sample_rows: Iterable[LabelRow],
    train_images: Mapping[str, Size],
    test_images: Mapping[str, Size],
    train_format: str = "new",
    sample_format: str = "new",
    sample_columns: Sequence[str] | None = None,
    jpeg_quality: int = 90,
) -> Path:
    """Write a Kaggle-layout folder: train.csv, sample_submission.csv, train_images/, test_images/.

    `train_rows` and `sample_rows` are written as given in `train_format` / `sample_format`;
    `sample_columns` sets the new-format sample's column order (default Kaggle's ImageId,EncodedPixels,
    ClassId). Images are blank 3-channel JPEGs (or the suffix's format) of the given (height, width).
    Returns `root`.
    """
    root.mkdir(parents=True, exist_ok=True)
    write_labels_csv(root / "train.csv", train_rows, train_format)
    if sample_format == "new" and sample_columns is None:
        sample_columns = NEW_SAMPLE_COLUMNS
    write_labels_csv(root / "sample_submission.csv", sample_rows, sample_format, sample_columns)
    write_images(root / "train_images", train_images, jpeg_quality)
    write_images(root / "test_images", test_images, jpeg_quality)
    return root


def sample_rows_for(
    image_ids: Iterable[str], num_classes: int = 4, placeholder: str = "1 1"
) -> list[LabelRow]:
    """A sample submission's rows: every image with every class, each with the placeholder RLE."""
    return [
        (image_id, class_id, placeholder) for image_id in image_ids for class_id in range(1, num_classes + 1)
    ]


def read_fixture_rows() -> list[LabelRow]:
    """The real old-format fixture as label rows; the caller must skip when OLD_FIXTURE is absent."""
    frame = pd.read_csv(OLD_FIXTURE, dtype=str, keep_default_na=False)
    rows = []
    for key, text in zip(frame["ImageId_ClassId"], frame["EncodedPixels"], strict=True):
        image_id, _, class_id = key.rpartition("_")
        rows.append((image_id, int(class_id), text))
    return rows
