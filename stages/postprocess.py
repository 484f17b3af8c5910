"""Stage postprocess (notebook 5): classifier-gated submission and the evaluation of the whole flow.

Gating modes (`postprocess.gating`):
  none   the U-Net alone;
  image  every mask of a test image with allMissing >= the threshold is wiped (notebook 5);
  class  the mask of class k is wiped where p_k < its threshold (a multilabel classifier);
  soft   nothing is wiped outright: a mask is kept when p * area >= the class's min area, p being the
         classifier's presence probability of that class (1 - allMissing for a binary classifier).
For each mode the per-class rules (probability threshold, min area) are searched again on the holdout
candidates with the gate applied, so the search sees what the gate really lets through (clean images it
keeps included); with `tune_thresholds` (the default) the gate's own thresholds (image, or per class)
are searched together with the rules, so that a defective image wiped is weighed against the false
positives of the clean images kept. The chosen mode's submission is validated and written to
data/submission.csv; data/eval.json (the detail) holds, for every mode the classifier supports,
the Dice on the holdout images and, where the dataset ships test ground truth (test_truth.csv, as
the synthetic one does), on the test images; data/metrics/postprocess.json (the DVC metrics) its
headline figures: the empty, U-Net alone and gated Dice (per class too, for the gated one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from stages.core import cli
from stages.core.dataset import parse_labels, read_csv, submission_frame, validate_submission
from stages.core.errors import PipelineError
from stages.core.headline import write_headline
from stages.core.io import read_json, write_csv, write_json
from stages.core.metric import DiceReport
from stages.core.params import load_section, require
from stages.core.postprocess import (
    GATING_MODES,
    Candidates,
    ClassRule,
    Gate,
    gate_for,
    pair_dice,
    search_rules,
    select_masks,
    stage_thresholds,
    supported_modes,
    threshold_index,
    tune_class_thresholds,
    tune_image_threshold,
)
from stages.core.prepared import Prepared, load_prepared
from stages.core.scores import read_scores
from stages.core.scoring import score_files, score_labels

SUBMISSION_RAW = Path("data/submission_raw.csv")
SUBMISSION = Path("data/submission.csv")
TEST_SCORES = Path("data/test_missing_count.csv")
TRAIN_SCORES = Path("data/train_missing_count.csv")
THRESHOLD = Path("data/threshold.json")
HOLDOUT_CANDIDATES = Path("data/holdout_candidates.csv")
TEST_CANDIDATES = Path("data/test_candidates.csv")
EVAL = Path("data/eval.json")
RULES = Path("data/rules.json")
HEADLINE_FILE = Path("data/metrics/postprocess.json")


@dataclass(frozen=True)
class PostprocessParams:
    gating: Literal["none", "image", "class", "soft"] = "image"
    threshold: float | None = None  # image gating: a number fixes the threshold
    # Search the gate's thresholds (image, or per class) on the holdout together with the rules; false:
    # take the threshold stage's (notebook 3's) choice.
    tune_thresholds: bool = True
    min_areas_px: tuple[int, ...] = (0, 500, 1000, 2000, 4000)  # min-area grid of the gated rule search

    def validate(self, section: str) -> None:
        if self.threshold is not None:
            require(
                0 <= self.threshold <= 1.0 + 1e-9, f"{section}.threshold", "must be in [0, 1]", self.threshold
            )
        require(len(self.min_areas_px) > 0, f"{section}.min_areas_px", "must list at least one value", ())
        for area in self.min_areas_px:
            require(area >= 0, f"{section}.min_areas_px", "must be >= 0", area)


@dataclass(frozen=True)
class Scores:
    """The classifier's probabilities of some images, in a given order."""

    all_missing: np.ndarray  # (N,)
    presence: np.ndarray | None  # (N, K) with a multilabel classifier


def scores_of(table: pd.DataFrame, image_ids: list[str], num_classes: int, source: Path) -> Scores:
    missing = [image_id for image_id in image_ids if image_id not in table.index]
    if missing:
        raise PipelineError(f"{source}: no classifier scores for image {missing[0]}")
    rows = table.loc[image_ids]
    presence_columns = [f"p_{k}" for k in range(1, num_classes + 1)]
    presence = rows[presence_columns].to_numpy(np.float64) if set(presence_columns) <= set(rows) else None
    return Scores(rows["allMissing"].to_numpy(np.float64), presence)


def read_candidates(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"ImageId": str, "EncodedPixels": str}, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `dvc repro segment` first") from None


@dataclass(frozen=True)
class TestCandidates:
    """The test images' candidate masks: areas (N, K, T) and the RLE of each non-empty one."""

    image_ids: list[str]
    areas: np.ndarray
    rles: dict[tuple[int, int, int], str]  # (image index, class index, threshold index) -> RLE


def test_candidates(
    frame: pd.DataFrame, image_ids: list[str], thresholds: np.ndarray, num_classes: int
) -> TestCandidates:
    index = {image_id: n for n, image_id in enumerate(image_ids)}
    unknown = frame.loc[~frame["ImageId"].isin(index), "ImageId"]
    if len(unknown):
        raise PipelineError(f"{TEST_CANDIDATES}: image {unknown.iloc[0]} is not a test image")
    areas = np.zeros((len(image_ids), num_classes, len(thresholds)), np.int64)
    rles = {}
    for image_id, class_id, threshold, area, encoded in frame[
        ["ImageId", "ClassId", "threshold", "area", "EncodedPixels"]
    ].itertuples(index=False):
        try:
            t = threshold_index(thresholds, float(threshold))
        except ValueError:
            raise PipelineError(
                f"{TEST_CANDIDATES}: threshold {threshold} is not in the holdout candidates' grid"
            ) from None
        key = (index[image_id], int(class_id) - 1, t)
        areas[key] = int(area)
        rles[key] = encoded
    return TestCandidates(image_ids, areas, rles)


def report(dice: np.ndarray) -> dict[str, object]:
    """Mean and per-class Dice of an (N, K) table of pair Dice."""
    return {
        "mean_dice": float(dice.mean()) if dice.size else None,
        "per_class": {str(k + 1): float(v) for k, v in enumerate(dice.mean(axis=0))} if dice.size else {},
    }


def report_dict(result: DiceReport) -> dict[str, object]:
    return {"mean_dice": result.mean_dice, "per_class": result.per_class}


def grade(submission: pd.DataFrame, name: str, truth: Path, prepared: Prepared) -> dict[str, object]:
    """The local leaderboard's Dice of a submission built in memory."""
    labels = parse_labels(submission.astype(str), name)
    return report_dict(score_labels(labels, name, truth, prepared.test_images))


@dataclass(frozen=True)
class ModeResult:
    image_threshold: float | None  # the gate's thresholds, where the mode has them
    class_thresholds: list[float] | None
    rules: list[ClassRule]
    holdout_dice: np.ndarray  # (N_holdout, K)
    holdout_gate: Gate
    submission: pd.DataFrame  # in the sample submission's format
    test_gate: Gate


@dataclass(frozen=True)
class GateThresholds:
    """Where the gate's thresholds come from: fixed ones (the threshold stage's, or postprocess.threshold
    for image gating), or tuned on the holdout together with the rules."""

    image: float | None  # None: tune
    per_class: list[float] | None  # None: tune (class gating only)


def run_mode(
    mode: str,
    params: PostprocessParams,
    prepared: Prepared,
    holdout: Candidates,
    holdout_scores: Scores,
    test: TestCandidates,
    test_scores: Scores,
    fixed: GateThresholds,
) -> ModeResult:
    """Gate, search the rules on the holdout under the gate (and the gate's thresholds, unless fixed),
    and build the test submission."""
    k = prepared.num_classes
    image_threshold, class_thresholds = None, None
    if mode == "image" and fixed.image is None:
        image_threshold, _, _ = tune_image_threshold(holdout, params.min_areas_px, holdout_scores.all_missing)
    elif mode == "image":
        image_threshold = fixed.image
    if mode == "class" and fixed.per_class is None:
        assert holdout_scores.presence is not None
        class_thresholds, _, _ = tune_class_thresholds(holdout, params.min_areas_px, holdout_scores.presence)
    elif mode == "class":
        class_thresholds = fixed.per_class
    holdout_gate = gate_for(
        mode, holdout_scores.all_missing, holdout_scores.presence, k, image_threshold or 0.0, class_thresholds
    )
    rules, _ = search_rules(holdout, params.min_areas_px, holdout_gate)
    test_gate = gate_for(
        mode, test_scores.all_missing, test_scores.presence, k, image_threshold or 0.0, class_thresholds
    )
    keep = select_masks(test.areas, holdout.thresholds, rules, test_gate)
    columns = [threshold_index(holdout.thresholds, rule.threshold) for rule in rules]
    predictions = pd.DataFrame(
        [
            [image_id] + [test.rles.get((n, c, columns[c]), "") if keep[n, c] else "" for c in range(k)]
            for n, image_id in enumerate(test.image_ids)
        ],
        columns=["ImageId", *(f"rle_{c}" for c in range(1, k + 1))],
    )
    submission = submission_frame(predictions, prepared.sample_submission(), k)
    return ModeResult(
        image_threshold,
        class_thresholds,
        rules,
        pair_dice(holdout, rules, holdout_gate),
        holdout_gate,
        submission,
        test_gate,
    )


def headline_figures(evaluation: dict[str, Any]) -> dict[str, object]:
    """The headline figures of data/eval.json: the gate's image threshold (where the mode has one), then
    per image set (holdout; test where its truth exists) the Dice of the all-empty prediction, of the
    U-Net alone (gating none) and of the chosen mode, the chosen mode's per class too (suffix 1..K)."""
    figures: dict[str, object] = {}
    if evaluation["threshold"] is not None:
        figures["threshold"] = evaluation["threshold"]
    unet = evaluation["gating_modes"]["none"]
    for images in ("holdout", "test"):
        if images not in evaluation:
            continue
        gated = evaluation[images]["gated"]
        figures[f"{images}_dice_empty"] = evaluation[images]["empty"]["mean_dice"]
        figures[f"{images}_dice_unet"] = unet[images]["mean_dice"]
        figures[f"{images}_dice_gated"] = gated["mean_dice"]
        per_class = sorted(gated["per_class"].items(), key=lambda item: int(item[0]))
        figures.update({f"{images}_dice_gated_{k}": dice for k, dice in per_class})
    return figures


def main() -> None:
    params = load_section(PostprocessParams, "postprocess")
    prepared = load_prepared()
    k = prepared.num_classes
    chosen = read_json(THRESHOLD, "run `dvc repro threshold` first")
    stage_threshold, stage_class_thresholds = stage_thresholds(chosen, k, str(THRESHOLD))
    if params.threshold is not None:  # an explicit number always wins
        fixed = GateThresholds(params.threshold, None if params.tune_thresholds else stage_class_thresholds)
    elif params.tune_thresholds:
        fixed = GateThresholds(None, None)
    else:
        fixed = GateThresholds(stage_threshold, stage_class_thresholds)
    # The classifier's scores before the U-Net's outputs: the cheaper files first.
    train_table = read_scores(
        TRAIN_SCORES, k, "rerun `dvc repro score_train`", ("ImageId", "allMissing", "out_of_fold")
    ).set_index("ImageId")
    test_table = read_scores(TEST_SCORES, k, "rerun `dvc repro classifier`").set_index("ImageId")

    sample = prepared.sample_submission()
    sizes = {row.ImageId: (int(row.height), int(row.width)) for row in prepared.test.itertuples()}
    raw = read_csv(SUBMISSION_RAW)
    validate_submission(raw, sample, sizes, k, str(SUBMISSION_RAW))

    holdout = Candidates.from_frame(read_candidates(HOLDOUT_CANDIDATES))
    holdout_scores = scores_of(train_table, list(holdout.image_ids), k, TRAIN_SCORES)
    test_ids = list(sample.image_ids)
    test_scores = scores_of(test_table, test_ids, k, TEST_SCORES)
    test = test_candidates(read_candidates(TEST_CANDIDATES), test_ids, holdout.thresholds, k)

    has_presence = holdout_scores.presence is not None and test_scores.presence is not None
    modes = supported_modes(has_presence and stage_class_thresholds is not None)
    if params.gating not in modes:
        raise PipelineError(
            f"params: postprocess.gating {params.gating!r} needs a presence probability and a threshold per "
            "class: set classifier.head to multilabel (supported now: " + ", ".join(modes) + ")"
        )
    results = {
        mode: run_mode(
            mode,
            params,
            prepared,
            holdout,
            holdout_scores,
            test,
            test_scores,
            fixed,
        )
        for mode in GATING_MODES
        if mode in modes
    }
    result = results[params.gating]
    validate_submission(result.submission, sample, sizes, k, str(SUBMISSION))
    write_csv(result.submission, SUBMISSION)

    empty = (holdout.truth_area == 0).astype(np.float64)
    truth = prepared.root / "test_truth.csv"  # the synthetic dataset ships test ground truth
    gating_modes: dict[str, object] = {}
    for mode, outcome in results.items():
        entry: dict[str, object] = {
            "holdout": report(outcome.holdout_dice),
            "rules": {str(c + 1): asdict(rule) for c, rule in enumerate(outcome.rules)},
        }
        if outcome.image_threshold is not None:
            entry["threshold"] = outcome.image_threshold
        if outcome.class_thresholds is not None:
            entry["class_thresholds"] = dict(
                zip(map(str, range(1, k + 1)), outcome.class_thresholds, strict=True)
            )
        if truth.is_file():
            entry["test"] = grade(outcome.submission, f"{mode}-gated submission", truth, prepared)
        gating_modes[mode] = entry
    oof = train_table.loc[list(holdout.image_ids), "out_of_fold"].astype(bool)
    evaluation: dict[str, object] = {
        "gating": params.gating,
        "thresholds_from": "params"
        if params.threshold is not None
        else "tuned"
        if params.tune_thresholds
        else "stage",
        "threshold": result.image_threshold,
        "class_thresholds": gating_modes[params.gating].get("class_thresholds"),
        "stage_threshold": stage_threshold,
        "rules": {str(c + 1): asdict(rule) for c, rule in enumerate(result.rules)},
        "test_images": len(test_ids),
        "test_pairs_wiped": int((~result.test_gate.keep).sum()),
        "holdout": {
            "images": len(holdout.image_ids),
            "pairs_wiped": int((~result.holdout_gate.keep).sum()),
            "scores_out_of_fold": float(oof.mean()) if len(oof) else None,
            "empty": report(empty.reshape(len(holdout.image_ids), k)),
            "segmentation": gating_modes["none"]["holdout"],
            "gated": gating_modes[params.gating]["holdout"],
        },
        "gating_modes": gating_modes,
    }
    if truth.is_file():
        no_predictions = pd.DataFrame(columns=["ImageId", *(f"rle_{c}" for c in range(1, k + 1))])
        nothing = submission_frame(no_predictions, sample, k)
        evaluation["test"] = {
            "empty": grade(nothing, "all-empty submission", truth, prepared),
            "segmentation": report_dict(score_files(SUBMISSION_RAW, truth, prepared.test_images)),
            "gated": gating_modes[params.gating]["test"],
        }
    write_json(evaluation, EVAL)
    write_headline(headline_figures(evaluation), HEADLINE_FILE)
    # What inference needs to reproduce the submission (the bundle, stages.predict): plain JSON.
    rules = {
        "gating": params.gating,
        "image_threshold": result.image_threshold,
        "class_thresholds": None if result.class_thresholds is None else list(result.class_thresholds),
        "rules": {str(c + 1): asdict(rule) for c, rule in enumerate(result.rules)},
    }
    write_json(rules, RULES)
    holdout_report = evaluation["holdout"]
    line = (
        f"postprocess: {params.gating} gating wiped {evaluation['test_pairs_wiped']} of {len(test_ids) * k} "
        f"test masks -> {SUBMISSION}; holdout Dice empty {holdout_report['empty']['mean_dice']:.4f}, "
        f"segmentation {holdout_report['segmentation']['mean_dice']:.4f}, "
        f"gated {holdout_report['gated']['mean_dice']:.4f}"
    )
    if "test" in evaluation:
        line += f"; test Dice gated {evaluation['test']['gated']['mean_dice']:.4f}"
    print(line)
    if len(oof) and not oof.all():
        print(
            f"postprocess: warning: {int((~oof).sum())} holdout images have in-fold classifier scores "
            "(train more classifier folds than segment folds for honest gated holdout figures)"
        )


if __name__ == "__main__":
    cli.run(main)
