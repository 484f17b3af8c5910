"""Stage postprocess (notebook 5): classifier-gated submission and the evaluation of the whole flow.

Wipes every mask of every test image whose allMissing >= the threshold (from stage threshold unless
postprocess.threshold overrides it), validates the result and writes data/submission.csv. Evaluates on
the holdout images the Dice of the all-empty submission, of segmentation alone and of segmentation +
gating, and, where the dataset ships test ground truth (test_truth.csv, as the synthetic one does),
the test Dice of the raw and gated submissions -> data/eval.json (DVC metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core import cli
from stages.core.dataset import parse_labels, read_csv, validate_submission
from stages.core.errors import PipelineError
from stages.core.io import write_csv, write_json
from stages.core.metric import DiceReport, grade, summarize
from stages.core.params import load_section, require
from stages.core.postprocess import gate
from stages.core.prepared import Prepared, load_prepared
from stages.core.scoring import score_files

SUBMISSION_RAW = Path("data/submission_raw.csv")
SUBMISSION = Path("data/submission.csv")
TEST_SCORES = Path("data/test_missing_count.csv")
TRAIN_SCORES = Path("data/train_missing_count.csv")
THRESHOLD = Path("data/threshold.json")
HOLDOUT = Path("data/holdout_predictions.csv")
EVAL = Path("data/eval.json")


@dataclass(frozen=True)
class PostprocessParams:
    gating: bool = True  # false: the submission is the raw segmentation
    threshold: float | None = None  # null: the threshold stage's choice

    def validate(self, section: str) -> None:
        if self.threshold is not None:
            require(
                0 <= self.threshold <= 1.0 + 1e-9, f"{section}.threshold", "must be in [0, 1]", self.threshold
            )


def read_scores(path: Path) -> pd.Series:
    try:
        table = pd.read_csv(path, dtype={"ImageId": str})
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `dvc repro` for the stages before postprocess") from None
    return table.set_index("ImageId")["allMissing"]


def wipe(pairs: pd.DataFrame, wiped_images: set[str]) -> pd.DataFrame:
    """Empty EncodedPixels for every pair of the wiped images."""
    pairs = pairs.copy()
    pairs.loc[pairs["ImageId"].isin(wiped_images), "EncodedPixels"] = ""
    return pairs


def report_dict(report: DiceReport) -> dict[str, object]:
    return {"mean_dice": report.mean_dice, "per_class": report.per_class}


def evaluate_holdout(prepared: Prepared, train_scores: pd.Series, threshold: float, gating: bool) -> dict:
    """Empty / segmentation / gated Dice on the holdout images, at the original image size."""
    predictions = parse_labels(read_csv(HOLDOUT), str(HOLDOUT)).pairs
    images = list(dict.fromkeys(predictions["ImageId"]))
    table = prepared.train.set_index("ImageId").loc[images]
    truth = pd.DataFrame(
        [
            (image_id, k, table.at[image_id, f"rle_{k}"], 0)
            for image_id in images
            for k in range(1, prepared.num_classes + 1)
        ],
        columns=["ImageId", "ClassId", "EncodedPixels", "line"],
    )
    n_pixels = dict(zip(images, (table["height"] * table["width"]).astype(int), strict=True))
    scores = train_scores.reindex(images)
    wiped = set(np.asarray(images)[gate(scores.to_numpy(), threshold)]) if gating else set()
    scored = {
        "empty": wipe(predictions, set(images)),
        "segmentation": predictions,
        "gated": wipe(predictions, wiped),
    }
    result: dict[str, object] = {
        name: report_dict(
            summarize(grade(pairs, truth, prepared.num_classes, n_pixels, str(HOLDOUT), "truth"))
        )
        for name, pairs in scored.items()
    }
    result["images"] = len(images)
    result["images_gated"] = len(wiped)
    return result


def main() -> None:
    params = load_section(PostprocessParams, "postprocess")
    prepared = load_prepared()
    try:
        chosen = json.loads(THRESHOLD.read_text())["threshold"]
    except FileNotFoundError:
        raise PipelineError(f"{THRESHOLD}: not found; run `dvc repro threshold` first") from None
    threshold = chosen if params.threshold is None else params.threshold
    sample = prepared.sample_submission()
    raw = read_csv(SUBMISSION_RAW)
    sizes = {row.ImageId: (int(row.height), int(row.width)) for row in prepared.test.itertuples()}
    raw_labels = validate_submission(raw, sample, sizes, prepared.num_classes, str(SUBMISSION_RAW))

    test_scores = read_scores(TEST_SCORES)
    unscored = [image_id for image_id in sample.image_ids if image_id not in test_scores.index]
    if unscored:
        raise PipelineError(f"{TEST_SCORES}: no allMissing for test image {unscored[0]}")
    wiped = set()
    if params.gating:
        scores = test_scores.reindex(list(sample.image_ids)).to_numpy()
        wiped = set(np.asarray(sample.image_ids)[gate(scores, threshold)])
    gated_rows = raw_labels.pairs["ImageId"].isin(wiped).to_numpy()
    submission = raw.copy()
    submission.loc[gated_rows, "EncodedPixels"] = ""
    validate_submission(submission, sample, sizes, prepared.num_classes, str(SUBMISSION))
    write_csv(submission, SUBMISSION)

    evaluation: dict[str, object] = {
        "threshold": threshold,
        "gating": params.gating,
        "test_images": len(sample.image_ids),
        "test_images_gated": len(wiped),
        "holdout": evaluate_holdout(prepared, read_scores(TRAIN_SCORES), threshold, params.gating),
    }
    truth = prepared.root / "test_truth.csv"
    if truth.is_file():  # the synthetic dataset ships test ground truth; Kaggle's does not
        images = prepared.test_images
        evaluation["test"] = {
            "segmentation": report_dict(score_files(SUBMISSION_RAW, truth, images)),
            "gated": report_dict(score_files(SUBMISSION, truth, images)),
        }
    write_json(evaluation, EVAL)
    holdout = evaluation["holdout"]
    line = (
        f"postprocess: gated {len(wiped)}/{len(sample.image_ids)} test images at allMissing >= "
        f"{threshold:.4f} -> {SUBMISSION}; holdout Dice empty {holdout['empty']['mean_dice']:.4f}, "
        f"segmentation {holdout['segmentation']['mean_dice']:.4f}, gated {holdout['gated']['mean_dice']:.4f}"
    )
    if "test" in evaluation:
        line += f"; test Dice gated {evaluation['test']['gated']['mean_dice']:.4f}"
    print(line)


if __name__ == "__main__":
    cli.run(main)
