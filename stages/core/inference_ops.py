"""Inference pieces shared by the pipeline and the Kaggle bundle's predict.py: image decoding and
normalisation, classifier averaging, flip TTA, upsampling, the gate, the masks a rule keeps, RLE encoding.

Imports only torch, numpy and OpenCV, nothing of this repository: the bundle stage inlines this file into
predict.py (see stages/core/kaggle_predict.py), so `dvc repro` and the Kaggle notebook compute the same
thing from one source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

GATING_MODES = ("none", "image", "class", "soft")
TTA_MODES = ("none", "hflip", "hvflip")
JPEG_SUFFIXES = (".jpg", ".jpeg")
_REDUCED_JPEG = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)

Model = Callable[[torch.Tensor], torch.Tensor]


def decode_flag(suffix: str, original: tuple[int, int], size: tuple[int, int]) -> int:
    """OpenCV's decode flag for an image of `original` (height, width) that a model sees at `size`: a JPEG
    at least 2, 4 or 8 times the model input is decoded at that scale, which skips most of the work."""
    if suffix.lower() in JPEG_SUFFIXES:
        for factor, reduced in _REDUCED_JPEG:
            if original[0] // factor >= size[0] and original[1] // factor >= size[1]:
                return reduced
    return cv2.IMREAD_COLOR


def model_image(decoded_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A decoded BGR image as the models' RGB uint8 input of `size` (height, width)."""
    if decoded_bgr.shape[:2] != size:
        decoded_bgr = cv2.resize(decoded_bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(decoded_bgr, cv2.COLOR_BGR2RGB)


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32, (x / 255 - mean) / std per channel."""
    scaled = (image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def classifier_probabilities(models: Sequence[Model], images: torch.Tensor) -> torch.Tensor:
    """(N, C) sigmoid probabilities of the classifier's columns (0: allMissing, then p_k), averaged over
    the models."""
    return torch.stack([torch.sigmoid(model(images).float()) for model in models]).mean(0)


def flip_tta_probabilities(models: Sequence[Model], images: torch.Tensor, tta: str) -> torch.Tensor:
    """Sigmoid probabilities (N, K, h, w) averaged over the models and the flips of `tta`
    (none | hflip | hvflip); each flipped prediction is flipped back before averaging."""
    flips: list[tuple[int, ...]] = [()]
    if tta in ("hflip", "hvflip"):
        flips.append((-1,))
    if tta == "hvflip":
        flips.append((-2,))
    total = None
    for model in models:
        for dims in flips:
            flipped = images.flip(dims) if dims else images
            probability = torch.sigmoid(model(flipped).float())
            probability = probability.flip(dims) if dims else probability
            total = probability if total is None else total + probability
    assert total is not None
    return total / (len(models) * len(flips))


def upsample(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) float probabilities -> (K, H, W), bilinear."""
    if probabilities.shape[1:] == size:
        return probabilities
    resized = cv2.resize(probabilities.transpose(1, 2, 0), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(size[0], size[1], -1).transpose(2, 0, 1)


def float32_bound(threshold: float) -> np.float32 | None:
    """The smallest float32 not below `threshold`: for a float32 p, p >= threshold (exactly, as in float64)
    if and only if p >= this bound. None when there is none (a threshold past float32's range, or NaN)."""
    threshold = float(threshold)
    if not abs(threshold) <= float(np.finfo(np.float32).max):
        return None
    bound = np.float32(threshold)  # the nearest float32: may lie just below the threshold
    if float(bound) < threshold:
        bound = np.nextafter(bound, np.float32(np.inf))
    return bound


def class_mask(probability: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate mask `probability >= threshold`, exact as a float64 comparison whatever the array's
    dtype (a float32 comparison with the threshold rounded to float32 could flip a pixel at the boundary).
    A float32 array is compared with the threshold's float32 bound instead: the same mask, without
    converting every pixel to float64 (about 3x faster on a 256x1600 mask)."""
    if probability.dtype == np.float32:
        bound = float32_bound(threshold)
        if bound is not None:
            return probability >= bound
    return probability >= np.float64(threshold)


# The pipeline's stages.core.rle.encode is the same codec; it stays there so that synthesize, prepare
# and threshold do not depend on (and rerun for) this inference module. Tests check the two agree.
def encode_rle(mask: np.ndarray) -> str:
    """A 2-D mask (non-zero = set) as the competition's RLE: pixels numbered from 1 top to bottom, then
    left to right, as "start length" pairs; "" for an empty mask."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    if mask.size == 0:
        return ""
    # Column-major pixels: a view when the mask already is; else OpenCV's transpose (numpy's transposing
    # copy of bytes is about 10x slower).
    if mask.flags.f_contiguous:
        flat = mask.ravel(order="F")
        flat = flat if flat.dtype == np.bool_ else flat != 0
    else:
        flat = cv2.transpose(np.ascontiguousarray(mask != 0).view(np.uint8)).ravel().view(np.bool_)
    # Run boundaries (0-based: a run covers [edge 2i, edge 2i+1)); the first and last pixel open or close a
    # run there without padding the whole array.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    if edges.size == 0:
        return ""
    runs = edges.copy()
    runs[0::2] += 1  # 1-based starts
    runs[1::2] -= edges[0::2]  # lengths
    return " ".join(map(str, runs.tolist()))


@dataclass(frozen=True)
class Gate:
    """What the classifier lets through, per (image, class): `keep` (N, K) bool; `weight` (N, K): a kept
    mask survives min area a when weight * area >= a."""

    keep: np.ndarray
    weight: np.ndarray

    @classmethod
    def open(cls, n_images: int, num_classes: int) -> Gate:
        return cls(np.ones((n_images, num_classes), bool), np.ones((n_images, num_classes)))


def gate_for(
    mode: str,
    all_missing: np.ndarray,
    presence: np.ndarray | None,
    num_classes: int,
    image_threshold: float | None,
    class_thresholds: Sequence[float] | None = None,
) -> Gate:
    """The gate of one mode for N images.

    none: every mask goes through. image: every mask of an image with allMissing >= image_threshold is
    wiped. class: the mask of class k is wiped where presence[:, k] < class_thresholds[k]. soft: nothing
    is wiped outright, the weight is presence[:, k] (1 - allMissing for a binary classifier).
    """
    all_missing = np.asarray(all_missing, dtype=np.float64)
    n = len(all_missing)
    if mode == "none":
        return Gate.open(n, num_classes)
    if mode == "image":
        if image_threshold is None:
            raise ValueError("image gating needs a threshold")
        keep = np.repeat((all_missing < image_threshold)[:, None], num_classes, axis=1)
        return Gate(keep, np.ones((n, num_classes)))
    if mode == "class":
        if presence is None or class_thresholds is None:
            raise ValueError("class gating needs a presence probability and a threshold per class")
        keep = np.asarray(presence, np.float64) >= np.asarray(class_thresholds, np.float64)[None, :]
        return Gate(keep, np.ones((n, num_classes)))
    if mode == "soft":
        if presence is None:
            weight = np.repeat((1.0 - all_missing)[:, None], num_classes, axis=1)
        else:
            weight = np.asarray(presence, dtype=np.float64)
        return Gate(np.ones((n, num_classes), bool), weight)
    raise ValueError(f"unknown gating mode {mode!r}; choose from {', '.join(GATING_MODES)}")


def kept_masks(area: np.ndarray, keep: np.ndarray, weight: np.ndarray, min_area: np.ndarray) -> np.ndarray:
    """Whether each mask survives: gated through, not empty, weighted area at least the min area.
    Broadcasts; area, keep and weight share a shape, min_area broadcasts against it."""
    return keep & (area > 0) & (weight * area >= min_area)


def submitted_masks(
    probabilities: np.ndarray,
    thresholds: Sequence[float],
    min_areas_px: Sequence[int],
    keep: np.ndarray,
    weight: np.ndarray,
) -> list[np.ndarray | None]:
    """One image's submitted masks, per class k: the candidate mask at thresholds[k] when the gate (row
    `keep`, `weight` of shape (K,)) and min_areas_px[k] keep it, else None."""
    result: list[np.ndarray | None] = []
    for k, (threshold, min_area) in enumerate(zip(thresholds, min_areas_px, strict=True)):
        mask = class_mask(probabilities[k], threshold)
        area = np.float64(np.count_nonzero(mask))
        kept = kept_masks(area, keep[k], np.float64(weight[k]), np.float64(min_area))
        result.append(mask if kept else None)
    return result
