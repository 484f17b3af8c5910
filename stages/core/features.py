"""The allMissing classifier's pooled features: what its linear head sees, one vector per image.

A DefectClassifier is an smp encoder followed by smp's ClassificationHead (pool, flatten, dropout, linear,
activation). The features here are the pooled, flattened encoder output (1024 numbers for DenseNet121); the
head's remaining layers turn them into the model's logits, so one forward pass gives both and the scores
that go with the features are exactly the model's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages.core.device import Runtime, inference
from stages.core.inference import batches
from stages.core.models import DefectClassifier


def features_and_logits(model: DefectClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) pooled features and (N, C) logits of a batch; the logits equal model(images)."""
    pool, flatten, dropout, linear, activation = model.classification_head
    features = flatten(pool(model.encoder(images)[-1]))
    # clone(): the head's dropout works in place, and the features must stay as pooled.
    return features, activation(linear(dropout(features.clone())))


def classifier_features(
    model: DefectClassifier,
    table: pd.DataFrame,
    folder: Path,
    size: tuple[int, int],
    runtime: Runtime,
    batch_size: int,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float64 pooled features and (N, C) sigmoid probabilities (column 0 allMissing) of a table's
    images (ImageId, height, width), in table order, read and normalised as the classifier sees them."""
    model = runtime.model(model).eval()  # type: ignore[assignment]
    features: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    with inference(runtime):
        for images, indices in batches(table, folder, size, batch_size, num_workers):
            batch_features, logits = features_and_logits(model, runtime.batch(images))
            if features is None or probabilities is None:
                features = np.empty((len(table), batch_features.shape[1]), np.float64)
                probabilities = np.empty((len(table), logits.shape[1]), np.float64)
            features[indices] = batch_features.float().cpu().numpy()
            probabilities[indices] = torch.sigmoid(logits.float()).cpu().numpy()
    if features is None or probabilities is None:  # an empty table
        width = model.classification_head[3].in_features
        return np.empty((0, width)), np.empty((0, model.outputs))
    return features, probabilities
