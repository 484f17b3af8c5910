"""Image and mask loading for the models: resize to the model's input size, augment, normalise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# albumentations asks PyPI for a newer version at import: a network call every stage would make (and wait
# on, offline). The pipeline pins its version.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from stages.core import rle
from stages.core.errors import PipelineError
from stages.core.inference_ops import decode_flag, model_image, normalise
from stages.core.models import IMAGENET_MEAN, IMAGENET_STD

# OpenCV logs a warning line of its own for a file it cannot decode; read_image reports it as the stage's
# one error line instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def read_image(path: Path, original: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 image of `original` (height, width) on disk, resized to `size` (height, width); decoded
    and resized as the Kaggle bundle's predict.py does (a JPEG at a reduced scale when the model input
    is small enough)."""
    image = cv2.imread(str(path), decode_flag(path.suffix, original, size))
    if image is None:
        raise PipelineError(f"{path}: unreadable image")
    return model_image(image, size)


def decode_masks(rles: list[str], original: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(height, width, K) uint8 0/1 masks at `size`, decoded at the original size then resized."""
    masks = np.zeros((*original, len(rles)), dtype=np.uint8)
    for k, text in enumerate(rles):
        if not rle.is_empty(text):  # most classes of most images are empty: nothing to decode or copy
            masks[..., k] = rle.decode(text, original)  # decode's column-major mask into C order
    if original != size:
        masks = cv2.resize(masks, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        masks = masks.reshape(size[0], size[1], len(rles))  # cv2 drops a trailing axis of length 1
    return masks


@dataclass(frozen=True)
class AugmentParams:
    """Albumentations applied to training images (and their masks); probabilities in [0, 1]."""

    horizontal_flip: float = 0.5
    vertical_flip: float = 0.5
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    gauss_noise: float = 0.0

    def validate(self, section: str) -> None:
        from stages.core.params import require

        for name in ("horizontal_flip", "vertical_flip", "brightness_contrast", "gauss_noise"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{section}.{name}", "must be a probability in [0, 1]", value)
        for name in ("brightness_limit", "contrast_limit"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{section}.{name}", "must be in [0, 1]", value)


@dataclass(frozen=True)
class CropSpec:
    """Training crops of (height, width) taken from the image at the model's input size; with probability
    `defect_bias` the crop is placed around a random mask pixel (when the image has one), so that small,
    rare defects are not mostly cropped away."""

    height: int
    width: int
    defect_bias: float = 0.0


def crop_transform(crop: CropSpec) -> A.BasicTransform:
    # OneOf normalises its children's p: defect_bias of the time around a mask pixel, else anywhere.
    return A.OneOf(
        [
            A.CropNonEmptyMaskIfExists(crop.height, crop.width, p=crop.defect_bias),
            A.RandomCrop(crop.height, crop.width, p=1.0 - crop.defect_bias),
        ],
        p=1.0,
    )


def build_augmentations(params: AugmentParams, seed: int, crop: CropSpec | None = None) -> A.Compose:
    """The training augmentations, after a random crop when `crop` is given; albumentations has its own
    random generator, seeded here."""
    return A.Compose(
        ([crop_transform(crop)] if crop is not None else [])
        + [
            A.HorizontalFlip(p=params.horizontal_flip),
            A.VerticalFlip(p=params.vertical_flip),
            A.RandomBrightnessContrast(
                brightness_limit=params.brightness_limit,
                contrast_limit=params.contrast_limit,
                p=params.brightness_contrast,
            ),
            A.GaussNoise(p=params.gauss_noise),
        ],
        seed=seed,
    )


def _random_parts(transform: object) -> list[object]:
    """The transform and every nested transform: each holds its own albumentations random generators."""
    parts = [transform]
    for child in getattr(transform, "transforms", []):
        parts.extend(_random_parts(child))
    return parts


def augmentation_rng_state(augment: A.Compose) -> list[dict[str, Any]]:
    """The random state of a pipeline of augmentations (plain types: saved with a resume state)."""
    return [
        {"numpy": part.random_generator.bit_generator.state, "python": part.py_random.getstate()}
        for part in _random_parts(augment)
    ]


def set_augmentation_rng_state(augment: A.Compose, state: list[dict[str, Any]]) -> None:
    parts = _random_parts(augment)
    if len(parts) != len(state):
        raise ValueError(f"augmentation state of {len(state)} transforms for {len(parts)} transforms")
    for part, saved in zip(parts, state, strict=True):
        part.random_generator.bit_generator.state = saved["numpy"]
        version, internal, gauss = saved["python"]
        part.py_random.setstate((version, tuple(internal), gauss))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 RGB -> CHW float32 normalised with the ImageNet statistics the encoders expect."""
    return torch.from_numpy(normalise(image, IMAGENET_MEAN, IMAGENET_STD))


def classifier_targets(table: pd.DataFrame, outputs: int) -> np.ndarray:
    """(N, outputs) float32 targets of the classifier's columns: 0 = allMissing (no defect of any class),
    k = class k present (rle_k not empty), for k < outputs."""
    targets = np.empty((len(table), outputs), dtype=np.float32)
    targets[:, 0] = ~table["has_defect"].astype(bool).to_numpy()
    for k in range(1, outputs):
        targets[:, k] = table[f"rle_{k}"].ne("").to_numpy()
    return targets


class ImageTable(Dataset):
    """Images of a table (ImageId, height, width[, rle_1..rle_K]) at the model's input size.

    target: "none" -> (image, index); "labels" -> (image, labels[index]) for an (N, C) array `labels`;
    "masks" -> (image, (K, h, w) float masks). Augmentations (crops included) apply to image and masks
    together, so a crop gives a smaller image than `size`.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        folder: Path,
        size: tuple[int, int],
        target: str = "none",
        num_classes: int = 0,
        augment: A.Compose | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.image_ids = table["ImageId"].tolist()
        self.originals = list(zip(table["height"].astype(int), table["width"].astype(int), strict=True))
        self.folder, self.size, self.target, self.augment = folder, size, target, augment
        if target == "labels":
            if labels is None or len(labels) != len(table):
                raise ValueError("target 'labels' needs one row of labels per table row")
            self.labels = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        if target == "masks":
            self.rles = table[[f"rle_{c}" for c in range(1, num_classes + 1)]].to_numpy().tolist()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        original = self.originals[index]
        image = read_image(self.folder / self.image_ids[index], original, self.size)
        if self.target == "masks":
            masks = decode_masks(self.rles[index], original, self.size)
            if self.augment is not None:
                augmented = self.augment(image=image, mask=masks)
                image, masks = augmented["image"], augmented["mask"]
            return to_tensor(image), torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).float()
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        if self.target == "labels":
            return to_tensor(image), self.labels[index]
        return to_tensor(image), torch.tensor(index)
