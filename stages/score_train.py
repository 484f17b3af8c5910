"""Stage score_train (notebook 2): out-of-fold allMissing for every train image.

Each image is scored only by the fold model that validated on it (did not train on it), so the threshold
is chosen on honest scores. Images no fold model held out (when fewer folds were trained than
prepared) are scored by the average of all models and flagged out_of_fold = False.
Output data/train_missing_count.csv: ImageId, allMissing, has_defect, fold, out_of_fold, and with a
multilabel classifier p_1 ... p_K (each class's presence probability, out-of-fold in the same way);
data/metrics/score_train.json (DVC metrics): images scored per second, wall time, peak memory.
With `nproc_per_node` > 1 it runs under torchrun: each process scores its share of the images, rank 0 writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core import cli
from stages.core.backends import BackendName, InferenceBackend
from stages.core.device import resolve_runtime
from stages.core.distributed import run_under_torchrun
from stages.core.errors import PipelineError
from stages.core.headline import write_headline
from stages.core.inference import classifier_probabilities
from stages.core.io import write_csv
from stages.core.models import load_classifier
from stages.core.params import load_section, require
from stages.core.prepared import load_prepared

MODEL_DIR = Path("models/classifier")
OUTPUT = Path("data/train_missing_count.csv")
HEADLINE_FILE = Path("data/metrics/score_train.json")


@dataclass(frozen=True)
class ScoreTrainParams:
    batch_size: int = 32
    device: str = "auto"
    mixed_precision: bool = True
    num_workers: int = 0
    nproc_per_node: int = 1  # > 1: under torchrun, each process scores a share of the images
    inference_backend: BackendName = "eager"  # eager | onnxruntime | compile (stages/core/backends.py)

    def validate(self, section: str) -> None:
        require(self.batch_size >= 1, f"{section}.batch_size", "must be at least 1", self.batch_size)
        require(self.num_workers >= 0, f"{section}.num_workers", "must be >= 0", self.num_workers)
        require(
            self.nproc_per_node >= 1, f"{section}.nproc_per_node", "must be at least 1", self.nproc_per_node
        )


def main() -> None:
    params = load_section(ScoreTrainParams, "score_train")
    run_under_torchrun("stages.score_train", params.nproc_per_node, "score_train.nproc_per_node")
    prepared = load_prepared()
    runtime = resolve_runtime(params.device, params.mixed_precision, "score_train.device")
    # Timed as classifier and segment time themselves: from the runtime on, peak memory of the process
    # (of the GPU on CUDA).
    started = time.perf_counter()
    runtime.reset_peak_memory()
    paths = sorted(MODEL_DIR.glob("fold_*.pt"))
    if not paths:
        raise PipelineError(f"{MODEL_DIR}: no fold_*.pt checkpoints; run `dvc repro classifier` first")
    loaded = [load_classifier(path) for path in paths]
    columns = {model.outputs for model, _ in loaded}
    if len(columns) != 1 or not columns <= {1, 1 + prepared.num_classes}:
        raise PipelineError(
            f"{MODEL_DIR}: the fold checkpoints' heads do not fit {prepared.num_classes} classes "
            "or differ from each other; rerun `dvc repro classifier`"
        )
    backend = InferenceBackend(params.inference_backend, "score_train.inference_backend")
    train = prepared.train
    scores = np.full((len(train), columns.pop()), np.nan)
    scoring = time.perf_counter()
    out_of_fold = np.zeros(len(train), dtype=bool)
    for model, checkpoint in loaded:
        rows = np.flatnonzero(train["fold"].to_numpy() == checkpoint["val_fold"])
        size = tuple(checkpoint["config"]["input_size"])
        scores[rows] = classifier_probabilities(
            [model],
            train.iloc[rows],
            prepared.train_images,
            size,
            runtime,
            params.batch_size,
            params.num_workers,
            backend,
        )
        out_of_fold[rows] = True
    rest = np.flatnonzero(~out_of_fold)
    if rest.size:
        size = tuple(loaded[0][1]["config"]["input_size"])
        models = [model for model, _ in loaded]
        scores[rest] = classifier_probabilities(
            models,
            train.iloc[rest],
            prepared.train_images,
            size,
            runtime,
            params.batch_size,
            params.num_workers,
            backend,
        )
    scoring_seconds = time.perf_counter() - scoring
    if not runtime.group.is_main:
        return
    table = pd.DataFrame(
        {
            "ImageId": train["ImageId"],
            "allMissing": scores[:, 0],
            "has_defect": train["has_defect"].astype(bool),
            "fold": train["fold"],
            "out_of_fold": out_of_fold,
        }
    )
    for k in range(1, scores.shape[1]):
        table[f"p_{k}"] = scores[:, k]
    write_csv(table, OUTPUT)
    timing = {
        "images_per_s": round(len(train) / scoring_seconds, 2) if scoring_seconds else None,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(runtime.peak_memory_mb(), 1),
    }
    write_headline(timing, HEADLINE_FILE)
    print(
        f"score_train: {len(table)} train images scored, {int(out_of_fold.sum())} out-of-fold -> {OUTPUT}; "
        f"{timing['images_per_s']} images/s, {timing['wall_time_s']} s"
    )


if __name__ == "__main__":
    cli.run(main)
