"""Stage threshold (notebook 3): pick the allMissing gating threshold on out-of-fold scores.

Objectives: dice (the competition Dice that gating alone gives), f1 (of detecting defective images),
recall_at_precision (highest recall of defective images with precision >= min_precision), youden
(TPR - FPR). With a multilabel classifier it also picks one presence threshold per class (class k is
wiped where p_k < its threshold), maximising the Dice that gating that class alone gives on its (image,
class) pairs. Outputs data/threshold.json (the detail; per-class thresholds under `per_class`), its headline
figures data/metrics/threshold.json (the DVC metrics) and the plots in data/plots/threshold/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from stages.core import cli
from stages.core.errors import PipelineError
from stages.core.headline import write_headline
from stages.core.io import atomic_path, write_json
from stages.core.params import load_section, require
from stages.core.prepared import load_prepared
from stages.core.scores import read_scores
from stages.core.thresholds import (
    candidate_thresholds,
    choose_threshold,
    class_report,
    class_threshold_report,
    confusion,
    curves,
    gating_dice,
    objective_curve,
)

SCORES = Path("data/train_missing_count.csv")
OUTPUT = Path("data/threshold.json")
HEADLINE_FILE = Path("data/metrics/threshold.json")
HEADLINE = ("threshold", "auc", "gating_dice", "all_empty_dice")
PLOTS_DIR = Path("data/plots/threshold")


@dataclass(frozen=True)
class ThresholdParams:
    objective: Literal["dice", "f1", "recall_at_precision", "youden"] = "dice"
    min_precision: float = 0.9  # for recall_at_precision
    histogram_bins: int = 20

    def validate(self, section: str) -> None:
        require(
            0 < self.min_precision <= 1, f"{section}.min_precision", "must be in (0, 1]", self.min_precision
        )
        require(
            self.histogram_bins >= 2, f"{section}.histogram_bins", "must be at least 2", self.histogram_bins
        )


def histogram(all_missing: np.ndarray, has_defect: np.ndarray, bins: int) -> pd.DataFrame:
    edges = np.linspace(0.0, 1.0, bins + 1)
    defective, _ = np.histogram(all_missing[has_defect], bins=edges)
    clean, _ = np.histogram(all_missing[~has_defect], bins=edges)
    return pd.DataFrame({"allMissing": (edges[:-1] + edges[1:]) / 2, "defective": defective, "clean": clean})


def main() -> None:
    params = load_section(ThresholdParams, "threshold")
    prepared = load_prepared()
    required = ("ImageId", "allMissing", "has_defect", "out_of_fold")
    scores = read_scores(SCORES, prepared.num_classes, "rerun `dvc repro score_train`", required)
    unknown = np.flatnonzero(~scores["ImageId"].isin(prepared.train["ImageId"]).to_numpy())
    if unknown.size:
        raise PipelineError(
            f"{SCORES}: line {unknown[0] + 2}: image {scores['ImageId'].iloc[unknown[0]]} is not a prepared "
            "train image; rerun `dvc repro score_train`"
        )
    defect_counts = (
        prepared.train.set_index("ImageId")[[f"rle_{c}" for c in range(1, prepared.num_classes + 1)]]
        .ne("")
        .sum(axis=1)
    )
    oof = scores[scores["out_of_fold"]]
    if oof.empty:
        raise PipelineError(f"{SCORES}: no out-of-fold rows to choose a threshold on")
    all_missing = oof["allMissing"].to_numpy(np.float64)
    has_defect = oof["has_defect"].to_numpy()
    defect_classes = oof["ImageId"].map(defect_counts).to_numpy()

    thresholds = candidate_thresholds(all_missing)
    values = objective_curve(
        params.objective,
        all_missing,
        has_defect,
        defect_classes,
        prepared.num_classes,
        thresholds,
        params.min_precision,
    )
    if not np.isfinite(values).any():
        raise PipelineError(
            f"params: threshold.min_precision {params.min_precision}: no threshold reaches that precision"
        )
    best = choose_threshold(params.objective, thresholds, values)
    counts = confusion(all_missing, has_defect, thresholds)
    dice = gating_dice(all_missing, defect_classes, prepared.num_classes, thresholds)
    roc = curves(all_missing, has_defect)
    threshold = float(thresholds[best])
    result = {
        "threshold": threshold,
        "objective": params.objective,
        "objective_value": float(values[best]),
        "gating_dice": float(dice[best]),  # gating alone, perfect segmentation of kept images
        "all_empty_dice": float(dice[0]),  # threshold 0 wipes every image
        "auc": roc["auc"],
        "confusion": {name: int(getattr(counts, name)[best]) for name in ("tp", "fn", "tn", "fp")},
        "classes": class_report(counts, best),
        "n_out_of_fold": len(oof),
    }
    presence_columns = [f"p_{k}" for k in range(1, prepared.num_classes + 1)]
    if set(presence_columns) <= set(oof.columns):  # a multilabel classifier: one threshold per class
        truth = prepared.train.set_index("ImageId").loc[oof["ImageId"]]
        result["per_class"] = {
            str(k): class_threshold_report(
                oof[f"p_{k}"].to_numpy(np.float64), truth[f"rle_{k}"].ne("").to_numpy()
            )
            for k in range(1, prepared.num_classes + 1)
        }
    write_json(result, OUTPUT)
    write_headline({name: result[name] for name in HEADLINE}, HEADLINE_FILE)

    with atomic_path(PLOTS_DIR, directory=True) as folder:
        pd.DataFrame({"threshold": thresholds, "objective": values}).replace(-np.inf, np.nan).to_csv(
            folder / "objective.csv", index=False
        )
        histogram(all_missing, has_defect, params.histogram_bins).to_csv(
            folder / "histogram.csv", index=False
        )
        # With a single class among the out-of-fold images the curves are undefined: header-only files.
        fpr, tpr = roc["roc"] if roc["roc"] is not None else ([], [])
        pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(folder / "roc.csv", index=False)
        precision, recall = roc["pr"] if roc["pr"] is not None else ([], [])
        pd.DataFrame({"recall": recall, "precision": precision}).to_csv(
            folder / "precision_recall.csv", index=False
        )
    report = result["classes"]["defect"]
    print(
        f"threshold: {params.objective} -> allMissing >= {threshold:.4f} is wiped; defect precision "
        f"{report['precision']:.3f} recall {report['recall']:.3f}; gating Dice {result['gating_dice']:.4f} "
        f"(all empty {result['all_empty_dice']:.4f}); AUC {roc['auc']:.4f} on {len(oof)} out-of-fold images"
    )
    for k, chosen in result.get("per_class", {}).items():
        print(
            f"threshold: class {k}: p_{k} < {chosen['threshold']:.4f} is wiped; keeps "
            f"{chosen['present_kept']} of {chosen['present']} images with the class, wipes "
            f"{chosen['absent_wiped']} without it"
        )


if __name__ == "__main__":
    cli.run(main)
