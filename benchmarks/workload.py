"""Shared by the model benchmarks: a small synthetic Kaggle-layout folder, the default params, models with
random weights (encoder_weights none: no network), images as the models see them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from stages.core import rle
from stages.core.inference_ops import model_image, normalise
from stages.core.models import IMAGENET_MEAN, IMAGENET_STD, DefectClassifier, build_unet
from stages.core.params import from_mapping, read_params
from stages.core.prepared import Prepared
from stages.core.synthetic import SyntheticSpec, generate, plan_split

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


def section(cls: type, name: str) -> Any:
    """The repository's params.yaml section `name` as its stage's params dataclass."""
    return from_mapping(cls, read_params(REPO / "params.yaml")[name], name)


def classifier_model(params: Any) -> nn.Module:
    torch.manual_seed(0)
    return DefectClassifier(params.backbone, "none", params.dropout, params.head, NUM_CLASSES).eval()


def unet_model(params: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_unet(params.backbone, "none", NUM_CLASSES, params.decoder_channels).eval()


def write_dataset(root: Path, n_train: int, n_test: int, size: tuple[int, int] = (256, 1600)) -> Prepared:
    """Synthetic train (with masks) and test JPEGs in the Kaggle layout under `root`, as a Prepared table
    (every train image in fold 1, so fold 0 is empty: no image is held out)."""
    spec = SyntheticSpec(height=size[0], width=size[1], benign_mark_fraction=0.4)
    tables = {}
    for split, count in (("train", n_train), ("test", n_test)):
        folder = root / f"{split}_images"
        folder.mkdir(parents=True)
        rows = []
        for index, classes in enumerate(plan_split(7, split, count, spec)):
            image, masks = generate(7, split, index, spec, classes)
            name = f"{split}_{index:04d}.jpg"
            assert cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            rows.append([name, *size, *(rle.encode(mask) for mask in masks)])
        columns = ["ImageId", "height", "width", *(f"rle_{k}" for k in range(1, NUM_CLASSES + 1))]
        tables[split] = pd.DataFrame(rows, columns=columns)
    train = tables["train"]
    train["has_defect"] = train[[f"rle_{k}" for k in range(1, NUM_CLASSES + 1)]].ne("").any(axis=1)
    train["fold"] = 1
    test = tables["test"][["ImageId", "height", "width"]]
    sample = pd.DataFrame(
        [(f"{image_id}_{k}", "1 1") for image_id in test["ImageId"] for k in range(1, NUM_CLASSES + 1)],
        columns=["ImageId_ClassId", "EncodedPixels"],
    )
    sample.to_csv(root / "sample_submission.csv", index=False)
    return Prepared(root=root, train=train, test=test, num_classes=NUM_CLASSES, n_folds=5)


def model_batch(folder: Path, image_ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Images as the models see them: (N, 3, h, w) float32, resized and normalised."""
    arrays = [
        normalise(model_image(cv2.imread(str(folder / image_id)), size), IMAGENET_MEAN, IMAGENET_STD)
        for image_id in image_ids
    ]
    return torch.from_numpy(np.stack(arrays))


@dataclass(frozen=True)
class Timing:
    """Seconds of each variant in each round of an interleaved run."""

    rounds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.rounds[name])

    def speedup(self, faster: str, reference: str) -> float:
        """Median over rounds of reference seconds / `faster` seconds: variants run next to each other
        in one round share the machine's load of that moment, which a ratio of overall medians mixes."""
        pairs = zip(self.rounds[reference], self.rounds[faster], strict=True)
        return statistics.median(slow / fast for slow, fast in pairs)

    def rates(self, faster: str, reference: str, images: int) -> str:
        """Both rates for a table's detail, saying how they relate to the ratio beside them."""
        return (
            f"{images / self.median(faster):.2f} vs {images / self.median(reference):.2f} images/s "
            f"(medians of {len(self.rounds[faster])} rounds; the ratio is the median of per-round ratios)"
        )


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timing:
    """Each variant run in turn (A B, B A, A B ...) `repeats` times, after `warmup` untimed rounds
    (allocators, oneDNN kernels, lazy exports), so that a change of machine load hits every variant alike."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(repeats):
        # A B, then B A: a load that rises or falls during a round does not always favour the same one.
        for name in order if repeat % 2 == 0 else reversed(order):
            started = time.perf_counter()
            variants[name]()
            rounds[name].append(time.perf_counter() - started)
    return Timing(rounds)
