"""The prepared dataset table that stage prepare writes and every later stage reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stages.core.dataset import Dataset, Labels, parse_labels, read_csv
from stages.core.errors import PipelineError

PREPARED_DIR = Path("data/prepared")


@dataclass(frozen=True)
class Prepared:
    root: Path  # the Kaggle-layout folder the images are read from
    train: pd.DataFrame  # ImageId, height, width, rle_1..rle_K, has_defect, classes, fold
    test: pd.DataFrame  # ImageId, height, width
    num_classes: int
    n_folds: int

    @property
    def train_images(self) -> Path:
        return self.root / "train_images"

    @property
    def test_images(self) -> Path:
        return self.root / "test_images"

    def sample_submission(self) -> Labels:
        path = self.root / "sample_submission.csv"
        return parse_labels(read_csv(path), str(path))


def write_prepared(folder: Path, dataset: Dataset, train: pd.DataFrame, n_folds: int) -> None:
    train.to_csv(folder / "train.csv", index=False)
    dataset.test.to_csv(folder / "test.csv", index=False)
    info = {
        "root": str(dataset.root),
        "num_classes": dataset.num_classes,
        "n_folds": n_folds,
        "train_format": dataset.train_format,
        "sample_format": dataset.sample.csv_format,
        "n_train": len(train),
        "n_test": len(dataset.test),
        "train_per_fold": {str(f): int(n) for f, n in train["fold"].value_counts().sort_index().items()},
    }
    (folder / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")


def load_prepared(folder: Path = PREPARED_DIR) -> Prepared:
    try:
        info = json.loads((folder / "dataset.json").read_text())
        # All text first: "1_3" in `classes` and RLE strings must not be parsed as numbers.
        train = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
        test = pd.read_csv(folder / "test.csv", dtype=str, keep_default_na=False)
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: not found; run `dvc repro prepare` first") from None
    num_classes = int(info["num_classes"])
    train = train.astype({"height": int, "width": int, "fold": int})
    train["has_defect"] = train["has_defect"] == "True"
    test = test.astype({"height": int, "width": int})
    return Prepared(
        root=Path(info["root"]), train=train, test=test, num_classes=num_classes, n_folds=int(info["n_folds"])
    )
