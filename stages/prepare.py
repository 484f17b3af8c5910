"""Stage prepare: index and validate the dataset at data.root once, and assign stratified folds.

Outputs data/prepared/: train.csv (one row per train image: size, RLE per class, has_defect, classes,
fold), test.csv (the sample submission's images with their sizes) and dataset.json (root, class count,
formats, counts). Every later stage reads this table instead of re-parsing the Kaggle files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stages.core import cli
from stages.core.dataset import check_uniform_sizes, index_dataset
from stages.core.folds import assign_folds
from stages.core.io import atomic_path
from stages.core.params import load_section, require
from stages.core.prepared import PREPARED_DIR, write_prepared


@dataclass(frozen=True)
class DataParams:
    root: str


@dataclass(frozen=True)
class PrepareParams:
    n_folds: int
    seed: int
    # uniform: every train and test image has the dataset's most common size, else an error naming the
    # file (Severstal's are all 256x1600); mixed: any sizes (masks and predictions follow each image's).
    image_sizes: Literal["uniform", "mixed"] = "uniform"

    def validate(self, section: str) -> None:
        require(
            self.n_folds >= 2, f"{section}.n_folds", "must be at least 2 (one fold is held out)", self.n_folds
        )


def main() -> None:
    data = load_section(DataParams, "data")
    params = load_section(PrepareParams, "prepare")
    dataset = index_dataset(Path(data.root))
    if params.image_sizes == "uniform":
        check_uniform_sizes(dataset)
    for warning in dataset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    train = dataset.train.copy()
    train["fold"] = assign_folds(train["classes"], params.n_folds, params.seed)
    with atomic_path(PREPARED_DIR, directory=True) as tmp:
        write_prepared(tmp, dataset, train, params.n_folds)
    counts = {str(c): int(train[f"rle_{c}"].ne("").sum()) for c in range(1, dataset.num_classes + 1)}
    print(
        f"prepare: {len(train)} train images ({int((~train['has_defect']).sum())} clean, "
        f"per class {counts}), "
        f"{len(dataset.test)} test images, {params.n_folds} folds -> {PREPARED_DIR}"
    )


if __name__ == "__main__":
    cli.run(main)
