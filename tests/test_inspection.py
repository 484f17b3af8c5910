"""Stage inspect's pure pieces (stages/core/inspection.py, stages/core/features.py): the gate's verdict and
errors in every gating mode, worst-first ordering, confusion rows, the lowest-Dice selection, the PCA, the
clean-image mixture and its AUC, the captioned pictures, and the classifier's pooled features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stages.core.errors import PipelineError
from stages.core.features import features_and_logits
from stages.core.inference_ops import Gate, gate_for
from stages.core.inspection import (
    CLASS_LABELS,
    CONFUSION_COLUMNS,
    IMAGE_LABELS,
    MARGIN,
    STRIP,
    GateVerdict,
    caption_strip,
    chosen_gate,
    class_colour,
    classes_line,
    confusion_rows,
    defect_label,
    dice_picture,
    fit_clean_density,
    gate_confusion,
    gate_errors,
    gate_verdict,
    lowest_dice,
    off_diagonal,
    pca_2d,
    roc_auc,
    submitted_areas,
    truth_picture,
    worst_first,
)
from stages.core.models import DefectClassifier
from stages.core.postprocess import OFF_MIN_AREA_PX, Candidates, ClassRule, pair_dice, select_masks

K = 4


def random_candidates(rng: np.random.Generator, n: int, k: int = K) -> Candidates:
    """Consistent random candidate counts: areas shrink as the threshold rises, intersections fit."""
    thresholds = np.array([0.3, 0.5, 0.7])
    truth = rng.integers(0, 3, (n, k)) * rng.integers(0, 400, (n, k))
    base = rng.integers(0, 3, (n, k)) * rng.integers(0, 500, (n, k))
    pred = np.stack([base, base // 2, base // 4], axis=2)
    inter = np.minimum(pred, truth[:, :, None]) // 2
    return Candidates(tuple(f"img{i:02d}.jpg" for i in range(n)), thresholds, pred, inter, truth)


# ---------------------------------------------------------------------------------------------- worst_first


def test_worst_first_orders_the_selected_entries_only() -> None:
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    selected = np.array([True, True, False, True, True])
    assert worst_first(scores, selected, highest_first=True).tolist() == [1, 3, 0, 4]  # tie: index order
    assert worst_first(scores, selected, highest_first=False).tolist() == [4, 0, 1, 3]
    assert worst_first(scores, np.zeros(5, bool), highest_first=True).tolist() == []


# ---------------------------------------------------------------------------------------------- the gate


def test_chosen_gate_reads_rules_json() -> None:
    data = {
        "gating": "image",
        "image_threshold": 0.7,
        "class_thresholds": None,
        "rules": {str(k): {"threshold": 0.5, "min_area_px": 100 * k} for k in range(1, K + 1)},
    }
    chosen = chosen_gate(data, K, "rules.json")
    assert chosen.mode == "image" and chosen.image_threshold == 0.7 and chosen.class_thresholds is None
    assert chosen.rules == [ClassRule(0.5, 100 * k) for k in range(1, K + 1)]
    per_class = chosen_gate({**data, "gating": "class", "class_thresholds": [0.1, 0.2, 0.3, 0.4]}, K, "r")
    assert per_class.class_thresholds == [0.1, 0.2, 0.3, 0.4] and per_class.image_threshold is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gating": "sometimes"}, "rules.json: gating 'sometimes' is not one of none, image, class, soft"),
        ({"image_threshold": None}, "rules.json: image_threshold None is not a number"),
        ({"gating": "class"}, "rules.json: class_thresholds None is not a list of 4 numbers"),
        ({"rules": {"1": {"threshold": 0.5}}}, "rules.json: rules.1 {'threshold': 0.5} is not a threshold"),
    ],
)
def test_chosen_gate_rejects_a_broken_file(change: dict, message: str) -> None:
    data = {
        "gating": "image",
        "image_threshold": 0.7,
        "class_thresholds": None,
        "rules": {str(k): {"threshold": 0.5, "min_area_px": 0} for k in range(1, K + 1)},
    }
    with pytest.raises(PipelineError, match="^" + message.replace("(", r"\(").replace("{", r"\{")):
        chosen_gate({**data, **change}, K, "rules.json")


def test_verdict_per_mode() -> None:
    all_missing = np.array([0.9, 0.2, 0.6])
    presence = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.1]])
    submitted = np.array([[False, False], [True, False], [False, False]])
    assert gate_verdict("none", gate_for("none", all_missing, None, 2, None), submitted).unit is None
    image = gate_verdict("image", gate_for("image", all_missing, None, 2, 0.5), submitted)
    assert image.unit == "image" and image.images.tolist() == [False, True, False]
    per_class = gate_verdict(
        "class", gate_for("class", all_missing, presence, 2, None, [0.5, 0.5]), submitted
    )
    assert per_class.unit == "pair" and per_class.pairs.tolist() == [
        [True, False],
        [False, True],
        [False, False],
    ]
    assert per_class.images.tolist() == [True, True, False]  # any class kept: called defective
    # Soft gating wipes nothing outright: the verdict is whether any mask is submitted.
    soft = gate_verdict("soft", gate_for("soft", all_missing, None, 2, None), submitted)
    assert soft.unit == "image" and soft.images.tolist() == [False, True, False]


def test_image_gate_errors_worst_first() -> None:
    all_missing = np.array([0.95, 0.10, 0.80, 0.30, 0.99, 0.20, 0.85])
    present = np.zeros((7, K), bool)
    present[[0, 1, 4, 6], 2] = True  # images 0, 1, 4, 6 defective
    verdict = gate_verdict("image", gate_for("image", all_missing, None, K, 0.5), np.zeros((7, K), bool))
    errors = gate_errors(verdict, present, all_missing, None)
    # Wiped defective images: the highest allMissing (surest it is clean) first.
    assert errors.wiped_defective == [(4, None), (0, None), (6, None)]
    # Kept clean images: the lowest allMissing (surest it is defective) first.
    assert errors.kept_clean == [(5, None), (3, None)]


def test_class_gate_errors_are_pairs() -> None:
    presence = np.array([[0.1, 0.9], [0.4, 0.2], [0.05, 0.6]])
    present = np.array([[True, False], [True, True], [False, False]])
    verdict = gate_verdict(
        "class", gate_for("class", 1 - presence.max(1), presence, 2, None, [0.5, 0.5]), np.zeros((3, 2), bool)
    )
    errors = gate_errors(verdict, present, 1 - presence.max(1), presence)
    # Present classes wiped (p below 0.5): lowest p first; absent classes kept: highest p first.
    assert errors.wiped_defective == [(0, 0), (1, 1), (1, 0)]
    assert errors.kept_clean == [(0, 1), (2, 1)]


def test_no_gate_no_errors_and_header_only_confusion() -> None:
    verdict = GateVerdict("none", None, None)
    errors = gate_errors(verdict, np.ones((3, K), bool), np.zeros(3), None)
    assert errors.wiped_defective == [] and errors.kept_clean == []
    images, classes = gate_confusion(["a", "b", "c"], np.ones((3, K), bool), verdict)
    assert images.empty and list(images.columns) == CONFUSION_COLUMNS
    assert len(classes) == K and all(
        frame.empty and list(frame.columns) == CONFUSION_COLUMNS for frame in classes
    )
    assert images.to_csv(index=False) == "ImageId,actual,predicted\n"


def test_confusion_rows_labels() -> None:
    rows = confusion_rows(
        ["a", "b", "c"], np.array([True, True, False]), np.array([True, False, True]), IMAGE_LABELS
    )
    assert rows.values.tolist() == [
        ["a", "defective", "defective"],
        ["b", "defective", "clean"],
        ["c", "clean", "defective"],
    ]
    assert off_diagonal(rows, IMAGE_LABELS) == (1, 1)


@pytest.mark.parametrize("mode", ["image", "class", "soft"])
def test_error_counts_are_the_confusion_off_diagonals(mode: str) -> None:
    """What the metrics count equals what the confusion plot shows, in every mode with a gate."""
    rng = np.random.default_rng(3)
    n = 40
    candidates = random_candidates(rng, n)
    present = candidates.truth_area > 0
    all_missing, presence = rng.random(n), rng.random((n, K))
    gate = gate_for(mode, all_missing, presence, K, 0.5, [0.4] * K)
    rules = [ClassRule(0.5, 100)] * K
    submitted = select_masks(candidates.pred_area, candidates.thresholds, rules, gate)
    verdict = gate_verdict(mode, gate, submitted)
    errors = gate_errors(verdict, present, all_missing, presence)
    images, classes = gate_confusion(candidates.image_ids, present, verdict)
    assert images["ImageId"].tolist() == list(candidates.image_ids)
    if mode == "class":
        totals = np.sum([off_diagonal(frame, CLASS_LABELS) for frame in classes], axis=0)
        assert tuple(totals) == (len(errors.wiped_defective), len(errors.kept_clean))
        assert all(len(frame) == n for frame in classes)
    else:
        assert off_diagonal(images, IMAGE_LABELS) == (len(errors.wiped_defective), len(errors.kept_clean))
        assert all(frame.empty for frame in classes)
    assert len(errors.wiped_defective) + len(errors.kept_clean) > 0  # the check saw some errors


# ---------------------------------------------------------------------------------------------- segmentation


def test_submitted_areas_are_what_pair_dice_scores() -> None:
    rng = np.random.default_rng(5)
    candidates = random_candidates(rng, 30)
    rules = [ClassRule(0.3, 0), ClassRule(0.5, 50), ClassRule(0.7, 100), ClassRule(0.3, OFF_MIN_AREA_PX)]
    gate = gate_for("image", rng.random(30), None, K, 0.6)
    areas = submitted_areas(candidates, rules, gate)
    assert (areas[:, 3] == 0).all()  # a class switched off submits nothing
    assert (areas[~gate.keep] == 0).all()  # a wiped image submits nothing
    dice = pair_dice(candidates, rules, gate)
    empty = (areas == 0) & (candidates.truth_area == 0)
    assert (dice[empty] == 1).all() and (dice[(areas == 0) & (candidates.truth_area > 0)] == 0).all()


def test_lowest_dice_skips_empty_pairs_and_orders_worst_first() -> None:
    dice = np.array([[0.5], [1.0], [0.0], [0.0], [0.2], [1.0]])
    truth = np.array([[10], [0], [50], [0], [30], [40]])
    submitted = np.array([[12], [0], [0], [500], [0], [40]])
    (order,) = lowest_dice(dice, truth, submitted)
    # Image 1 (both empty) is left out; Dice 0 ties: the larger wrong area (500 px false mask) first.
    assert order.tolist() == [3, 2, 4, 0, 5]


def test_lowest_dice_of_a_class_nobody_has() -> None:
    orders = lowest_dice(np.ones((3, 2)), np.zeros((3, 2), int), np.zeros((3, 2), int))
    assert [order.tolist() for order in orders] == [[], []]


# ---------------------------------------------------------------------------------------------- embeddings


def test_defect_labels() -> None:
    assert [defect_label(c) for c in ("", "1", "3", "4", "1_3", "2_3_4")] == [
        "clean",
        "1",
        "3",
        "4",
        "multi",
        "multi",
    ]


def test_pca_shapes_and_variance_order() -> None:
    rng = np.random.default_rng(0)
    # Three directions of decreasing spread in 10 dims.
    latent = rng.normal(size=(200, 3)) * np.array([5.0, 2.0, 0.5])
    features = latent @ np.linalg.qr(rng.normal(size=(10, 10)))[0][:3] + 7.0
    coords, ratio = pca_2d(features)
    assert coords.shape == (200, 2) and ratio.shape == (2,)
    assert ratio[0] > ratio[1] > 0 and ratio.sum() <= 1 + 1e-12
    assert ratio[0] == pytest.approx(25 / (25 + 4 + 0.25), abs=0.05)
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-9)  # centred
    assert coords[:, 0].var() > coords[:, 1].var()
    total = ((features - features.mean(0)) ** 2).sum()
    np.testing.assert_allclose((coords**2).sum(axis=0) / total, ratio)
    # The same picture on a rerun, whatever sign the SVD picks: the largest loading is positive.
    np.testing.assert_array_equal(pca_2d(features.copy())[0], coords)
    flipped, _ = pca_2d(-features)
    np.testing.assert_allclose(np.abs(flipped), np.abs(coords))


def test_pca_of_too_few_images() -> None:
    coords, ratio = pca_2d(np.ones((1, 5)))
    assert coords.tolist() == [[0.0, 0.0]] and ratio.tolist() == [0.0, 0.0]
    coords, ratio = pca_2d(np.ones((4, 5)))  # constant features: no variance
    assert not coords.any() and not ratio.any()


def test_clean_mixture_separates_separable_features() -> None:
    rng = np.random.default_rng(1)
    dims = 64
    clean_train = rng.normal(size=(120, dims))
    clean_holdout = rng.normal(size=(40, dims))
    defective = rng.normal(size=(40, dims)) + 3.0  # shifted on every dim
    positive = np.r_[np.zeros(40, bool), np.ones(40, bool)]
    for pca_dims in (16, None):
        density = fit_clean_density(clean_train, 2, "diag", pca_dims, seed=0)
        nll = density.negative_log_likelihood(np.vstack([clean_holdout, defective]))
        assert roc_auc(nll, positive) > 0.95
        assert density.components.shape == (pca_dims or dims, dims)
    # Nothing to separate: the same distribution gives an AUC near chance.
    same = density.negative_log_likelihood(rng.normal(size=(40, dims)))
    assert 0.3 < roc_auc(np.r_[nll[:40], same], positive) < 0.7


def test_clean_mixture_on_few_images() -> None:
    rng = np.random.default_rng(2)
    density = fit_clean_density(rng.normal(size=(6, 50)), 2, "full", 32, seed=0)
    assert density.components.shape == (5, 50)  # at most N - 1 axes carry variance
    assert np.isfinite(density.negative_log_likelihood(rng.normal(size=(3, 50)))).all()
    raw = fit_clean_density(rng.normal(size=(20, 3)), 1, "full", None, seed=0)
    assert raw.components.shape == (3, 3)
    with pytest.raises(ValueError, match="3 clean images cannot fit a mixture of 4 components"):
        fit_clean_density(rng.normal(size=(3, 5)), 4, "diag", None, seed=0)


def test_mixture_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(50, 20)), rng.normal(size=(10, 20))
    first = fit_clean_density(train, 3, "diag", 8, seed=7).negative_log_likelihood(test)
    np.testing.assert_array_equal(
        first, fit_clean_density(train, 3, "diag", 8, seed=7).negative_log_likelihood(test)
    )


def test_roc_auc() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert roc_auc(np.array([0.1, 0.2]), np.array([True, True])) is None


# ---------------------------------------------------------------------------------------------- pictures


def test_caption_strip_and_pictures() -> None:
    strip = caption_strip([classes_line("true classes:", np.array([False, True, False, True]))], 300)
    assert strip.shape == (MARGIN + 20, 300, 3) and strip.dtype == np.uint8
    colours = {tuple(pixel) for pixel in strip.reshape(-1, 3)}
    assert STRIP in colours and class_colour(1) in colours and class_colour(3) in colours
    assert class_colour(0) not in colours  # class 1 is not in the image
    image = np.full((64, 400, 3), 128, np.uint8)
    truth = np.zeros((K, 64, 400), np.uint8)
    truth[2, 10:30, 50:120] = 1
    lines = [[("abc.jpg", (255, 255, 255))], classes_line("true classes:", truth.any(axis=(1, 2)))]
    picture = truth_picture(image, truth, lines, width=800)
    assert picture.shape == (128 + MARGIN + 40, 800, 3)
    assert (picture[:128] != 128).any()  # the mask is drawn
    both = dice_picture(image, truth, np.zeros_like(truth), lines, width=400)
    assert both.shape == (64 + 4 + 64 + MARGIN + 40, 400, 3)


def test_classes_line_of_a_clean_image() -> None:
    assert [text for text, _ in classes_line("true classes:", np.zeros(K, bool))] == [
        "true classes:",
        " none (clean)",
    ]


# ---------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("head", ["binary", "multilabel"])
def test_pooled_features_give_the_models_own_logits(head: str) -> None:
    torch.manual_seed(0)
    model = DefectClassifier("resnet18", "none", dropout=0.5, head=head, num_classes=K).eval()
    images = torch.randn(3, 3, 64, 96)
    with torch.inference_mode():
        features, logits = features_and_logits(model, images)
        expected = model(images)
    assert features.shape == (3, 512) and logits.shape == expected.shape
    torch.testing.assert_close(logits, expected)
    assert (features >= 0).all()  # pooled after the encoder's last ReLU


def test_gate_open_verdict_frame_types() -> None:
    gate = Gate.open(2, K)
    verdict = gate_verdict("image", gate, np.zeros((2, K), bool))
    images, _ = gate_confusion(["a", "b"], np.zeros((2, K), bool), verdict)
    assert isinstance(images, pd.DataFrame) and images["predicted"].tolist() == ["defective", "defective"]
