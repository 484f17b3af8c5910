"""Benchmark: an inference backend (stages/core/backends.py) against eager PyTorch, on the default models.

The classifier (params `classifier`: DenseNet121 at 64x384, batch classifier.batch_size) and the U-Net
(params `segment`: resnet18, decoder_channels, 128x800, batch segment.predict_batch_size, flip TTA
segment.tta), random weights, on synthetic steel images: images/s of the backend over eager, interleaved
repetitions after a warm-up (the export is not timed; its seconds are in the detail), and whether the
backend's outputs agree with eager's (U-Net: Dice of the thresholded masks; classifier: probabilities).

    .venv/bin/python -m benchmarks --only backend_speed
    .venv/bin/python -m benchmarks.backend_speed [--quick] [--backend compile]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.report import Check, machine, table
from benchmarks.workload import (
    classifier_model,
    interleaved,
    model_batch,
    section,
    unet_model,
    write_dataset,
)
from stages.classifier import ClassifierParams
from stages.core import backends
from stages.core.backends import InferenceBackend
from stages.core.inference_ops import classifier_probabilities, flip_tta_probabilities
from stages.segment import SegmentParams

SPEED_TARGET = 1.25
DICE_TARGET = 0.999
PROBABILITY_TARGET = 1e-3  # max |backend - eager| of a classifier probability
MASK_THRESHOLD = 0.5


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice of two boolean masks over all their pixels (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def compare(
    name: str,
    model: torch.nn.Module,
    batch: torch.Tensor,
    forward: Callable[[list, torch.Tensor], torch.Tensor],
    backend: str,
    repeats: int,
) -> tuple[float, str, torch.Tensor, torch.Tensor]:
    """images/s ratio backend / eager, the detail, and both outputs of the batch."""
    run = backends.predictor(model, InferenceBackend(backend, f"{name}.inference_backend"))
    started = time.perf_counter()
    with torch.inference_mode():
        got = forward([run], batch)  # exports / compiles
    prepare_s = time.perf_counter() - started
    with torch.inference_mode():
        expected = forward([model], batch)
        timing = interleaved(
            {"eager": lambda: forward([model], batch), backend: lambda: forward([run], batch)}, repeats
        )
    n = len(batch)
    detail = (
        f"{timing.rates(backend, 'eager', n)}, batch {n} of {tuple(batch.shape[2:])}; "
        f"{backend} prepared in {prepare_s:.0f} s"
    )
    return timing.speedup(backend, "eager"), detail, got, expected


def measure(quick: bool, backend: str = "onnxruntime") -> list[Check]:
    repeats = 3 if quick else 7
    classifier_params = section(ClassifierParams, "classifier")
    segment_params = section(SegmentParams, "segment")
    checks = []
    with tempfile.TemporaryDirectory() as scratch:
        n = max(classifier_params.batch_size, segment_params.predict_batch_size)
        prepared = write_dataset(Path(scratch), 0, n)
        ids = prepared.test["ImageId"].tolist()

        batch = model_batch(
            prepared.test_images, ids[: classifier_params.batch_size], classifier_params.input_size
        )
        ratio, detail, got, expected = compare(
            "classifier",
            classifier_model(classifier_params),
            batch,
            classifier_probabilities,
            backend,
            repeats,
        )
        label = f"classifier {classifier_params.backbone} {backend} vs eager, images/s"
        checks.append(Check(label, ratio, ">=", SPEED_TARGET, detail=detail))
        difference = float((got - expected).abs().max())
        checks.append(
            Check(
                f"classifier {backend} probabilities: max abs difference to eager",
                difference,
                "<=",
                PROBABILITY_TARGET,
                unit="",
                detail=f"over {got.numel()} probabilities of {len(got)} images",
            )
        )

        tta = segment_params.tta
        batch = model_batch(
            prepared.test_images, ids[: segment_params.predict_batch_size], segment_params.input_size
        )
        ratio, detail, got, expected = compare(
            "segment",
            unet_model(segment_params),
            batch,
            lambda models, images: flip_tta_probabilities(models, images, tta),
            backend,
            repeats,
        )
        label = f"U-Net {segment_params.backbone} ({tta} TTA) {backend} vs eager, images/s"
        checks.append(Check(label, ratio, ">=", SPEED_TARGET, detail=detail))
        mask, eager_mask = got >= MASK_THRESHOLD, expected >= MASK_THRESHOLD
        checks.append(
            Check(
                f"U-Net {backend} masks p >= {MASK_THRESHOLD}: Dice vs eager",
                dice(mask, eager_mask),
                ">=",
                DICE_TARGET,
                unit="",
                detail=f"{int((mask != eager_mask).sum())} of {mask.numel()} pixels differ; "
                f"max abs(p - p_eager) {float((got - expected).abs().max()):.2g}",
            )
        )
    backends.clear_cache()
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=[name for name in backends.BACKENDS if name != "eager"])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(table(measure(args.quick, args.backend or "onnxruntime")))


if __name__ == "__main__":
    main()
