"""predict.py of the Kaggle bundle: the trained pipeline (classifier, gate, U-Net, rules) on an image folder.

Self-contained on purpose: it needs only torch, numpy, pandas and OpenCV (what a Kaggle GPU image has),
never this repository, dvc, smp or albumentations. The bundle stage writes it into models/kaggle/ as
predict.py, beside the TorchScript models and bundle.json, with stages/core/inference_ops.py (the
inference pieces the pipeline itself runs) pasted in place of the import block marked below.

    python predict.py --images DIR --sample SAMPLE_SUBMISSION.csv --out submission.csv
                      [--bundle DIR] [--batch-size N] [--device auto|cpu|cuda] [--metrics FILE]

The submission is written in the sample submission's own format (old `ImageId_ClassId,EncodedPixels` or
new `ImageId,ClassId,EncodedPixels`), one row per sample image and class, to a temporary file that
replaces --out only when complete.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

# inline-begin: stages/core/inference_ops.py
from stages.core.inference_ops import (
    GATING_MODES,
    TTA_MODES,
    Gate,
    classifier_probabilities,
    decode_flag,
    encode_rle,
    flip_tta_probabilities,
    gate_for,
    model_image,
    normalise,
    submitted_masks,
    upsample,
)

# inline-end

CONFIG_NAME = "bundle.json"
BUNDLE_VERSION = 1


class BundleError(Exception):
    """A problem with the bundle, the images or the sample submission: one line, exit code 1."""


def read_sample(path: Path) -> tuple[list[str], list[str]]:
    """(columns, image ids in order of first appearance) of a sample submission in either format."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    columns = list(frame.columns)
    if set(columns) == {"ImageId_ClassId", "EncodedPixels"}:
        keys = frame["ImageId_ClassId"]
        if not keys.str.contains("_").all():
            raise BundleError(f"{path}: ImageId_ClassId values must look like IMAGE_CLASS")
        ids = keys.str.rsplit("_", n=1).str[0]
    elif set(columns) == {"ImageId", "ClassId", "EncodedPixels"}:
        ids = frame["ImageId"]
    else:
        raise BundleError(
            f"{path}: expected columns ImageId_ClassId,EncodedPixels or ImageId,ClassId,EncodedPixels, "
            f"got {','.join(columns)}"
        )
    return columns, list(dict.fromkeys(ids))


def submission_rows(image_id: str, rles: Sequence[str], columns: Sequence[str]) -> list[list[object]]:
    """One image's rows (classes 1..K in order) in the sample's column order. The pipeline's writer
    (stages.core.dataset.submission_rows) cannot be imported here; the bundle test checks both write
    the same bytes."""
    rows = []
    for class_id, text in enumerate(rles, start=1):
        values = {
            "ImageId": image_id,
            "ClassId": class_id,
            "EncodedPixels": text,
            "ImageId_ClassId": f"{image_id}_{class_id}",
        }
        rows.append([values[column] for column in columns])
    return rows


def load_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not found (--bundle must be the folder holding {CONFIG_NAME})") from None
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: not readable JSON ({error})") from None
    if config.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle_version {config.get('bundle_version')!r}, expected {BUNDLE_VERSION}"
        )
    for key in ("num_classes", "normalisation", "classifier", "segmentation", "gating", "rules"):
        if key not in config:
            raise BundleError(f"{path}: no {key!r}")
    gating, num_classes = config["gating"], config["num_classes"]
    if gating["mode"] not in GATING_MODES:
        raise BundleError(f"{path}: gating.mode {gating['mode']!r} is not one of {GATING_MODES}")
    if gating["mode"] == "image" and not isinstance(gating.get("image_threshold"), (int, float)):
        raise BundleError(f"{path}: image gating needs a number in gating.image_threshold")
    if gating["mode"] == "class" and (
        not isinstance(gating.get("class_thresholds"), list) or len(gating["class_thresholds"]) != num_classes
    ):
        raise BundleError(f"{path}: class gating needs {num_classes} numbers in gating.class_thresholds")
    if config["segmentation"]["tta"] not in TTA_MODES:
        raise BundleError(
            f"{path}: segmentation.tta {config['segmentation']['tta']!r} is not one of {TTA_MODES}"
        )
    if len(config["rules"]) != config["num_classes"]:
        raise BundleError(f"{path}: {len(config['rules'])} rules for {config['num_classes']} classes")
    return config


def load_models(folder: Path, names: Sequence[str], device: torch.device) -> list[torch.jit.ScriptModule]:
    models = []
    for name in names:
        path = folder / name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated in recent torch, still loads
                models.append(torch.jit.load(str(path), map_location=device).eval())
        except (OSError, RuntimeError, ValueError) as error:
            raise BundleError(
                f"{path}: not a loadable TorchScript model ({' '.join(str(error).split())[:200]})"
            ) from None
    if not models:
        raise BundleError(f"{folder / CONFIG_NAME}: lists no models")
    return models


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BundleError("--device cuda: no CUDA device is available")
    return torch.device(name)


class DecodedImage:
    """One image file, read once and decoded at the scales the models need."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = np.fromfile(str(path), dtype=np.uint8)
        except OSError as error:
            raise BundleError(f"{path}: cannot read ({error.strerror or error})") from None
        full = cv2.imdecode(self.data, cv2.IMREAD_COLOR) if self.data.size else None
        if full is None:
            raise BundleError(f"{path}: unreadable image")
        self.full = full
        self.original: tuple[int, int] = (int(full.shape[0]), int(full.shape[1]))

    def at(self, size: tuple[int, int]) -> np.ndarray:
        flag = decode_flag(self.path.suffix, self.original, size)
        decoded = self.full if flag == cv2.IMREAD_COLOR else cv2.imdecode(self.data, flag)
        if decoded is None:
            raise BundleError(f"{self.path}: unreadable image")
        return model_image(decoded, size)


@dataclass(frozen=True)
class Prediction:
    image_id: str
    scores: np.ndarray  # (C,): allMissing, then p_1..p_K for a multilabel classifier
    masks: list[np.ndarray | None]  # per class: the submitted mask, None = empty


class Predictor:
    """The bundle's models and rules on a device."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.config = config = load_config(folder)
        self.device = device
        self.num_classes = int(config["num_classes"])
        self.mean, self.std = config["normalisation"]["mean"], config["normalisation"]["std"]
        self.classifier = load_models(folder, config["classifier"]["models"], device)
        self.unets = load_models(folder, config["segmentation"]["models"], device)
        self.classifier_size: tuple[int, int] = tuple(config["classifier"]["input_size"])
        self.unet_size: tuple[int, int] = tuple(config["segmentation"]["input_size"])
        self.thresholds = [float(rule["threshold"]) for rule in config["rules"]]
        self.min_areas = [int(rule["min_area_px"]) for rule in config["rules"]]

    def batch(self, images: list[DecodedImage], size: tuple[int, int]) -> torch.Tensor:
        arrays = [normalise(image.at(size), self.mean, self.std) for image in images]
        return torch.from_numpy(np.stack(arrays)).to(self.device)

    def gate(self, scores: np.ndarray) -> Gate:
        gating = self.config["gating"]
        presence = scores[:, 1:] if scores.shape[1] > 1 else None
        return gate_for(
            gating["mode"],
            scores[:, 0],
            presence,
            self.num_classes,
            gating.get("image_threshold"),
            gating.get("class_thresholds"),
        )

    def __call__(self, image_ids: Sequence[str], images: list[DecodedImage]) -> list[Prediction]:
        with torch.inference_mode():
            scores = classifier_probabilities(self.classifier, self.batch(images, self.classifier_size))
            scores = scores.cpu().numpy().astype(np.float64)
            tta = self.config["segmentation"]["tta"]
            probabilities = flip_tta_probabilities(self.unets, self.batch(images, self.unet_size), tta)
            probabilities = probabilities.cpu().numpy()
        gate = self.gate(scores)
        predictions = []
        for n, (image_id, image) in enumerate(zip(image_ids, images, strict=True)):
            full = upsample(probabilities[n], image.original)
            masks = submitted_masks(full, self.thresholds, self.min_areas, gate.keep[n], gate.weight[n])
            predictions.append(Prediction(image_id, scores[n], masks))
        return predictions


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Severstal submission from the trained bundle (offline).")
    parser.add_argument("--images", type=Path, required=True, help="folder of the test images")
    parser.add_argument("--sample", type=Path, required=True, help="the competition's sample_submission.csv")
    parser.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    parser.add_argument(
        "--bundle", type=Path, default=Path(__file__).resolve().parent, help="folder of bundle.json"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (bundle.json's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--metrics", type=Path, default=None, help="also write timing as JSON here")
    return parser.parse_args(argv)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file beside `path` that replaces it only when `write` finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> dict[str, object]:
    device = resolve_device(args.device)
    predictor = Predictor(args.bundle, device)
    batch_size = args.batch_size or int(predictor.config.get("batch_size", 16))
    if batch_size < 1:
        raise BundleError(f"--batch-size must be at least 1, got {batch_size}")
    columns, image_ids = read_sample(args.sample)
    if not args.images.is_dir():
        raise BundleError(f"--images {args.images}: not a folder")
    missing = next((i for i in image_ids if not (args.images / i).is_file()), None)
    if missing is not None:
        raise BundleError(f"{args.images / missing}: not found (listed in {args.sample})")
    started = time.perf_counter()

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            for ids in chunks(image_ids, batch_size):
                images = [DecodedImage(args.images / image_id) for image_id in ids]
                for prediction in predictor(ids, images):
                    rles = [encode_rle(mask) if mask is not None else "" for mask in prediction.masks]
                    writer.writerows(submission_rows(prediction.image_id, rles, columns))

    write_atomically(args.out, write)
    seconds = time.perf_counter() - started
    rate = len(image_ids) / seconds if seconds > 0 else math.inf
    return {
        "images": len(image_ids),
        "seconds": round(seconds, 2),
        "images_per_s": round(rate, 2),
        "device": str(device),
        "batch_size": batch_size,
        "torch": torch.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        timing = run(args)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.metrics is not None:
        write_atomically(args.metrics, lambda tmp: tmp.write_text(json.dumps(timing, indent=2) + "\n"))
    print(
        f"predict.py: {timing['images']} images in {timing['seconds']} s ({timing['images_per_s']} images/s "
        f"on {timing['device']}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
