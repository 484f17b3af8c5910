"""The trained pipeline on any images (not a DVC stage: a command to run after `dvc repro`).

    python -m stages.predict IMAGE_OR_DIR [IMAGE_OR_DIR ...] --out DIR [--device auto] [--batch-size 8]

Runs the classifier (models/classifier), the gate and per-class rules that postprocess chose
(data/rules.json) and the U-Net (models/unet) on the images given, or on every image in the folders
given, through the same inference code as the pipeline. Writes
  DIR/predictions.csv    ImageId, path, allMissing (and p_1..p_K with a multilabel classifier), then per
                         class the area of the submitted mask and its RLE (area_k, rle_k)
  DIR/overlays/*.png     each image with its submitted masks, classes in the colours of the segment plots
An unreadable or missing file is reported by name and skipped; the exit code is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from stages.core import rle
from stages.core.dataset import IMAGE_SUFFIXES
from stages.core.device import resolve_runtime
from stages.core.errors import PipelineError
from stages.core.inference import classifier_probabilities, predict_probabilities
from stages.core.inference_ops import gate_for, submitted_masks
from stages.core.io import atomic_path, read_json, write_csv
from stages.core.models import load_classifier, load_unet
from stages.core.overlay import draw_masks

CLASSIFIER_DIR = Path("models/classifier")
UNET_DIR = Path("models/unet")
RULES_FILE = Path("data/rules.json")


def image_files(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files named or found (one level) in the folders named, and (input, reason) failures."""
    files, failed = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failed.append((text, "no images in this folder"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            failed.append((text, "not found"))
    return files, failed


def load_fold_models(folder: Path, load: Any) -> list[tuple[Any, dict[str, Any]]]:
    paths = sorted(folder.glob("fold_*.pt"))
    if not paths:
        raise PipelineError(f"{folder}: no fold_*.pt checkpoints; run `dvc repro` first")
    return [load(path) for path in paths]


def unique_names(paths: list[Path]) -> list[str]:
    """Overlay file stems: the image's stem, numbered when two images share one."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count + 1}")
    return names


def write_png(image_rgb: np.ndarray, path: Path) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PipelineError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def predict(inputs: list[str], out: Path, device: str, batch_size: int) -> int:
    """Predict, write the outputs; returns the number of inputs that failed."""
    files, failed = image_files(inputs)
    rows = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            failed.append((str(path), "unreadable image"))
            continue
        rows.append({"ImageId": path.name, "path": str(path.resolve()), "height": image.shape[0],
                     "width": image.shape[1]})  # fmt: skip
    for text, reason in failed:
        print(f"error: {text}: {reason} (skipped)", file=sys.stderr)
    if not rows:
        return len(failed)

    rules = read_json(RULES_FILE, "run `dvc repro` first")
    runtime = resolve_runtime(device, False, "--device")
    classifiers = load_fold_models(CLASSIFIER_DIR, load_classifier)
    unets = load_fold_models(UNET_DIR, load_unet)
    num_classes = int(unets[0][1]["config"]["num_classes"])
    table = pd.DataFrame(rows)
    # ImageTable reads folder / ImageId: absolute paths as ids, from the root.
    by_path = table.assign(ImageId=table["path"])
    scores = classifier_probabilities(
        [model for model, _ in classifiers],
        by_path,
        Path("/"),
        tuple(classifiers[0][1]["config"]["input_size"]),
        runtime,
        batch_size,
    )
    presence = scores[:, 1:] if scores.shape[1] > 1 else None
    gate = gate_for(
        rules["gating"],
        scores[:, 0],
        presence,
        num_classes,
        rules.get("image_threshold"),
        rules.get("class_thresholds"),
    )
    thresholds = [rules["rules"][str(k)]["threshold"] for k in range(1, num_classes + 1)]
    min_areas = [rules["rules"][str(k)]["min_area_px"] for k in range(1, num_classes + 1)]

    overlays = out / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    names = unique_names([Path(p) for p in table["path"]])
    records = []
    unet_checkpoint = unets[0][1]
    for n, (_, probabilities) in enumerate(
        predict_probabilities(
            [model for model, _ in unets],
            by_path,
            Path("/"),
            tuple(unet_checkpoint["config"]["input_size"]),
            runtime,
            batch_size,
            unet_checkpoint["params"]["tta"],
        )
    ):
        masks = submitted_masks(probabilities, thresholds, min_areas, gate.keep[n], gate.weight[n])
        record: dict[str, object] = {"ImageId": table.at[n, "ImageId"], "path": table.at[n, "path"]}
        record["allMissing"] = scores[n, 0]
        for k in range(1, scores.shape[1]):
            record[f"p_{k}"] = scores[n, k]
        for k, mask in enumerate(masks, start=1):
            record[f"area_{k}"] = int(np.count_nonzero(mask)) if mask is not None else 0
        for k, mask in enumerate(masks, start=1):
            record[f"rle_{k}"] = rle.encode(mask) if mask is not None else ""
        records.append(record)
        height, width = int(table.at[n, "height"]), int(table.at[n, "width"])
        stacked = np.stack([m if m is not None else np.zeros((height, width), bool) for m in masks])
        image = cv2.cvtColor(cv2.imread(table.at[n, "path"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        write_png(draw_masks(image, stacked), overlays / f"{names[n]}.png")
    write_csv(pd.DataFrame(records), out / "predictions.csv")
    defective = sum(any(r[f"area_{k}"] for k in range(1, num_classes + 1)) for r in records)
    print(
        f"predict: {len(records)} image(s), {defective} with a defect mask -> {out / 'predictions.csv'}, "
        f"{overlays}/" + (f"; {len(failed)} failed" if failed else "")
    )
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        failed = predict(args.inputs, args.out, args.device, args.batch_size)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
