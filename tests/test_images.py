"""Model inputs: the classifier's targets, training crops (random and around defects), and the image table
that feeds both models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from stages.core import rle
from stages.core.errors import RLEError
from stages.core.images import (
    AugmentParams,
    CropSpec,
    ImageTable,
    build_augmentations,
    classifier_targets,
    decode_masks,
)

NO_AUGMENT = AugmentParams(horizontal_flip=0.0, vertical_flip=0.0, brightness_contrast=0.0)


def test_classifier_targets_by_hand() -> None:
    table = pd.DataFrame(
        {
            "has_defect": [False, True, True],
            "rle_1": ["", "1 3", ""],
            "rle_2": ["", "", ""],
            "rle_3": ["", "5 2", "9 9"],
        }
    )
    np.testing.assert_array_equal(classifier_targets(table, 1), [[1], [0], [0]])
    np.testing.assert_array_equal(classifier_targets(table, 4), [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]])
    assert classifier_targets(table, 4).dtype == np.float32


def test_decode_masks_stacks_classes_in_c_order() -> None:
    # decode's masks are column-major; decode_masks gives (height, width, K) C-contiguous, empty classes zero.
    rles = ["", "2 5 9 4", "", "12 1"]
    masks = decode_masks(rles, (3, 4), (3, 4))
    assert masks.shape == (3, 4, 4) and masks.dtype == np.uint8 and masks.flags.c_contiguous
    for k, text in enumerate(rles):
        np.testing.assert_array_equal(masks[..., k], rle.decode(text, (3, 4)))
    resized = decode_masks(rles, (3, 4), (6, 8))
    assert resized.shape == (6, 8, 4)
    np.testing.assert_array_equal(resized[::2, ::2], masks)  # nearest neighbour at twice the size
    with pytest.raises(RLEError, match="odd number of tokens"):
        decode_masks(["", "1 2 3"], (3, 4), (3, 4))


def one_defect(size: tuple[int, int], rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """A grey image whose only defect (class 2 of 2) is a small bright patch."""
    image = np.full((*size, 3), 100, np.uint8)
    masks = np.zeros((*size, 2), np.uint8)
    image[rows, cols] = 250
    masks[rows, cols, 1] = 1
    return image, masks


@pytest.mark.parametrize("bias", [0.0, 0.5, 1.0])
def test_crops_have_the_crop_size_and_keep_image_and_mask_aligned(bias: float) -> None:
    augment = build_augmentations(NO_AUGMENT, seed=3, crop=CropSpec(32, 64, bias))
    image, masks = one_defect((64, 400), slice(20, 30), slice(300, 310))
    for _ in range(20):
        out = augment(image=image, mask=masks)
        assert out["image"].shape == (32, 64, 3) and out["mask"].shape == (32, 64, 2)
        np.testing.assert_array_equal(out["image"][..., 0] == 250, out["mask"][..., 1] == 1)


def test_defect_bias_places_crops_around_defects() -> None:
    image, masks = one_defect((64, 800), slice(10, 14), slice(700, 704))  # 16 px of 51,200

    def hits(bias: float) -> int:
        augment = build_augmentations(NO_AUGMENT, seed=0, crop=CropSpec(32, 64, bias))
        return sum(int(augment(image=image, mask=masks)["mask"].any()) for _ in range(200))

    assert hits(1.0) == 200  # always around the defect
    assert hits(0.0) < 40  # a random 64-px window of 800 rarely holds it
    assert 70 < hits(0.5) < 140


def test_crops_are_seeded() -> None:
    image, masks = one_defect((64, 400), slice(20, 30), slice(300, 310))
    first, second = (build_augmentations(NO_AUGMENT, 5, CropSpec(32, 64, 0.5)) for _ in range(2))
    for _ in range(5):
        np.testing.assert_array_equal(
            first(image=image, mask=masks)["image"], second(image=image, mask=masks)["image"]
        )


def test_image_table_crops_masks_and_labels(tmp_path: Path) -> None:
    size = (64, 400)
    image, masks = one_defect(size, slice(20, 30), slice(300, 310))
    assert cv2.imwrite(str(tmp_path / "a.png"), image)
    table = pd.DataFrame(
        {
            "ImageId": ["a.png"],
            "height": [64],
            "width": [400],
            "has_defect": [True],
            "rle_1": [""],
            "rle_2": [rle.encode(masks[..., 1])],
        }
    )
    crop = build_augmentations(NO_AUGMENT, 0, CropSpec(32, 64, 1.0))
    tensor, target = ImageTable(table, tmp_path, size, "masks", 2, crop)[0]
    assert tensor.shape == (3, 32, 64) and target.shape == (2, 32, 64)
    assert 0 < target[1].sum() <= 100 and target[0].sum() == 0  # part of the 10x10 patch, at least
    whole, whole_target = ImageTable(table, tmp_path, (32, 200), "masks", 2)[0]  # resized, not cropped
    assert whole.shape == (3, 32, 200) and whole_target.shape == (2, 32, 200)
    _, labels = ImageTable(table, tmp_path, size, "labels", labels=classifier_targets(table, 3))[0]
    assert labels.tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="one row of labels per table row"):
        ImageTable(table, tmp_path, size, "labels")
