"""Mask post-processing: per-class probability threshold and minimum area, its grid search, and gating.

Pure numpy. A predicted mask of class k is `probability >= threshold[k]`, wiped entirely when its area
(in original-image pixels) is below `min_area_px[k]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.core.metric import dice_from_counts


@dataclass(frozen=True)
class ClassRule:
    threshold: float
    min_area_px: int


def apply_rules(probabilities: np.ndarray, rules: Sequence[ClassRule], area_scale: float = 1.0) -> np.ndarray:
    """(K, H, W) probabilities -> (K, H, W) uint8 masks. `area_scale` converts a pixel of these
    probabilities into original-image pixels (1 when they are at the original size)."""
    masks = np.zeros(probabilities.shape, dtype=np.uint8)
    for k, rule in enumerate(rules):
        # Compared in float64, as GridSearch does: a Python float threshold would be rounded to the
        # probabilities' float32 and count pixels the search did not (e.g. float32(0.7) >= 0.7).
        mask = probabilities[k] >= np.float64(rule.threshold)
        area = int(mask.sum())
        # A non-empty mask survives min area 0 whatever the scale (an empty one has nothing to keep).
        if area > 0 and area * area_scale >= rule.min_area_px:
            masks[k] = mask
    return masks


class GridSearch:
    """Streaming search of per-class (threshold, min_area_px) maximising mean Dice over images.

    `update` takes batches of probabilities and true masks at the same (model) size and accumulates, for
    every grid point, the sum of per-image Dice; memory does not grow with the number of images.
    """

    def __init__(self, thresholds: Sequence[float], min_areas_px: Sequence[int], num_classes: int) -> None:
        self.thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))  # ties go to the lowest
        self.min_areas = np.sort(np.asarray(min_areas_px, dtype=np.float64))
        self.dice_sum = np.zeros((num_classes, len(self.thresholds), len(self.min_areas)))
        self.count = 0

    def update(self, probabilities: np.ndarray, truth: np.ndarray, area_scale: float = 1.0) -> None:
        """probabilities, truth: (N, K, h, w); area_scale: original pixels per pixel at this size."""
        truth = truth.astype(bool)
        truth_area = truth.sum(axis=(2, 3)).astype(np.float64)  # (N, K)
        for t, threshold in enumerate(self.thresholds):
            predicted = probabilities >= threshold
            pred_area = predicted.sum(axis=(2, 3)).astype(np.float64)
            intersection = (predicted & truth).sum(axis=(2, 3)).astype(np.float64)
            # keep[a, n, k]: the mask survives min area a (as in apply_rules; an empty mask has no pixels
            # to keep, so keeping it or not changes nothing).
            keep = (pred_area > 0)[None] & ((pred_area * area_scale)[None] >= self.min_areas[:, None, None])
            dice = dice_from_counts(keep * pred_area[None], truth_area[None], keep * intersection[None])
            self.dice_sum[:, t, :] += dice.sum(axis=1).T  # (A, N, K) -> (K, A)
        self.count += len(probabilities)

    def mean_dice(self) -> np.ndarray:
        """(K, T, A) mean Dice per class and grid point."""
        return self.dice_sum / max(self.count, 1)

    def best(self) -> tuple[list[ClassRule], np.ndarray]:
        """The best rule per class (ties: lowest threshold, then lowest min area) and its mean Dice."""
        scores = self.mean_dice()
        rules, best_dice = [], []
        for k in range(scores.shape[0]):
            t, a = np.unravel_index(np.argmax(scores[k]), scores[k].shape)
            rules.append(ClassRule(float(self.thresholds[t]), int(self.min_areas[a])))
            best_dice.append(scores[k, t, a])
        return rules, np.asarray(best_dice)


def gate(all_missing: np.ndarray, threshold: float) -> np.ndarray:
    """True for images whose masks are wiped: allMissing at or above the threshold."""
    return np.asarray(all_missing, dtype=np.float64) >= threshold
