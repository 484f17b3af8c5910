"""Choosing the allMissing gating threshold: pure functions on score tables.

Gating rule: an image whose allMissing >= threshold is called clean and its masks are wiped. Positive
class here = defective image (the one gating must not wipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

OBJECTIVES = ("dice", "f1", "recall_at_precision", "youden")


def candidate_thresholds(all_missing: np.ndarray) -> np.ndarray:
    """0, the midpoints between consecutive distinct scores, and a value just above the highest score.

    Midpoints rather than the scores themselves keep a margin on both sides of the chosen cut.
    """
    scores = np.unique(all_missing)
    if scores.size == 0:
        return np.array([0.0])
    return np.unique(
        np.concatenate([[0.0], (scores[:-1] + scores[1:]) / 2, [np.nextafter(scores[-1], np.inf)]])
    )


@dataclass(frozen=True)
class Confusion:
    """Counts per candidate threshold (arrays aligned with the thresholds)."""

    thresholds: np.ndarray
    tp: np.ndarray  # defective, kept (allMissing < threshold)
    fn: np.ndarray  # defective, wiped
    tn: np.ndarray  # clean, wiped
    fp: np.ndarray  # clean, kept

    @property
    def precision(self) -> np.ndarray:
        kept = self.tp + self.fp
        return np.divide(self.tp, kept, out=np.ones(len(kept)), where=kept > 0)

    @property
    def recall(self) -> np.ndarray:
        positives = self.tp + self.fn
        return np.divide(self.tp, positives, out=np.ones(len(positives)), where=positives > 0)

    @property
    def specificity(self) -> np.ndarray:
        negatives = self.tn + self.fp
        return np.divide(self.tn, negatives, out=np.ones(len(negatives)), where=negatives > 0)


def confusion(all_missing: np.ndarray, has_defect: np.ndarray, thresholds: np.ndarray) -> Confusion:
    order = np.argsort(all_missing, kind="stable")
    scores, defective = all_missing[order], has_defect[order].astype(bool)
    # Images with score >= t are wiped: those at sorted positions [kept, n).
    kept = np.searchsorted(scores, thresholds, side="left")
    defective_before = np.concatenate([[0], np.cumsum(defective)])
    clean_before = np.arange(len(scores) + 1) - defective_before
    tp = defective_before[kept]
    fp = clean_before[kept]
    return Confusion(thresholds, tp, defective_before[-1] - tp, clean_before[-1] - fp, fp)


def gating_dice(
    all_missing: np.ndarray, defect_classes: np.ndarray, num_classes: int, thresholds: np.ndarray
) -> np.ndarray:
    """Competition Dice that gating alone gives at each threshold.

    A wiped image scores 1 on its empty pairs and 0 on its defect pairs; a kept image is counted as
    perfectly segmented (1 on every pair). `defect_classes` is the number of defect classes per image.
    """
    order = np.argsort(all_missing, kind="stable")
    scores, lost = all_missing[order], defect_classes[order].astype(np.float64)
    kept = np.searchsorted(scores, thresholds, side="left")
    lost_after = lost.sum() - np.concatenate([[0.0], np.cumsum(lost)])[kept]
    return 1.0 - lost_after / (len(scores) * num_classes)


def objective_curve(
    objective: str,
    all_missing: np.ndarray,
    has_defect: np.ndarray,
    defect_classes: np.ndarray,
    num_classes: int,
    thresholds: np.ndarray,
    min_precision: float = 0.9,
) -> np.ndarray:
    """The objective's value at each threshold (higher is better; -inf where not admissible)."""
    if objective == "dice":
        return gating_dice(all_missing, defect_classes, num_classes, thresholds)
    counts = confusion(all_missing, has_defect, thresholds)
    precision, recall = counts.precision, counts.recall
    if objective == "f1":
        total = precision + recall
        return np.divide(2 * precision * recall, total, out=np.zeros(len(total)), where=total > 0)
    if objective == "recall_at_precision":
        # Wiping every image keeps nothing: its precision (1 by convention) must not satisfy the floor.
        admissible = (precision >= min_precision) & (counts.tp + counts.fp > 0)
        return np.where(admissible, recall, -np.inf)
    if objective == "youden":
        return recall + counts.specificity - 1.0
    raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")


def best_threshold(thresholds: np.ndarray, values: np.ndarray, prefer: str = "middle") -> int:
    """Index of the best threshold on the first plateau of maximal values: its middle (a margin on both
    sides), or with prefer="lowest" its lowest threshold (the one that wipes the most images)."""
    if not np.isfinite(values).any():
        raise ValueError("no threshold satisfies the objective")
    best = np.flatnonzero(values == values.max())
    # Consecutive runs of best indices; take the first run.
    breaks = np.flatnonzero(np.diff(best) > 1)
    run = best[: breaks[0] + 1] if breaks.size else best
    return int(run[0] if prefer == "lowest" else run[len(run) // 2])


def choose_threshold(objective: str, thresholds: np.ndarray, values: np.ndarray) -> int:
    """The chosen index for an objective. Gating Dice counts kept images as perfectly segmented, so it
    cannot see the false positives that wiping a clean image removes: its whole plateau keeps every
    defect, and its lowest threshold wipes the most clean images. The detection objectives take the
    plateau's middle."""
    return best_threshold(thresholds, values, "lowest" if objective == "dice" else "middle")


def class_report(counts: Confusion, index: int) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support for 'defect' (kept) and 'clean' (wiped) at one threshold."""
    tp, fn, tn, fp = (int(getattr(counts, name)[index]) for name in ("tp", "fn", "tn", "fp"))

    def scores(hit: int, false_alarm: int, miss: int) -> dict[str, float]:
        precision = hit / (hit + false_alarm) if hit + false_alarm else 0.0
        recall = hit / (hit + miss) if hit + miss else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": hit + miss}

    return {"defect": scores(tp, fp, fn), "clean": scores(tn, fn, fp)}


def curves(all_missing: np.ndarray, has_defect: np.ndarray) -> dict[str, object]:
    """ROC and precision-recall of detecting defective images from 1 - allMissing, and the AUC."""
    defect_score = 1.0 - all_missing
    both = 0 < has_defect.sum() < len(has_defect)
    if not both:
        return {"auc": float("nan"), "roc": None, "pr": None}
    fpr, tpr, _ = roc_curve(has_defect, defect_score)
    precision, recall, _ = precision_recall_curve(has_defect, defect_score)
    return {
        "auc": float(roc_auc_score(has_defect, defect_score)),
        "roc": (fpr, tpr),
        "pr": (precision, recall),
    }


def class_gating_dice(presence: np.ndarray, present: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Dice of one class's (image, class) pairs that gating this class alone gives at each threshold.

    A pair whose presence probability is below the threshold is wiped: it scores 1 where the class is
    absent, 0 where it is present; a kept pair is counted as perfectly segmented (1).
    """
    order = np.argsort(presence, kind="stable")
    scores, lost = np.asarray(presence, np.float64)[order], np.asarray(present, bool)[order]
    if len(scores) == 0:
        return np.ones(len(thresholds))
    wiped = np.searchsorted(scores, thresholds, side="left")  # pairs with presence < threshold
    lost_before = np.concatenate([[0], np.cumsum(lost)])
    return 1.0 - lost_before[wiped] / len(scores)


def choose_class_threshold(thresholds: np.ndarray, values: np.ndarray) -> int:
    """The highest threshold with the best value. Wiping more pairs can only lose present ones, so the
    best values form the low end of the thresholds; like the image objective `dice`, the kept pairs count
    as perfectly segmented and cannot show the false positives that wiping absent pairs removes, so the
    threshold that wipes the most of them is taken."""
    return int(np.flatnonzero(values == values.max())[-1])


def class_threshold_report(presence: np.ndarray, present: np.ndarray) -> dict[str, float | int]:
    """The chosen per-class threshold and what it does on these pairs."""
    presence, present = np.asarray(presence, np.float64), np.asarray(present, bool)
    thresholds = candidate_thresholds(presence)
    values = class_gating_dice(presence, present, thresholds)
    best = choose_class_threshold(thresholds, values)
    kept = presence >= thresholds[best]
    both = 0 < present.sum() < len(present)
    return {
        "threshold": float(thresholds[best]),
        "gating_dice": float(values[best]),
        "all_empty_dice": float(1.0 - present.mean()) if len(present) else 1.0,
        "auc": float(roc_auc_score(present, presence)) if both else float("nan"),
        "present": int(present.sum()),
        "present_kept": int((kept & present).sum()),
        "absent_wiped": int((~kept & ~present).sum()),
        "absent_kept": int((kept & ~present).sum()),
    }
