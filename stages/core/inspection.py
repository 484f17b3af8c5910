"""What a Kaggler looks at to judge the pipeline, as pure functions (no I/O): the gate's errors on the
holdout images, the lowest-Dice submitted masks, an embedding of the classifier's features, and the pictures.

The gate and the submitted masks are not re-derived here: they come from stages.core.postprocess (Gate,
gate_for, select_masks, pair_dice), so they are exactly what postprocess scored on the holdout.

Gate errors, per gating mode (`unit` says what is counted):
  none   no gate, no gate errors.
  image  per image: a defective image the gate wiped (allMissing >= threshold), a clean image it kept.
  class  per (image, class) pair: a present class the gate wiped (p_k < its threshold), an absent class it
         kept. The image-level verdict (for the image confusion matrix) is "defective" when any class is kept.
  soft   the soft gate wipes nothing outright (it weighs each mask's area by the classifier's probability
         before the min-area rule), so the verdict is the submission's: an image is called defective when at
         least one of its masks is submitted. A gate error is then a defective image with every mask removed
         or a clean image with a mask kept (the U-Net's and the rules' share in it included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from stages.core.errors import PipelineError
from stages.core.inference_ops import GATING_MODES, Gate
from stages.core.overlay import CLASS_COLOURS, draw_masks, truth_vs_prediction
from stages.core.postprocess import Candidates, ClassRule, select_masks, threshold_index

IMAGE_LABELS = ("defective", "clean")  # (positive, negative) of the image-level confusion matrix
CLASS_LABELS = ("present", "absent")  # of the per-class ones
CONFUSION_COLUMNS = ["ImageId", "actual", "predicted"]
GMM_COVARIANCES = ("full", "tied", "diag", "spherical")
Rgb = tuple[int, int, int]
Line = list[tuple[str, Rgb]]  # a caption line: text pieces, each in its colour


# --- the gate chosen by postprocess (data/rules.json) -------------------------------------------------------


@dataclass(frozen=True)
class ChosenGate:
    """The gating mode, its thresholds and the per-class rules postprocess chose."""

    mode: str
    image_threshold: float | None
    class_thresholds: list[float] | None
    rules: list[ClassRule]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def chosen_gate(data: object, num_classes: int, source: str) -> ChosenGate:
    """data/rules.json checked: a mode of GATING_MODES, a number threshold for image gating, one per class
    for class gating, and a (threshold, min_area_px) rule per class. Errors name `source` and the key."""
    remake = "rerun `dvc repro postprocess`"
    if not isinstance(data, dict):
        raise PipelineError(f"{source}: expected a JSON object; {remake}")
    mode = data.get("gating")
    if mode not in GATING_MODES:
        raise PipelineError(f"{source}: gating {mode!r} is not one of {', '.join(GATING_MODES)}; {remake}")
    image_threshold = data.get("image_threshold")
    if mode == "image" and not _number(image_threshold):
        raise PipelineError(f"{source}: image_threshold {image_threshold!r} is not a number; {remake}")
    class_thresholds = data.get("class_thresholds")
    if mode == "class" and not (
        isinstance(class_thresholds, list)
        and len(class_thresholds) == num_classes
        and all(_number(value) for value in class_thresholds)
    ):
        raise PipelineError(
            f"{source}: class_thresholds {class_thresholds!r} is not a list of {num_classes} numbers; "
            + remake
        )
    rules = []
    table = data.get("rules")
    for k in range(1, num_classes + 1):
        rule = table.get(str(k)) if isinstance(table, dict) else None
        if not (
            isinstance(rule, dict)
            and _number(rule.get("threshold"))
            and isinstance(rule.get("min_area_px"), int)
            and not isinstance(rule.get("min_area_px"), bool)
        ):
            raise PipelineError(
                f"{source}: rules.{k} {rule!r} is not a threshold and a min_area_px; {remake}"
            )
        rules.append(ClassRule(float(rule["threshold"]), int(rule["min_area_px"])))
    return ChosenGate(
        mode,
        float(image_threshold) if mode == "image" else None,
        [float(value) for value in class_thresholds] if mode == "class" else None,
        rules,
    )


def submitted_areas(candidates: Candidates, rules: Sequence[ClassRule], gate: Gate) -> np.ndarray:
    """(N, K) pixel area of each holdout pair's submitted mask (0 where nothing is submitted): the candidate
    at the class's rule threshold, where select_masks keeps it."""
    num_classes = candidates.num_classes
    columns = [threshold_index(candidates.thresholds, rule.threshold) for rule in rules]
    area = candidates.pred_area[:, np.arange(num_classes), columns]
    return np.where(select_masks(candidates.pred_area, candidates.thresholds, rules, gate), area, 0)


# --- gate errors --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateVerdict:
    """What the gate let through on N holdout images: `images` (N,) True = called defective (some mask may
    be submitted); `pairs` (N, K) per class, class gating only. None: no gate (mode none)."""

    mode: str
    images: np.ndarray | None
    pairs: np.ndarray | None

    @property
    def unit(self) -> str | None:
        """What a gate error is counted in: "image", "pair" (class gating), None (no gate)."""
        if self.images is None:
            return None
        return "pair" if self.pairs is not None else "image"


def gate_verdict(mode: str, gate: Gate, submitted: np.ndarray) -> GateVerdict:
    """The verdict of the chosen mode's gate; `submitted` (N, K) bool: which masks the submission keeps
    (select_masks under this gate), the verdict of the soft gate."""
    if mode == "none":
        return GateVerdict(mode, None, None)
    if mode == "image":
        return GateVerdict(mode, gate.keep.any(axis=1), None)
    if mode == "class":
        return GateVerdict(mode, gate.keep.any(axis=1), gate.keep.copy())
    if mode == "soft":
        return GateVerdict(mode, np.asarray(submitted, bool).any(axis=1), None)
    raise ValueError(f"unknown gating mode {mode!r}")


def worst_first(scores: np.ndarray, selected: np.ndarray, highest_first: bool) -> np.ndarray:
    """Indices of the selected entries of a flat score array, most confident mistake first: highest score
    first or lowest first; ties keep index order."""
    scores = np.asarray(scores, np.float64)
    indices = np.flatnonzero(np.asarray(selected, bool))
    key = -scores[indices] if highest_first else scores[indices]
    return indices[np.argsort(key, kind="stable")]


@dataclass(frozen=True)
class GateErrors:
    """The gate's two kinds of mistakes, worst first: (image index, class index or None) each. Class
    gating counts pairs, the other modes images."""

    wiped_defective: list[tuple[int, int | None]]
    kept_clean: list[tuple[int, int | None]]


def gate_errors(
    verdict: GateVerdict, present: np.ndarray, all_missing: np.ndarray, presence: np.ndarray | None
) -> GateErrors:
    """Every gate error, worst first. `present` (N, K) bool: the true classes.

    Per image: a defective image wiped, highest allMissing first (the classifier was surest it is clean),
    and a clean image kept, lowest allMissing first. Per pair (class gating): a present class wiped, lowest
    p_k first, and an absent class kept, highest p_k first."""
    present = np.asarray(present, bool)
    if verdict.images is None:
        return GateErrors([], [])
    if verdict.pairs is None:
        defective = present.any(axis=1)
        kept = verdict.images
        wiped = worst_first(all_missing, defective & ~kept, highest_first=True)
        clean_kept = worst_first(all_missing, ~defective & kept, highest_first=False)
        return GateErrors([(int(n), None) for n in wiped], [(int(n), None) for n in clean_kept])
    if presence is None:
        raise ValueError("per-class gate errors need the presence probabilities")
    num_classes = present.shape[1]
    flat_p, flat_present, flat_kept = presence.ravel(), present.ravel(), verdict.pairs.ravel()
    wiped = worst_first(flat_p, flat_present & ~flat_kept, highest_first=False)
    clean_kept = worst_first(flat_p, ~flat_present & flat_kept, highest_first=True)
    return GateErrors(
        [(int(i // num_classes), int(i % num_classes)) for i in wiped],
        [(int(i // num_classes), int(i % num_classes)) for i in clean_kept],
    )


def confusion_rows(
    image_ids: Sequence[str], actual: np.ndarray, predicted: np.ndarray, labels: tuple[str, str]
) -> pd.DataFrame:
    """One row per image for DVC's confusion template: ImageId, actual, predicted, each label
    labels[0] where True, labels[1] where False."""
    positive, negative = labels
    return pd.DataFrame(
        {
            "ImageId": list(image_ids),
            "actual": np.where(np.asarray(actual, bool), positive, negative),
            "predicted": np.where(np.asarray(predicted, bool), positive, negative),
        },
        columns=CONFUSION_COLUMNS,
    )


def gate_confusion(
    image_ids: Sequence[str], present: np.ndarray, verdict: GateVerdict
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The image-level confusion rows and one frame per class (rows only with class gating; header-only
    frames otherwise, so that the plot files always exist: DVC reports a missing plot file as an error)."""
    present = np.asarray(present, bool)
    empty = pd.DataFrame(columns=CONFUSION_COLUMNS)
    images = (
        empty
        if verdict.images is None
        else confusion_rows(image_ids, present.any(axis=1), verdict.images, IMAGE_LABELS)
    )
    classes = [
        confusion_rows(image_ids, present[:, k], verdict.pairs[:, k], CLASS_LABELS)
        if verdict.pairs is not None
        else empty.copy()
        for k in range(present.shape[1])
    ]
    return images, classes


def off_diagonal(frame: pd.DataFrame, labels: tuple[str, str]) -> tuple[int, int]:
    """(positives predicted negative, negatives predicted positive) of a confusion frame."""
    positive, negative = labels
    missed = int(((frame["actual"] == positive) & (frame["predicted"] == negative)).sum())
    false_alarm = int(((frame["actual"] == negative) & (frame["predicted"] == positive)).sum())
    return missed, false_alarm


# --- segmentation errors ------------------------------------------------------------------------------------


def lowest_dice(dice: np.ndarray, truth_area: np.ndarray, submitted_area: np.ndarray) -> list[np.ndarray]:
    """Per class, the image indices of the pairs where the truth or the submitted mask is not empty (the
    pairs where segmentation can go wrong), lowest Dice first; among equal Dice (a missed defect and a false
    mask both score 0) the larger truth plus submitted area first, then image order."""
    truth_area, submitted_area = np.asarray(truth_area), np.asarray(submitted_area)
    considered = (truth_area > 0) | (submitted_area > 0)
    orders = []
    for k in range(np.shape(dice)[1]):
        indices = np.flatnonzero(considered[:, k])
        wrong = truth_area[indices, k] + submitted_area[indices, k]
        orders.append(indices[np.lexsort((indices, -wrong, dice[indices, k]))])
    return orders


# --- embeddings ---------------------------------------------------------------------------------------------


def defect_label(classes: str) -> str:
    """The prepared table's `classes` ("", "3", "1_3") as a scatter label: clean, the class, or multi."""
    if classes == "":
        return "clean"
    return classes if "_" not in classes else "multi"


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) coordinates of the features on their first two principal components and those components'
    shares of the total variance (numpy SVD of the centred features). Each component's sign is fixed (its
    largest loading positive) so that reruns draw the same picture; missing components (fewer than 3
    images, constant features) are zeros."""
    features = np.asarray(features, np.float64)
    coords, ratio = np.zeros((len(features), 2)), np.zeros(2)
    if len(features) < 2:
        return coords, ratio
    centred = features - features.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    if total <= 0:
        return coords, ratio
    n = min(2, len(s))
    for c in range(n):
        sign = 1.0 if vt[c, np.argmax(np.abs(vt[c]))] >= 0 else -1.0
        coords[:, c] = sign * u[:, c] * s[c]
        ratio[c] = s[c] ** 2 / total
    return coords, ratio


@dataclass(frozen=True)
class CleanDensity:
    """A Gaussian mixture of the clean images' features, on their first principal components."""

    mean: np.ndarray  # (D,) of the clean features
    components: np.ndarray  # (d, D) principal axes, d <= the dims asked for
    mixture: GaussianMixture

    def negative_log_likelihood(self, features: np.ndarray) -> np.ndarray:
        """(N,) -log p(features): high where an image looks unlike the clean ones (a defect score)."""
        projected = (np.asarray(features, np.float64) - self.mean) @ self.components.T
        return -self.mixture.score_samples(projected)


def fit_clean_density(
    clean: np.ndarray, n_components: int, covariance: str, pca_dims: int | None, seed: int
) -> CleanDensity:
    """A GaussianMixture fitted on clean images' features (N, D), after projecting them on their first
    `pca_dims` principal components (None: all D dims). A few hundred images cannot estimate a density in
    the 1024 dims of DenseNet121's features: the projection keeps the directions they vary along."""
    clean = np.asarray(clean, np.float64)
    if len(clean) < max(n_components, 2):
        raise ValueError(f"{len(clean)} clean images cannot fit a mixture of {n_components} components")
    mean = clean.mean(axis=0)
    centred = clean - mean
    if pca_dims is None:
        components = np.eye(clean.shape[1])
    else:
        # At most rank many axes carry variance: N - 1 for N centred images.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[: max(1, min(pca_dims, len(clean) - 1))]
    mixture = GaussianMixture(n_components, covariance_type=covariance, random_state=seed)
    mixture.fit(centred @ components.T)
    return CleanDensity(mean, components, mixture)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of `scores` for detecting the positives; None when only one kind of image is there."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, np.asarray(scores, np.float64)))


# --- pictures -----------------------------------------------------------------------------------------------

WHITE: Rgb = (255, 255, 255)
GREY: Rgb = (170, 170, 170)
STRIP: Rgb = (32, 32, 32)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE, LINE_HEIGHT, MARGIN = 0.5, 20, 6


def class_colour(k: int) -> Rgb:
    """The overlay colour of class index k (0-based), as in the segment plots."""
    return CLASS_COLOURS[k % len(CLASS_COLOURS)]


def classes_line(label: str, present: np.ndarray) -> Line:
    """`label` then each present class number in its overlay colour, or "none (clean)"."""
    line: Line = [(label, WHITE)]
    found = np.flatnonzero(np.asarray(present, bool))
    if not found.size:
        return [*line, (" none (clean)", GREY)]
    for k in found:
        line.append((f" {k + 1}", class_colour(int(k))))
    return line


def caption_strip(lines: Sequence[Line], width: int) -> np.ndarray:
    """A dark RGB strip `width` pixels wide with one text line per entry (text cut at the right edge)."""
    strip = np.empty((MARGIN + LINE_HEIGHT * len(lines), width, 3), np.uint8)
    strip[:] = STRIP
    for row, line in enumerate(lines):
        x, baseline = MARGIN, MARGIN + LINE_HEIGHT * row + 14
        for text, colour in line:
            cv2.putText(strip, text, (x, baseline), FONT, FONT_SCALE, colour, 1, cv2.LINE_AA)
            x += cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]
    return strip


def with_caption(picture: np.ndarray, lines: Sequence[Line]) -> np.ndarray:
    return np.vstack([picture, caption_strip(lines, picture.shape[1])])


def truth_picture(
    image: np.ndarray, truth: np.ndarray, lines: Sequence[Line], width: int = 800
) -> np.ndarray:
    """The image with its true masks (K, H, W) drawn in the class colours, `width` pixels wide, captioned."""
    drawn = draw_masks(image, truth)
    height = max(1, round(drawn.shape[0] * width / drawn.shape[1]))
    return with_caption(cv2.resize(drawn, (width, height), interpolation=cv2.INTER_AREA), lines)


def dice_picture(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, lines: Sequence[Line], width: int = 800
) -> np.ndarray:
    """Truth above the submitted masks (overlay.truth_vs_prediction), captioned."""
    return with_caption(truth_vs_prediction(image, truth, prediction, width), lines)
