"""The competition metric: mean Dice over (image, class) pairs, where an empty prediction of an empty
truth scores 1. Works on masks or directly on RLE runs (no image size needed for the latter)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.core import rle
from stages.core.errors import PipelineError, RLEError


def dice_from_counts(pred_area: np.ndarray, truth_area: np.ndarray, intersection: np.ndarray) -> np.ndarray:
    """Dice per pair from pixel counts; 1 where both masks are empty."""
    pred_area, truth_area = np.asarray(pred_area, dtype=np.float64), np.asarray(truth_area, dtype=np.float64)
    total = pred_area + truth_area
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total == 0, 1.0, 2.0 * np.asarray(intersection, dtype=np.float64) / total)


def mask_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice per mask over the last two axes of equally shaped 0/1 or bool arrays: (N, K, H, W) -> (N, K)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    pred, truth = pred.astype(bool), truth.astype(bool)
    axes = (-2, -1)
    return dice_from_counts(pred.sum(axes), truth.sum(axes), (pred & truth).sum(axes))


def _union_area(starts: np.ndarray, ends: np.ndarray) -> int:
    """Pixels covered by half-open intervals [start, end) that may overlap each other."""
    if starts.size == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    # Each interval adds only what reaches past every earlier interval's end.
    reach = np.maximum.accumulate(ends)
    previous = np.concatenate([[starts[0]], reach[:-1]])
    return int(np.clip(ends - np.maximum(starts, previous), 0, None).sum())


def rle_dice(pred: object, truth: object, n_pixels: int) -> float:
    """Dice of two RLE strings for an image of n_pixels pixels (runs are validated against that size)."""
    pred_starts, pred_lengths = rle.parse_runs(pred, n_pixels)
    truth_starts, truth_lengths = rle.parse_runs(truth, n_pixels)
    pred_area, truth_area = int(pred_lengths.sum()), int(truth_lengths.sum())
    union = _union_area(
        np.concatenate([pred_starts, truth_starts]),
        np.concatenate([pred_starts + pred_lengths, truth_starts + truth_lengths]),
    )
    # Each mask's runs are disjoint, so |A & B| = |A| + |B| - |A | B|.
    return float(dice_from_counts(pred_area, truth_area, pred_area + truth_area - union))


@dataclass(frozen=True)
class DiceReport:
    mean_dice: float
    per_class: dict[str, float]
    n_images: int

    def as_dict(self) -> dict[str, object]:
        return {"mean_dice": self.mean_dice, "per_class": self.per_class, "n_images": self.n_images}


def summarize(pairs: pd.DataFrame) -> DiceReport:
    """Mean Dice overall and per class from a table of ImageId, ClassId, dice (one row per pair)."""
    per_class = pairs.groupby("ClassId")["dice"].mean()
    return DiceReport(
        mean_dice=float(pairs["dice"].mean()),
        per_class={str(int(class_id)): float(value) for class_id, value in per_class.items()},
        n_images=int(pairs["ImageId"].nunique()),
    )


def mask_report(image_ids: list[str], pred: np.ndarray, truth: np.ndarray) -> DiceReport:
    """DiceReport of (N, K, H, W) predicted and true masks for the N given images."""
    dice = mask_dice(pred, truth)
    n_images, n_classes = dice.shape
    return summarize(
        pd.DataFrame(
            {
                "ImageId": np.repeat(image_ids, n_classes),
                "ClassId": np.tile(np.arange(1, n_classes + 1), n_images),
                "dice": dice.ravel(),
            }
        )
    )


def grade(
    submission: pd.DataFrame,
    truth: pd.DataFrame,
    num_classes: int,
    n_pixels: dict[str, int],
    submission_name: str = "submission",
    truth_name: str = "truth",
    images: list[str] | None = None,
) -> pd.DataFrame:
    """Dice of every (image, class) pair of the truth; a pair the submission omits counts as empty.

    Both tables are long labels (ImageId, ClassId, EncodedPixels, line) as from dataset.parse_labels.
    A submission pair outside the graded images x classes 1..num_classes is an error. The graded images
    are `images` when given (a defect-rows-only truth does not list its clean images), else the truth's.
    """
    if images is None:
        images = list(dict.fromkeys(truth["ImageId"]))
    grid = pd.MultiIndex.from_product([images, range(1, num_classes + 1)], names=["ImageId", "ClassId"])
    keyed = submission.set_index(["ImageId", "ClassId"])
    extra = ~keyed.index.isin(grid)
    if extra.any():
        row = submission[extra].iloc[0]
        raise PipelineError(
            f"{submission_name}: line {row['line']}: image {row['ImageId']} class {row['ClassId']} "
            f"is not in the truth ({truth_name})"
        )
    pred = keyed["EncodedPixels"].reindex(grid).fillna("")
    true = truth.set_index(["ImageId", "ClassId"])["EncodedPixels"].reindex(grid).fillna("")
    pred_lines = keyed["line"].reindex(grid)
    true_lines = truth.set_index(["ImageId", "ClassId"])["line"].reindex(grid)
    scores = np.empty(len(grid))
    for i, ((image_id, _), p, t) in enumerate(zip(grid, pred.to_numpy(), true.to_numpy(), strict=True)):
        try:
            rle.parse_runs(t, n_pixels[image_id])
        except RLEError as error:
            raise PipelineError(f"{truth_name}: line {true_lines.iloc[i]}: bad RLE: {error}") from None
        try:
            scores[i] = rle_dice(p, t, n_pixels[image_id])
        except RLEError as error:
            raise PipelineError(
                f"{submission_name}: line {pred_lines.iloc[i]:.0f}: bad RLE: {error}"
            ) from None
    return pd.DataFrame(
        {"ImageId": grid.get_level_values(0), "ClassId": grid.get_level_values(1), "dice": scores}
    )
