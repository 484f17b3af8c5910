"""Stage synthesize: the embedded default dataset, a Severstal-like folder in the exact Kaggle layout.

data/synthetic/ gets train.csv (new format, or old via a param), train_images/, test_images/,
sample_submission.csv (same format as train.csv) and test_truth.csv (every test pair, for stages.score;
no training stage reads it). data/synthetic_stats.json holds the dataset statistics (a plain output).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import pandas as pd

from stages.core import cli, rle
from stages.core.errors import PipelineError
from stages.core.io import atomic_path, write_json
from stages.core.params import load_section, require
from stages.core.synthetic import Look, SyntheticSpec, generate, plan_split, validate_spec

OUT_DIR = Path("data/synthetic")
STATS_FILE = Path("data/synthetic_stats.json")
NUM_CLASSES = 4


@dataclass(frozen=True)
class SynthesizeParams:
    seed: int
    n_train: int
    n_test: int
    height: int
    width: int
    clean_fraction: float
    class_weights: tuple[float, ...]
    two_class_fraction: float
    margin_fraction: float
    benign_mark_fraction: float = 0.0
    look: Look = "rolled"  # "brushed": a second look, to check that the pipeline generalises
    train_csv_format: Literal["new", "old"] = "new"
    jpeg_quality: int = 90
    workers: int = 2

    def validate(self, section: str) -> None:
        require(self.n_train >= 2, f"{section}.n_train", "must be at least 2", self.n_train)
        require(self.n_test >= 1, f"{section}.n_test", "must be at least 1", self.n_test)
        require(
            1 <= self.jpeg_quality <= 100, f"{section}.jpeg_quality", "must be in 1..100", self.jpeg_quality
        )
        require(self.workers >= 1, f"{section}.workers", "must be at least 1", self.workers)
        try:
            validate_spec(self.spec)
        except ValueError as error:
            raise PipelineError(f"params: {error}") from None

    @property
    def spec(self) -> SyntheticSpec:
        return SyntheticSpec(
            height=self.height,
            width=self.width,
            clean_fraction=self.clean_fraction,
            class_weights=self.class_weights,
            two_class_fraction=self.two_class_fraction,
            margin_fraction=self.margin_fraction,
            benign_mark_fraction=self.benign_mark_fraction,
            look=self.look,
        )


def image_name(seed: int, split: str, index: int) -> str:
    """Kaggle-style 9-hex-digit file name, stable for (seed, split, index)."""
    return hashlib.sha1(f"{seed}/{split}/{index}".encode()).hexdigest()[:9] + ".jpg"


def _render_one(
    args: tuple[int, str, int, SyntheticSpec, tuple[int, ...], int, Path],
) -> tuple[str, list[str], list[int]]:
    seed, split, index, spec, classes, quality, folder = args
    image, masks = generate(seed, split, index, spec, classes)
    name = image_name(seed, split, index)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"could not encode {name}")
    (folder / name).write_bytes(encoded.tobytes())
    return name, [rle.encode(mask) for mask in masks], [int(mask.sum()) for mask in masks]


def render_split(
    params: SynthesizeParams, split: str, count: int, folder: Path, pool: ProcessPoolExecutor
) -> pd.DataFrame:
    """Write the split's images; return one row per image: ImageId, rle_1..4, area_1..4."""
    folder.mkdir(parents=True)
    # The class plan is made here, once per split, so that the workers only render.
    plan = plan_split(params.seed, split, count, params.spec)
    jobs = [
        (params.seed, split, i, params.spec, classes, params.jpeg_quality, folder)
        for i, classes in enumerate(plan)
    ]
    rows = []
    for name, rles, areas in pool.map(_render_one, jobs, chunksize=8):
        rows.append([name, *rles, *areas])
    columns = ["ImageId"] + [f"rle_{c}" for c in range(1, NUM_CLASSES + 1)]
    columns += [f"area_{c}" for c in range(1, NUM_CLASSES + 1)]
    table = pd.DataFrame(rows, columns=columns)
    if table["ImageId"].duplicated().any():
        raise RuntimeError(f"image name collision in split {split}; change synthesize.seed")
    return table


def long_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """ImageId, ClassId, EncodedPixels for every (image, class) pair, image-major."""
    long = table.melt(
        id_vars="ImageId",
        value_vars=[f"rle_{c}" for c in range(1, NUM_CLASSES + 1)],
        var_name="ClassId",
        value_name="EncodedPixels",
    )
    long["ClassId"] = long["ClassId"].str.removeprefix("rle_").astype(int)
    order = {image_id: i for i, image_id in enumerate(table["ImageId"])}
    return long.sort_values(["ImageId", "ClassId"], key=lambda s: s.map(order) if s.name == "ImageId" else s)


def labels_csv(pairs: pd.DataFrame, csv_format: str, defect_rows_only: bool) -> pd.DataFrame:
    """Pairs in a published CSV format: new `ImageId,ClassId,EncodedPixels` or old `ImageId_ClassId,...`."""
    if csv_format == "old":
        return pd.DataFrame(
            {
                "ImageId_ClassId": pairs["ImageId"] + "_" + pairs["ClassId"].astype(str),
                "EncodedPixels": pairs["EncodedPixels"],
            }
        )
    if defect_rows_only:
        pairs = pairs[pairs["EncodedPixels"] != ""]
    return pairs[["ImageId", "ClassId", "EncodedPixels"]]


def split_stats(table: pd.DataFrame) -> dict[str, object]:
    present = table[[f"area_{c}" for c in range(1, NUM_CLASSES + 1)]].to_numpy() > 0
    areas = table[[f"area_{c}" for c in range(1, NUM_CLASSES + 1)]].to_numpy()
    return {
        "images": len(table),
        "clean_images": int((~present.any(axis=1)).sum()),
        "multi_class_images": int((present.sum(axis=1) > 1).sum()),
        "images_per_class": {str(c + 1): int(present[:, c].sum()) for c in range(NUM_CLASSES)},
        "mean_mask_area_px": {
            str(c + 1): round(float(areas[present[:, c], c].mean()), 1) if present[:, c].any() else 0.0
            for c in range(NUM_CLASSES)
        },
    }


def main() -> None:
    params = load_section(SynthesizeParams, "synthesize")
    with atomic_path(OUT_DIR, directory=True) as tmp, ProcessPoolExecutor(params.workers) as pool:
        train = render_split(params, "train", params.n_train, tmp / "train_images", pool)
        test = render_split(params, "test", params.n_test, tmp / "test_images", pool)
        labels_csv(long_pairs(train), params.train_csv_format, defect_rows_only=True).to_csv(
            tmp / "train.csv", index=False
        )
        sample = long_pairs(test.assign(**{f"rle_{c}": "1 1" for c in range(1, NUM_CLASSES + 1)}))
        sample_csv = labels_csv(sample, params.train_csv_format, defect_rows_only=False)
        if params.train_csv_format == "new":  # Kaggle's new-format sample puts EncodedPixels second
            sample_csv = sample_csv[["ImageId", "EncodedPixels", "ClassId"]]
        sample_csv.to_csv(tmp / "sample_submission.csv", index=False)
        # Every pair, empty ones included, so the truth alone defines the graded images.
        labels_csv(long_pairs(test), params.train_csv_format, defect_rows_only=False).to_csv(
            tmp / "test_truth.csv", index=False
        )
    stats = {"train": split_stats(train), "test": split_stats(test)}
    write_json(stats, STATS_FILE)
    print(
        f"synthesize: {len(train)} train + {len(test)} test images of {params.height}x{params.width} "
        f"in {OUT_DIR}; "
        f"train clean {stats['train']['clean_images']}, per class {stats['train']['images_per_class']}"
    )


if __name__ == "__main__":
    cli.run(main)
