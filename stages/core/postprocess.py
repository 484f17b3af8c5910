"""Mask post-processing, pure numpy: per-class rules (probability threshold, minimum area), candidate
statistics, the rule search, and gating by the classifier.

A predicted mask of class k is `probability >= threshold[k]` at the image's original size, wiped when its
area is below `min_area_px[k]`. Segment computes, for every threshold of its grid, each mask's area (a
*candidate*) and, on holdout images, its intersection with the truth; from those counts the Dice of any
rule follows without the pixels, so the search can run again under any gating in postprocess.

Gating decides, per (image, class), whether the classifier lets a mask through, and with which weight:
a kept mask survives min area a when `weight * area >= a`. The weight is 1 except for soft gating, where it
is the classifier's presence probability (a mask the classifier doubts must be larger to be kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Shared with the Kaggle bundle's predict.py, so that both gate alike.
from stages.core.errors import PipelineError
from stages.core.inference_ops import GATING_MODES, Gate, gate_for, kept_masks, submitted_masks
from stages.core.metric import dice_from_counts

# The min area of a class the search switches off: no mask has that many pixels (an image has at most
# 2**31 - 1 here), so the class is never submitted. A plain int so that rules.json and predict.py need
# nothing special.
OFF_MIN_AREA_PX = 2**31 - 1


@dataclass(frozen=True)
class ClassRule:
    threshold: float
    min_area_px: int

    @property
    def off(self) -> bool:
        """The class is never submitted: every rule of the grid did worse than no mask at all."""
        return self.min_area_px >= OFF_MIN_AREA_PX

    def describe(self) -> str:
        return "off" if self.off else f"p>={self.threshold:g} area>={self.min_area_px}"


def apply_rules(probabilities: np.ndarray, rules: Sequence[ClassRule], area_scale: float = 1.0) -> np.ndarray:
    """(K, H, W) probabilities -> (K, H, W) uint8 masks. `area_scale` converts a pixel of these
    probabilities into original-image pixels (1 when they are at the original size)."""
    num_classes = probabilities.shape[0]
    masks = submitted_masks(
        probabilities,
        [rule.threshold for rule in rules],
        [rule.min_area_px for rule in rules],
        np.ones(num_classes, bool),
        np.full(num_classes, area_scale, dtype=np.float64),
    )
    result = np.zeros(probabilities.shape, dtype=np.uint8)
    for k, mask in enumerate(masks):
        if mask is not None:
            result[k] = mask
    return result


def candidate_counts(
    probabilities: np.ndarray, thresholds: Sequence[float], truth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Areas (K, T) of the masks `probabilities >= t` for each class and threshold, and with `truth`
    ((K, H, W) 0/1 masks of the same size) their intersections (K, T) with it."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    num_classes = probabilities.shape[0]
    areas = np.zeros((num_classes, len(thresholds)), dtype=np.int64)
    intersections = None if truth is None else np.zeros_like(areas)
    for k in range(num_classes):
        flat = probabilities[k].ravel()
        true = None if truth is None else truth[k].ravel().astype(bool)
        for t, threshold in enumerate(thresholds):
            mask = flat >= threshold
            areas[k, t] = np.count_nonzero(mask)
            if intersections is not None and true is not None:
                intersections[k, t] = np.count_nonzero(mask & true)
    return areas, intersections


@dataclass(frozen=True)
class Candidates:
    """Candidate counts of N holdout images, K classes and T probability thresholds."""

    image_ids: tuple[str, ...]
    thresholds: np.ndarray  # (T,), ascending
    pred_area: np.ndarray  # (N, K, T)
    intersection: np.ndarray  # (N, K, T)
    truth_area: np.ndarray  # (N, K)

    @property
    def num_classes(self) -> int:
        return self.truth_area.shape[1]

    def to_frame(self) -> pd.DataFrame:
        """One row per (image, class, threshold): ImageId, ClassId, threshold, pred_area, intersection,
        truth_area."""
        n, k, t = self.pred_area.shape
        return pd.DataFrame(
            {
                "ImageId": np.repeat(np.asarray(self.image_ids, dtype=object), k * t),
                "ClassId": np.tile(np.repeat(np.arange(1, k + 1), t), n),
                "threshold": np.tile(self.thresholds, n * k),
                "pred_area": self.pred_area.ravel(),
                "intersection": self.intersection.ravel(),
                "truth_area": np.repeat(self.truth_area.ravel(), t),
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Candidates:
        """The inverse of to_frame(); rows may come in any order, but every (image, class, threshold)
        must be there exactly once."""
        thresholds = np.sort(frame["threshold"].astype(np.float64).unique())
        image_ids = tuple(dict.fromkeys(frame["ImageId"]))
        num_classes = int(frame["ClassId"].max()) if len(frame) else 0
        shape = (len(image_ids), num_classes, len(thresholds))
        if len(frame) != int(np.prod(shape)):
            raise ValueError(f"expected {int(np.prod(shape))} candidate rows (images x classes x thresholds)")
        image_index = {image_id: i for i, image_id in enumerate(image_ids)}
        n = frame["ImageId"].map(image_index).to_numpy()
        k = frame["ClassId"].astype(int).to_numpy() - 1
        t = np.searchsorted(thresholds, frame["threshold"].astype(np.float64).to_numpy())
        pred_area, intersection = np.full(shape, -1, np.int64), np.full(shape, -1, np.int64)
        pred_area[n, k, t] = frame["pred_area"].to_numpy()
        intersection[n, k, t] = frame["intersection"].to_numpy()
        if (pred_area < 0).any():
            raise ValueError("duplicate candidate rows: some (image, class, threshold) is missing")
        truth_area = np.zeros(shape[:2], np.int64)
        truth_area[n, k] = frame["truth_area"].to_numpy()
        return cls(image_ids, thresholds, pred_area, intersection, truth_area)


def supported_modes(has_class_probabilities: bool) -> tuple[str, ...]:
    """Gating modes a classifier supports: per-class gating needs a presence probability per class."""
    return GATING_MODES if has_class_probabilities else ("none", "image", "soft")


def rule_scores(candidates: Candidates, min_areas_px: Sequence[int], gate: Gate | None = None) -> np.ndarray:
    """(K, T, A) mean Dice over the images of every rule of the grid (thresholds x sorted min areas), with
    the masks the gate wipes counted as empty predictions."""
    n, num_classes, n_thresholds = candidates.pred_area.shape
    gate = gate or Gate.open(n, num_classes)
    min_areas = np.sort(np.asarray(min_areas_px, dtype=np.float64))
    scores = np.ones((num_classes, n_thresholds, len(min_areas)))
    if n == 0:
        return scores
    for k in range(num_classes):
        area = candidates.pred_area[:, k, :].astype(np.float64)  # (N, T)
        inter = candidates.intersection[:, k, :].astype(np.float64)
        keep, weight = gate.keep[None, :, k, None], gate.weight[None, :, k, None]
        kept = kept_masks(area[None], keep, weight, min_areas[:, None, None])  # (A, N, T)
        truth = candidates.truth_area[None, :, k, None]
        dice = dice_from_counts(kept * area[None], truth, kept * inter[None])
        scores[k] = dice.mean(axis=1).T
    return scores


def search_rules(
    candidates: Candidates, min_areas_px: Sequence[int], gate: Gate | None = None
) -> tuple[list[ClassRule], np.ndarray]:
    """Per class, the (threshold, min area) of the grid maximising the mean Dice over the images, with
    the masks the gate wipes counted as empty predictions. Ties: lowest threshold, then lowest min area.
    A class whose best rule still does worse than submitting none of its masks is switched off
    (min area OFF_MIN_AREA_PX): a grid of min areas cannot wipe large false positives, and a class the
    model cannot find must not cost more than the empty prediction. Returns the rules and each class's
    best mean Dice."""
    scores = rule_scores(candidates, min_areas_px, gate)
    min_areas = np.sort(np.asarray(min_areas_px, dtype=np.float64))
    # Dice of submitting nothing: 1 on the images without that class, 0 on the others.
    off_dice = (candidates.truth_area == 0).mean(axis=0) if len(candidates.image_ids) else None
    rules, best_dice = [], []
    for k in range(scores.shape[0]):
        t, a = np.unravel_index(np.argmax(scores[k]), scores[k].shape)  # first maximum: lowest t, then a
        if off_dice is not None and off_dice[k] > scores[k, t, a] + 1e-12:
            rules.append(ClassRule(float(candidates.thresholds[0]), OFF_MIN_AREA_PX))
            best_dice.append(off_dice[k])
            continue
        rules.append(ClassRule(float(candidates.thresholds[t]), int(min_areas[a])))
        best_dice.append(scores[k, t, a])
    return rules, np.asarray(best_dice)


def gate_threshold_candidates(scores: np.ndarray, limit: int = 256) -> np.ndarray:
    """Thresholds worth trying on these scores: 0, the midpoints between consecutive distinct scores and
    one just above the highest (each realises a different cut); at most `limit` of them, spread evenly."""
    values = np.unique(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        return np.array([0.0])
    cuts = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]])
    if cuts.size > limit:
        cuts = cuts[np.unique(np.linspace(0, cuts.size - 1, limit).round().astype(int))]
    return cuts


def _plateau_middle(values: np.ndarray) -> int:
    """Index of the middle of the first run of maximal values: a margin on both sides of the chosen cut."""
    best = np.flatnonzero(values >= values.max() - 1e-12)
    breaks = np.flatnonzero(np.diff(best) > 1)
    run = best[: breaks[0] + 1] if breaks.size else best
    return int(run[len(run) // 2])


def tune_image_threshold(
    candidates: Candidates, min_areas_px: Sequence[int], all_missing: np.ndarray
) -> tuple[float, list[ClassRule], np.ndarray]:
    """The image-gating threshold searched together with the rules: for each candidate threshold the
    rules under that gate, keeping the threshold whose rules give the best mean Dice (the middle of the
    best plateau). Unlike a threshold chosen on gating alone, it weighs the defective images a threshold
    wipes against the false positives of the clean images it keeps. Returns it, the rules and each
    class's Dice."""
    num_classes = candidates.num_classes
    thresholds = gate_threshold_candidates(all_missing)
    results = [
        search_rules(candidates, min_areas_px, gate_for("image", all_missing, None, num_classes, threshold))
        for threshold in thresholds
    ]
    best = _plateau_middle(np.array([dice.mean() for _, dice in results]))
    return float(thresholds[best]), *results[best]


def tune_class_thresholds(
    candidates: Candidates, min_areas_px: Sequence[int], presence: np.ndarray
) -> tuple[list[float], list[ClassRule], np.ndarray]:
    """tune_image_threshold() for per-class gating: each class's presence threshold searched together with
    that class's rule (the classes do not interact)."""
    n, num_classes = presence.shape
    thresholds, rules, dice = [], [], []
    for k in range(num_classes):
        cuts = gate_threshold_candidates(presence[:, k])
        scores = []
        for cut in cuts:
            keep = np.ones((n, num_classes), bool)
            keep[:, k] = presence[:, k] >= cut
            class_rules, class_dice = search_rules(
                candidates, min_areas_px, Gate(keep, np.ones((n, num_classes)))
            )
            scores.append((class_rules[k], class_dice[k]))
        best = _plateau_middle(np.array([value for _, value in scores]))
        thresholds.append(float(cuts[best]))
        rules.append(scores[best][0])
        dice.append(scores[best][1])
    return thresholds, rules, np.asarray(dice)


def threshold_index(thresholds: np.ndarray, threshold: float) -> int:
    """Position of a rule's threshold in the candidate grid (the grid's values, as written to CSV)."""
    index = int(np.argmin(np.abs(np.asarray(thresholds) - threshold)))
    if not np.isclose(thresholds[index], threshold, rtol=0, atol=1e-9):
        raise ValueError(f"threshold {threshold} is not in the candidate grid {list(thresholds)}")
    return index


def pair_dice(candidates: Candidates, rules: Sequence[ClassRule], gate: Gate | None = None) -> np.ndarray:
    """(N, K) Dice of every (image, class) pair under the rules and the gate."""
    n, num_classes, _ = candidates.pred_area.shape
    gate = gate or Gate.open(n, num_classes)
    columns = [threshold_index(candidates.thresholds, rule.threshold) for rule in rules]
    area = candidates.pred_area[:, np.arange(num_classes), columns].astype(np.float64)  # (N, K)
    inter = candidates.intersection[:, np.arange(num_classes), columns].astype(np.float64)
    min_area = np.asarray([rule.min_area_px for rule in rules], dtype=np.float64)[None, :]
    kept = kept_masks(area, gate.keep, gate.weight, min_area)
    return dice_from_counts(kept * area, candidates.truth_area, kept * inter)


def select_masks(
    areas: np.ndarray, thresholds: np.ndarray, rules: Sequence[ClassRule], gate: Gate
) -> np.ndarray:
    """(N, K) bool: which candidate masks a submission keeps. `areas` (N, K, T) are the candidates' areas
    of N images; the kept mask of pair (n, k) is its candidate at rules[k].threshold."""
    num_classes = areas.shape[1]
    columns = [threshold_index(thresholds, rule.threshold) for rule in rules]
    area = areas[:, np.arange(num_classes), columns].astype(np.float64)
    min_area = np.asarray([rule.min_area_px for rule in rules], dtype=np.float64)[None, :]
    return kept_masks(area, gate.keep, gate.weight, min_area)


def gate(all_missing: np.ndarray, threshold: float) -> np.ndarray:
    """True for images whose masks are wiped by image gating: allMissing at or above the threshold."""
    return np.asarray(all_missing, dtype=np.float64) >= threshold


def _unit_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def stage_thresholds(chosen: object, num_classes: int, source: str) -> tuple[float, list[float] | None]:
    """The threshold stage's choice (data/threshold.json): the allMissing threshold and, from a multilabel
    classifier, one presence threshold per class; each must be a number in [0, 1]. Errors name `source`
    and the key."""
    remake = "rerun `dvc repro threshold`"
    if not isinstance(chosen, dict) or "threshold" not in chosen:
        raise PipelineError(f"{source}: no threshold; {remake}")
    if not _unit_number(chosen["threshold"]):
        raise PipelineError(
            f"{source}: threshold {chosen['threshold']!r} is not a number in [0, 1]; {remake}"
        )
    per_class = chosen.get("per_class")
    if per_class is None:
        return float(chosen["threshold"]), None
    class_thresholds = []
    for k in range(1, num_classes + 1):
        entry = per_class.get(str(k)) if isinstance(per_class, dict) else None
        value = entry.get("threshold") if isinstance(entry, dict) else None
        if not _unit_number(value):
            raise PipelineError(
                f"{source}: per_class.{k}.threshold {value!r} is not a number in [0, 1]; {remake}"
            )
        class_thresholds.append(float(value))
    return float(chosen["threshold"]), class_thresholds
