"""Batched, streaming model inference over an image table (memory does not grow with the table). Under
torchrun each rank predicts its strided shard of the table (stages.core.distributed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stages.core.backends import EAGER, InferenceBackend, predictors
from stages.core.device import Runtime, inference
from stages.core.distributed import ordered_by_id
from stages.core.images import ImageTable
from stages.core.inference_ops import classifier_probabilities as batch_probabilities
from stages.core.inference_ops import flip_tta_probabilities, upsample
from stages.core.training import make_loader


def batches(
    table: pd.DataFrame, folder: Path, size: tuple[int, int], batch_size: int, num_workers: int
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """(images, row indices) batches of a table's images at the model's input size."""
    loader = make_loader(ImageTable(table, folder, size), batch_size, num_workers)
    for images, indices in loader:
        yield images, indices.numpy()


def classifier_probabilities(
    models: Sequence[nn.Module],
    table: pd.DataFrame,
    folder: Path,
    size: tuple[int, int],
    runtime: Runtime,
    batch_size: int,
    num_workers: int = 0,
    backend: InferenceBackend = EAGER,
) -> np.ndarray:
    """(N, C) sigmoid probabilities of the classifier's columns per row (column 0 allMissing = P(no
    defect), then P(class k present) for a multilabel head), averaged over the given models. Under
    torchrun each rank scores its shard and every rank returns the whole table's, gathered by ImageId (as
    one process would give them, up to float noise: a shard's batches hold other images, and a batch's
    size and content can change the last bits of a convolution's result)."""
    group = runtime.group
    if not group.distributed:
        return _probabilities(models, table, folder, size, runtime, batch_size, num_workers, backend)
    shard = group.shard(table)
    local = _probabilities(models, shard, folder, size, runtime, batch_size, num_workers, backend)
    parts = group.all_gather(list(zip(shard["ImageId"], local, strict=True)))
    rows = ordered_by_id(table["ImageId"].tolist(), parts)
    return np.stack(rows) if rows else local


def _probabilities(
    models: Sequence[nn.Module],
    table: pd.DataFrame,
    folder: Path,
    size: tuple[int, int],
    runtime: Runtime,
    batch_size: int,
    num_workers: int,
    backend: InferenceBackend,
) -> np.ndarray:
    models = [runtime.model(model).eval() for model in models]
    run = predictors(models, backend)  # the models themselves unless an optimised backend is chosen
    result: np.ndarray | None = None
    with inference(runtime):
        for images, indices in batches(table, folder, size, batch_size, num_workers):
            images = runtime.batch(images)
            probabilities = batch_probabilities(run, images)
            if result is None:
                result = np.empty((len(table), probabilities.shape[1]), dtype=np.float64)
            result[indices] = probabilities.cpu().numpy()
    if result is None:  # an empty table: no batch told the column count
        result = np.empty((0, getattr(models[0], "outputs", 1)), dtype=np.float64)
    return result


def predict_probabilities(
    models: Sequence[nn.Module],
    table: pd.DataFrame,
    folder: Path,
    size: tuple[int, int],
    runtime: Runtime,
    batch_size: int,
    tta: str = "none",
    num_workers: int = 0,
    backend: InferenceBackend = EAGER,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (ImageId, (K, H, W) float32 probabilities at the image's original size) image by image, in
    table order: each whole image is predicted at the model's input size `size` (the prediction scale),
    averaged over the models and the flips of `tta`, then upsampled. A generator: memory does not grow
    with the number of images."""
    run = predictors([runtime.model(model).eval() for model in models], backend)
    image_ids = table["ImageId"].tolist()
    originals = list(zip(table["height"].astype(int), table["width"].astype(int), strict=True))
    for images, indices in batches(table, folder, size, batch_size, num_workers):
        with inference(runtime):
            probabilities = flip_tta_probabilities(run, runtime.batch(images), tta).cpu().numpy()
        for probability, index in zip(probabilities, indices, strict=True):
            yield image_ids[index], upsample(probability, originals[index])
