"""Tests of what the brushed look draws, and of how it differs from the rolled one.

The contract shared by both looks (shapes, disjoint masks, margins, benign marks) is in test_synthetic.py.
"""

import cv2
import numpy as np
import pytest

from stages.core.synthetic import SyntheticSpec, generate, render
from tests.test_synthetic import ring_around

BRUSHED = SyntheticSpec(margin_fraction=0.0, look="brushed")


def stroke_width(binary: np.ndarray) -> float:
    """Mean width of thin strokes: 2 * area / perimeter, which is W * L / (L + W) for a W x L stroke."""
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(contour, True) for contour in contours)
    return 2.0 * float(binary.sum()) / max(perimeter, 1.0)


def local_contrast(image: np.ndarray) -> np.ndarray:
    """|3x3 mean - 21x21 median|: how much a small detail stands out of the steel around it."""
    gray = image[..., 0]
    return np.abs(cv2.blur(gray.astype(np.float32), (3, 3)) - cv2.medianBlur(gray, 21).astype(np.float32))


def test_brushed_class_2_scratches_are_thin() -> None:
    """1-3 px scratches at 256-px height, with masks dilated to only about 5-7 px."""
    for trial in range(12):
        image, masks = render(np.random.default_rng([2, trial]), BRUSHED, (2,))
        mask = masks[1].astype(bool)
        gray = image[..., 0].astype(np.float32)
        # A 9-px median erases lines up to 4 px wide, leaving the steel under the scratch.
        steel = cv2.medianBlur(image[..., 0], 9).astype(np.float32)
        drawn = (np.abs(gray - steel) > 25.0) & mask
        assert drawn.sum() > 20, f"trial {trial}: scratch barely visible"
        assert 0.6 <= stroke_width(drawn) <= 3.2, f"trial {trial}: drawn width {stroke_width(drawn):.2f}"
        assert 3.5 <= stroke_width(mask) <= 7.5, f"trial {trial}: mask width {stroke_width(mask):.2f}"


# Minimum mean |pixel - ring mean| inside the mask above the same in the ring (either polarity counts:
# dents can be bright inside a dark rim), and classes that are always darker than the steel.
DEVIATION = {1: 5.0, 2: 5.0, 3: 15.0, 4: 15.0}
DARKER = {1, 3}


@pytest.mark.parametrize("size", [(256, 1600), (64, 400)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("cls", [1, 2, 3, 4])
def test_brushed_mask_covers_the_visible_defect(size: tuple[int, int], cls: int) -> None:
    spec = SyntheticSpec(height=size[0], width=size[1], margin_fraction=0.0, look="brushed")
    ring_width = max(2, round(12 * size[0] / 256))
    for trial in range(8):
        image, masks = render(np.random.default_rng([cls, trial]), spec, (cls,))
        gray = image[..., 0].astype(np.float64)
        inside, ring = masks[cls - 1].astype(bool), ring_around(masks[cls - 1], ring_width)
        steel = gray[ring].mean()
        deviation = np.abs(gray[inside] - steel).mean() - np.abs(gray[ring] - steel).mean()
        assert deviation > DEVIATION[cls], f"trial {trial}: deviation {deviation:.1f}"
        if cls in DARKER:
            assert gray[inside].mean() < steel, f"trial {trial}: not darker than the steel"


def test_brushed_clean_texture_has_no_defect_like_contrast() -> None:
    """Grain, roll marks and noise stay well below the local contrast that every defect class reaches."""
    for trial in range(5):
        image, masks = render(np.random.default_rng([99, trial]), BRUSHED, ())
        assert not masks.any()
        assert local_contrast(image).max() < 22.0, f"trial {trial}"
        smooth = cv2.blur(image[..., 0].astype(np.float32), (9, 9))
        assert smooth.min() > 110.0 and smooth.max() < 215.0, f"trial {trial}: brightness out of range"
    for cls in (1, 2, 3, 4):
        for trial in range(5):
            image, masks = render(np.random.default_rng([cls, trial, 5]), BRUSHED, (cls,))
            assert local_contrast(image)[masks[cls - 1].astype(bool)].max() > 25.0, f"class {cls} {trial}"


def test_brushed_differs_from_rolled_for_the_same_image() -> None:
    rolled = SyntheticSpec(margin_fraction=0.0)
    for index, classes in enumerate([(), (1,), (2,), (3,), (4,), (1, 2, 3, 4)]):
        brushed_image, brushed_masks = generate(7, "train", index, BRUSHED, classes)
        rolled_image, rolled_masks = generate(7, "train", index, rolled, classes)
        assert brushed_image.mean() > rolled_image.mean() + 20.0  # brighter steel
        if classes:
            assert not np.array_equal(brushed_masks, rolled_masks)
        # Rolled streaks run along the strip, brushed grain across it: the sharper gradient of the bare
        # steel (away from any defect) turns around.
        for image, masks, across_strip in (
            (rolled_image, rolled_masks, False),
            (brushed_image, brushed_masks, True),
        ):
            steel = cv2.dilate(masks.max(axis=0), np.ones((15, 15), np.uint8)) == 0
            gray = cv2.GaussianBlur(image[..., 0].astype(np.float32), (0, 0), 1.0)
            along_x = np.abs(np.diff(gray, axis=1))[steel[:, 1:] & steel[:, :-1]].mean()
            along_y = np.abs(np.diff(gray, axis=0))[steel[1:] & steel[:-1]].mean()
            assert (along_x > along_y) == across_strip, f"image {index}: {along_x:.2f} vs {along_y:.2f}"
