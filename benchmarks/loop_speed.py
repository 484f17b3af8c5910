"""Benchmark: the pipeline's own prediction and training loops against the bare model on the same batches.

(a) prediction: the function the stage predicts a folder of test images with (segment: predict_test, which
    reads the JPEGs, resizes, normalises, runs the model with the configured flip TTA and backend,
    upsamples, thresholds and RLE-encodes every candidate mask and writes the candidates and the raw
    submission; classifier: classifier_probabilities) against the same model calls (TTA flips included)
    on the same images preloaded as tensors;
(b) training: one epoch of fit() (stages/core/training.py, with the stage's own data loader, crops and
    augmentations) against forward + backward + optimizer step on the same batches preloaded.
Default params (params.yaml), random weights, synthetic 256x1600 JPEGs in a temporary folder; interleaved
repetitions after a warm-up, medians.

    .venv/bin/python -m benchmarks --only loop_speed
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import Check, machine, table
from benchmarks.workload import (
    Timing,
    classifier_model,
    interleaved,
    model_batch,
    section,
    unet_model,
    write_dataset,
)
from stages.classifier import ClassifierParams, classifier_task
from stages.core import backends
from stages.core.backends import InferenceBackend
from stages.core.device import resolve_runtime
from stages.core.inference import classifier_probabilities
from stages.core.inference_ops import classifier_probabilities as batch_probabilities
from stages.core.inference_ops import flip_tta_probabilities
from stages.core.postprocess import ClassRule
from stages.core.prepared import Prepared
from stages.core.training import FoldTask, fit, make_loader, make_optimizer
from stages.segment import SegmentParams, predict_test, segment_task

PREDICT_TARGET = 0.9
TRAIN_TARGET = 0.85
CPU = resolve_runtime("cpu", False)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The stage functions write their outputs under data/ of the current directory."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def preloaded(prepared: Prepared, size: tuple[int, int], batch_size: int) -> list[torch.Tensor]:
    ids = prepared.test["ImageId"].tolist()
    return [
        model_batch(prepared.test_images, ids[i : i + batch_size], size)
        for i in range(0, len(ids), batch_size)
    ]


def ratio_check(name: str, n: int, timing: Timing, loop: str, raw: str, target: float) -> Check:
    detail = f"{timing.rates(loop, raw, n)} over {n} images"
    return Check(name, timing.speedup(loop, raw), ">=", target, detail=detail)


def segment_prediction(prepared: Prepared, scratch: Path, repeats: int) -> Check:
    params: SegmentParams = section(SegmentParams, "segment")
    model = unet_model(params)
    backend = InferenceBackend(params.inference_backend, "segment.inference_backend")
    run = backends.predictor(model, backend)
    rules = [ClassRule(params.thresholds[len(params.thresholds) // 2], 0)] * prepared.num_classes
    batches = preloaded(prepared, params.input_size, params.predict_batch_size)

    def loop() -> None:
        with working_directory(scratch):
            predict_test(params, prepared, CPU, [model], rules)

    def raw() -> None:
        with torch.inference_mode():
            for batch in batches:
                flip_tta_probabilities([run], batch, params.tta)

    timing = interleaved({"loop": loop, "raw": raw}, repeats)
    name = (
        f"segment test prediction loop vs bare U-Net ({params.tta} TTA, {params.inference_backend}), images/s"
    )
    return ratio_check(name, len(prepared.test), timing, "loop", "raw", PREDICT_TARGET)


def classifier_prediction(prepared: Prepared, repeats: int) -> Check:
    params: ClassifierParams = section(ClassifierParams, "classifier")
    model = classifier_model(params)
    backend = InferenceBackend(params.inference_backend, "classifier.inference_backend")
    run = backends.predictor(model, backend)
    batches = preloaded(prepared, params.input_size, params.batch_size)

    def loop() -> None:
        classifier_probabilities(
            [model],
            prepared.test,
            prepared.test_images,
            params.input_size,
            CPU,
            params.batch_size,
            params.num_workers,
            backend,
        )

    def raw() -> None:
        with torch.inference_mode():
            for batch in batches:
                batch_probabilities([run], batch)

    timing = interleaved({"loop": loop, "raw": raw}, repeats)
    name = f"classifier test scoring loop vs bare {params.backbone} ({params.inference_backend}), images/s"
    return ratio_check(name, len(prepared.test), timing, "loop", "raw", PREDICT_TARGET)


def training(name: str, task: FoldTask, params: Any, prepared: Prepared, images: int, repeats: int) -> Check:
    """One epoch of `images` training images through fit() vs the bare training step on the same batches."""
    params = dataclasses.replace(params, images_per_epoch=images, min_epochs=1, max_epochs=1)
    rows = task.select_train_rows(prepared.train)
    model = task.build_model()

    def loader() -> Any:
        weights = task.sample_weights(rows) if task.sample_weights is not None else None
        dataset = task.train_set(rows, params.seed)
        return make_loader(dataset, params.batch_size, params.num_workers, True, params.seed, images, weights)

    batches = list(loader())  # the same draws and augmentations as fit() sees

    def epoch() -> None:
        train_loader = loader()
        result = fit(
            model,
            train_loader,
            train_loader,  # the validation loader: never read, the evaluate callback below ignores it
            task.loss_fn,
            lambda *_: {"loss": 0.0},
            params,
            CPU,
            lambda *_: None,
            name,
        )
        assert result.train_images == images

    def raw() -> None:
        model.train()
        optimizer = make_optimizer(params, model)
        for batch, target in batches:
            optimizer.zero_grad(set_to_none=True)
            task.loss_fn(model(batch), target).backward()
            optimizer.step()

    timing = interleaved({"fit": epoch, "raw": raw}, repeats)
    check = ratio_check(
        f"{name} training epoch (fit) vs bare step, images/s", images, timing, "fit", "raw", TRAIN_TARGET
    )
    return check


def measure(quick: bool) -> list[Check]:
    repeats = 2 if quick else 4
    checks = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        classifier_params: ClassifierParams = section(ClassifierParams, "classifier")
        segment_params: SegmentParams = section(SegmentParams, "segment")
        n_test = 16 if quick else 32
        prepared = write_dataset(scratch / "data", n_train=32, n_test=n_test)
        checks.append(segment_prediction(prepared, scratch, repeats))
        checks.append(classifier_prediction(prepared, repeats))
        checks.append(
            training(
                "segment",
                segment_task(segment_params, prepared, CPU),
                segment_params,
                prepared,
                16 if quick else 32,
                repeats,
            )
        )
        checks.append(
            training(
                "classifier",
                classifier_task(classifier_params, prepared, CPU),
                classifier_params,
                prepared,
                16 if quick else 32,
                repeats,
            )
        )
    backends.clear_cache()
    return checks


if __name__ == "__main__":
    print(f"machine: {machine()}")
    print(table(measure(quick=False)))
