"""Stage segment (notebook 4): U-Net with one sigmoid channel per defect class, candidate masks, tuned
post-processing, holdout and test predictions.

Trains one smp U-Net per fold (BCE + Dice loss, random crops and augmentations on image and masks together,
early stopping, best checkpoint). Every holdout (validation) image and every test image is then predicted
whole at the prediction scale (the model's input size), with optional flip TTA, and upsampled to its
original size; there the masks `probability >= t` for every t of `thresholds` are the *candidates*.
The per-class (threshold, min area) rule of the raw submission is searched on the holdout candidates,
without gating. Writes:
  models/unet/fold_<k>.pt          self-describing checkpoints, the raw submission's rules included
  data/holdout_candidates.csv      per holdout image, class and threshold: predicted area, intersection
                                   with the truth, true area (postprocess searches gated rules on it)
  data/test_candidates.csv         per test image, class and threshold: area and RLE of the mask
                                   (non-empty masks only)
  data/submission_raw.csv          the U-Net alone with its ungated rules, in the sample's format
  data/segment_metrics.json        validation Dice per class, chosen rules, timing and memory
  data/metrics/segment.json        its headline figures (the DVC metrics)
  data/plots/segment/holdout_*.png a few holdout images, truth vs prediction per class
With `nproc_per_node` > 1 it runs under torchrun (stages.core.distributed): the processes share the training
draws and the validation, holdout and test images; rank 0 gathers the predictions by image and writes every
output, in the order one process writes it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
from dvclive import Live
from torch import nn
from torch.utils.data import DataLoader

from stages.core import cli, rle
from stages.core.backends import BackendName, InferenceBackend
from stages.core.dataset import SubmissionWriter
from stages.core.device import Runtime, inference, resolve_runtime
from stages.core.distributed import run_under_torchrun
from stages.core.errors import PipelineError
from stages.core.headline import write_headline
from stages.core.images import CropSpec, ImageTable, build_augmentations, decode_masks, read_image
from stages.core.inference import predict_probabilities
from stages.core.inference_ops import class_mask
from stages.core.io import atomic_path, target_name, write_csv, write_json
from stages.core.metric import mask_dice
from stages.core.models import UNET_DECODER_CHANNELS, build_unet, check_encoder, save_checkpoint
from stages.core.overlay import truth_vs_prediction
from stages.core.params import load_section, require
from stages.core.postprocess import (
    Candidates,
    apply_rules,
    candidate_counts,
    pair_dice,
    search_rules,
)
from stages.core.prepared import PREPARED_DIR, Prepared, load_prepared
from stages.core.resume import ResumeStore, resume_key
from stages.core.training import FoldModel, FoldTask, TrainParams, class_balance_weights, train_folds

MODEL_DIR = Path("models/unet")
SUBMISSION_RAW = Path("data/submission_raw.csv")
HOLDOUT_CANDIDATES = Path("data/holdout_candidates.csv")
TEST_CANDIDATES = Path("data/test_candidates.csv")
METRICS_FILE = Path("data/segment_metrics.json")
HEADLINE_FILE = Path("data/metrics/segment.json")
HEADLINE = (
    "holdout_dice",
    "val_dice",
    "val_loss",
    "train_images_per_s",
    "test_images_per_s",
    "wall_time_s",
    "peak_memory_mb",
)
LIVE_DIR = Path("data/live/segment")
PLOTS_DIR = Path("data/plots/segment")


@dataclass(frozen=True)
class SegmentParams(TrainParams):
    backbone: str = "resnet18"  # any smp encoder
    decoder_channels: tuple[int, ...] = UNET_DECODER_CHANNELS
    # "defective": train on images with a defect only (gating handles the clean ones); validation and
    # the post-processing search always use every holdout image.
    train_images: Literal["all", "defective"] = "all"
    # Training crops, taken from the image at the input size (the prediction scale): with input 256x1600
    # they are crops of the original image. null: train on the whole image at the input size.
    crop_height: int | None = None
    crop_width: int | None = None
    crop_defect_bias: float = 0.5  # share of crops placed around a mask pixel (images with a defect)
    # Training images are drawn so that each defect class (and clean images, when trained on) comes up
    # with probability proportional to count**(1 - class_balance): 0 uniform over images, 1 every class
    # equally often, so that rare classes are learned.
    class_balance: float = 0.0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    # BCE weight of defect pixels against background ones: > 1 keeps small, rare defects from being
    # drowned by the background they sit in.
    bce_pos_weight: float = 1.0
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)  # candidate masks, per class
    min_areas_px: tuple[int, ...] = (0, 500, 1000, 2000, 4000)  # in original-image pixels
    tta: Literal["none", "hflip", "hvflip"] = "hflip"
    predict_batch_size: int = 16
    plot_images: int = 4
    # What predicts the holdout and test images (stages/core/backends.py): eager | onnxruntime | compile.
    inference_backend: BackendName = "eager"

    @property
    def backend(self) -> InferenceBackend:
        return InferenceBackend(self.inference_backend, "segment.inference_backend")

    def validate(self, section: str) -> None:
        super().validate(section)
        check_encoder(self.backbone, self.encoder_weights, section)
        require(
            (self.crop_height is None) == (self.crop_width is None),
            f"{section}.crop_width",
            "and crop_height must both be set or both be null",
            self.crop_width,
        )
        for name, limit in (("crop_height", self.input_height), ("crop_width", self.input_width)):
            value = getattr(self, name)
            if value is not None:
                require(
                    value % 32 == 0 and value >= 32, f"{section}.{name}", "must be a multiple of 32", value
                )
                require(value <= limit, f"{section}.{name}", f"must be <= the input size ({limit})", value)
        require(
            0.0 <= self.crop_defect_bias <= 1.0,
            f"{section}.crop_defect_bias",
            "must be a probability in [0, 1]",
            self.crop_defect_bias,
        )
        require(
            0.0 <= self.class_balance <= 1.0,
            f"{section}.class_balance",
            "must be in [0, 1]",
            self.class_balance,
        )
        require(self.bce_weight >= 0, f"{section}.bce_weight", "must be >= 0", self.bce_weight)
        require(self.bce_pos_weight > 0, f"{section}.bce_pos_weight", "must be > 0", self.bce_pos_weight)
        require(self.dice_weight >= 0, f"{section}.dice_weight", "must be >= 0", self.dice_weight)
        require(
            self.bce_weight + self.dice_weight > 0, f"{section}.dice_weight", "or bce_weight must be > 0", 0.0
        )
        require(
            len(self.thresholds) > 0, f"{section}.thresholds", "must list at least one value", self.thresholds
        )
        for threshold in self.thresholds:
            require(0 < threshold < 1, f"{section}.thresholds", "must be in (0, 1)", threshold)
        require(
            len(set(self.thresholds)) == len(self.thresholds),
            f"{section}.thresholds",
            "must not repeat a value",
            self.thresholds,
        )
        require(len(self.min_areas_px) > 0, f"{section}.min_areas_px", "must list at least one value", ())
        for area in self.min_areas_px:
            require(area >= 0, f"{section}.min_areas_px", "must be >= 0", area)
        require(len(self.decoder_channels) == 5, f"{section}.decoder_channels", "must list 5 widths", ())
        for width in self.decoder_channels:
            require(width >= 1, f"{section}.decoder_channels", "must be positive", width)
        require(
            self.predict_batch_size >= 1,
            f"{section}.predict_batch_size",
            "must be >= 1",
            self.predict_batch_size,
        )
        require(self.plot_images >= 0, f"{section}.plot_images", "must be >= 0", self.plot_images)

    @property
    def crop(self) -> CropSpec | None:
        if self.crop_height is None or self.crop_width is None:
            return None
        return CropSpec(self.crop_height, self.crop_width, self.crop_defect_bias)


class BCEDiceLoss(nn.Module):
    """Weighted sum of smp's BCE and multilabel Dice losses on logits; `pos_weight` weighs the BCE of
    defect pixels against background ones."""

    def __init__(self, bce_weight: float, dice_weight: float, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.bce, self.dice = (
            smp.losses.SoftBCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight)),
            smp.losses.DiceLoss("multilabel", from_logits=True),
        )
        self.bce_weight, self.dice_weight = bce_weight, dice_weight

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, masks) + self.dice_weight * self.dice(logits, masks)


def evaluate_segmentation(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, runtime: Runtime, num_classes: int
) -> dict[str, float]:
    """Validation loss and competition Dice per class at probability 0.5, on whole images at the input
    size (the prediction scale). Under torchrun the loader holds this rank's shard, and the sums are
    reduced over the ranks: every rank gets the metrics of the whole validation set."""
    model.eval()
    total_loss, seen, dice_sums = 0.0, 0, 0.0
    with inference(runtime):
        for images, masks in loader:
            logits = model(runtime.batch(images)).float().cpu()
            total_loss += float(loss_fn(logits, masks)) * len(images)
            seen += len(images)
            dice_sums = dice_sums + mask_dice(logits.numpy() > 0, masks.numpy() > 0.5).sum(axis=0)
    sums = runtime.group.sum([total_loss, seen, *np.broadcast_to(dice_sums, (num_classes,))])
    total_loss, seen, per_class = sums[0], sums[1], np.asarray(sums[2:]) / max(sums[1], 1)
    metrics = {"loss": total_loss / max(seen, 1), "dice": float(per_class.mean())}
    metrics.update({f"dice_{k + 1}": float(v) for k, v in enumerate(per_class)})
    return metrics


def segment_task(params: SegmentParams, prepared: Prepared, runtime: Runtime) -> FoldTask:
    num_classes, folder = prepared.num_classes, prepared.train_images
    loss_fn = BCEDiceLoss(params.bce_weight, params.dice_weight, params.bce_pos_weight)

    def train_set(rows: pd.DataFrame, seed: int) -> ImageTable:
        augment = build_augmentations(params.augment, seed, params.crop)
        return ImageTable(rows, folder, params.input_size, "masks", num_classes, augment)

    def select(rows: pd.DataFrame) -> pd.DataFrame:
        return rows[rows["has_defect"]] if params.train_images == "defective" else rows

    return FoldTask(
        name="segment",
        build_model=lambda: build_unet(
            params.backbone,
            params.encoder_weights,
            num_classes,
            params.decoder_channels,
            weights_key="segment.encoder_weights",
        ),
        train_set=train_set,
        val_set=lambda rows: ImageTable(rows, folder, params.input_size, "masks", num_classes),
        loss_fn=loss_fn,
        evaluate=lambda model, loader: evaluate_segmentation(model, loader, loss_fn, runtime, num_classes),
        select_train_rows=select,
        sample_weights=(lambda rows: class_balance_weights(rows, num_classes, params.class_balance))
        if params.class_balance > 0
        else None,
    )


HoldoutImage = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]


def holdout_candidates(
    params: SegmentParams, prepared: Prepared, runtime: Runtime, fold_models: list[FoldModel]
) -> tuple[Candidates, dict[str, tuple[np.ndarray, np.ndarray]]] | None:
    """Each fold model predicts its own holdout images; returns their candidate counts at the original
    size, and the probabilities and truth of the first few (defective first) for the plots. Under torchrun
    each rank predicts its shard, and rank 0 gets every image's counts, in the order one process has them
    (up to float noise: see classifier_probabilities); the other ranks get None."""
    group, num_classes = runtime.group, prepared.num_classes
    holdout = prepared.train[prepared.train["fold"] < params.folds]
    plotted = set(
        holdout.sort_values("has_defect", ascending=False, kind="stable")["ImageId"][: params.plot_images]
    )
    image_ids, areas, intersections, truth_areas, kept = [], [], [], [], {}
    for fold_model in fold_models:
        rows = holdout[holdout["fold"] == fold_model.fold].set_index("ImageId", drop=False)
        counted = _holdout_counts(params, prepared, runtime, fold_model.model, group.shard(rows), plotted)
        for image_id, (area, intersection, truth_area, shown) in group.in_order(
            counted, rows["ImageId"].tolist(), params.predict_batch_size
        ):
            image_ids.append(image_id)
            areas.append(area)
            intersections.append(intersection)
            truth_areas.append(truth_area)
            if shown is not None:
                kept[image_id] = shown
    if not group.is_main:
        return None
    order = np.argsort(params.thresholds)
    shape = (0, num_classes, len(order))
    candidates = Candidates(
        tuple(image_ids),
        np.asarray(params.thresholds, dtype=np.float64)[order],
        np.stack(areas)[:, :, order] if areas else np.zeros(shape, np.int64),
        np.stack(intersections)[:, :, order] if intersections else np.zeros(shape, np.int64),
        np.stack(truth_areas) if truth_areas else np.zeros(shape[:2], np.int64),
    )
    return candidates, kept


def _holdout_counts(
    params: SegmentParams,
    prepared: Prepared,
    runtime: Runtime,
    model: nn.Module,
    rows: pd.DataFrame,
    plotted: set[str],
) -> Iterator[tuple[str, HoldoutImage]]:
    """Per holdout image of `rows` (indexed by ImageId): candidate areas and intersections with the truth
    per class and threshold, the truth's areas, and for the plotted images the probabilities and truth."""
    rle_columns = [f"rle_{c}" for c in range(1, prepared.num_classes + 1)]
    for image_id, probabilities in predict_probabilities(
        [model],
        rows,
        prepared.train_images,
        params.input_size,
        runtime,
        params.predict_batch_size,
        params.tta,
        params.num_workers,
        params.backend,
    ):
        original = (int(rows.at[image_id, "height"]), int(rows.at[image_id, "width"]))
        truth = decode_masks(rows.loc[image_id, rle_columns].tolist(), original, original)
        truth = truth.transpose(2, 0, 1)
        area, intersection = candidate_counts(probabilities, params.thresholds, truth)
        truth_area = truth.reshape(prepared.num_classes, -1).sum(axis=1)
        yield (
            image_id,
            (area, intersection, truth_area, (probabilities, truth) if image_id in plotted else None),
        )


def write_plots(prepared: Prepared, plotted: dict[str, tuple[np.ndarray, np.ndarray]], rules: list) -> None:
    with atomic_path(PLOTS_DIR, directory=True) as plots:
        for image_id, (probabilities, truth) in plotted.items():
            size = probabilities.shape[1:]
            image = read_image(prepared.train_images / image_id, size, size)
            panel = truth_vs_prediction(image, truth, apply_rules(probabilities, rules))
            # Never an all-digit file name: dvc plots show crashes ordering "003436691.png" (read as image
            # number 3436691) against "03c9109b5.png" (no number) in one folder.
            path = plots / f"holdout_{Path(image_id).stem}.png"
            # cv2.imwrite returns False instead of raising, on a full disk too.
            if not cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
                raise PipelineError(f"{target_name(path)}: cannot write")


def predict_test(
    params: SegmentParams, prepared: Prepared, runtime: Runtime, models: list[nn.Module], rules: list
) -> None:
    """Test candidates of every threshold (non-empty masks only) and the raw submission, in one pass. Under
    torchrun each rank predicts its shard and rank 0 writes every image's rows in the test table's order."""
    group = runtime.group
    predicted = group.in_order(
        _test_rows(params, prepared, runtime, models, rules, group.shard(prepared.test)),
        prepared.test["ImageId"].tolist(),
        params.predict_batch_size,
    )
    if not group.is_main:
        for _ in predicted:  # takes part in every gather; rank 0 writes
            pass
        return
    with (
        atomic_path(TEST_CANDIDATES) as tmp,
        tmp.open("w", newline="", encoding="utf-8") as handle,
        SubmissionWriter(SUBMISSION_RAW, prepared.sample_submission(), prepared.num_classes) as writer,
    ):
        table = csv.writer(handle, lineterminator="\n")
        table.writerow(["ImageId", "ClassId", "threshold", "area", "EncodedPixels"])
        for image_id, (rows, submitted) in predicted:
            table.writerows(rows)
            writer.write(image_id, submitted)


def _test_rows(
    params: SegmentParams,
    prepared: Prepared,
    runtime: Runtime,
    models: list[nn.Module],
    rules: list,
    test: pd.DataFrame,
) -> Iterator[tuple[str, tuple[list[list], list[str]]]]:
    """Per test image of `test`: its candidate rows (ImageId, ClassId, threshold, area, RLE) and the RLE
    per class that the rules submit."""
    thresholds = np.asarray(params.thresholds, dtype=np.float64)
    columns = [int(np.flatnonzero(thresholds == rule.threshold)[0]) for rule in rules]
    for image_id, probabilities in predict_probabilities(
        models,
        test,
        prepared.test_images,
        params.input_size,
        runtime,
        params.predict_batch_size,
        params.tta,
        params.num_workers,
        params.backend,
    ):
        rows, submitted = [], []
        for k, rule in enumerate(rules):
            # The class's probabilities column-major once (OpenCV's transpose, then a view): every
            # candidate mask is then in the RLE's pixel order and encodes without a transpose of its
            # own, and each comparison reads contiguous memory, not every K-th float.
            probability = cv2.transpose(probabilities[k]).T
            chosen = ""
            for t, threshold in enumerate(thresholds):
                mask = class_mask(probability, threshold)
                area = int(np.count_nonzero(mask))
                if area == 0:
                    continue
                encoded = rle.encode(mask)
                rows.append([image_id, k + 1, threshold, area, encoded])
                if t == columns[k] and area >= rule.min_area_px:
                    chosen = encoded
            submitted.append(chosen)
        yield image_id, (rows, submitted)


def save_unets(params: SegmentParams, prepared: Prepared, fold_models: list[FoldModel], rules: list) -> None:
    config = {
        "encoder": params.backbone,
        "decoder_channels": list(params.decoder_channels),
        "num_classes": prepared.num_classes,
        "input_size": list(params.input_size),
    }
    with atomic_path(MODEL_DIR, directory=True) as model_dir:
        for fold_model in fold_models:
            extra = {**fold_model.checkpoint_extra(params), "rules": [asdict(rule) for rule in rules]}
            save_checkpoint(model_dir / f"fold_{fold_model.fold}.pt", fold_model.model, config, extra)


def main() -> None:
    params = load_section(SegmentParams, "segment")
    run_under_torchrun("stages.segment", params.nproc_per_node, "segment.nproc_per_node")
    prepared = load_prepared()
    params.check_folds("segment", prepared.n_folds)
    runtime = resolve_runtime(params.device, params.mixed_precision, "segment.device")
    main_rank = runtime.group.is_main
    started = time.perf_counter()
    runtime.reset_peak_memory()
    # A killed run continues from its last finished epoch (see stages/core/resume.py); the number of
    # processes is part of the key, as it changes the training.
    key = resume_key(
        {**asdict(params), "world": runtime.group.world}, [PREPARED_DIR], [prepared.train_images]
    )
    store = ResumeStore.open("segment", key, remove_stale=main_rank)
    # dvclive empties its folder when it starts: it logs to a temporary one, which replaces the previous
    # curves only when the stage succeeds (stages.core.cli.run commits the outputs together). Under
    # torchrun only rank 0 logs and writes.
    with ExitStack() as outputs:
        live = None
        if main_rank:
            live_dir = outputs.enter_context(atomic_path(LIVE_DIR, directory=True))
            live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        task = segment_task(params, prepared, runtime)
        fold_models = train_folds(task, params, prepared.train, runtime, live, store)
        if live is not None:
            live.make_summary()
            live.end()
    training_seconds = time.perf_counter() - started

    found = holdout_candidates(params, prepared, runtime, fold_models)
    rules: list = []
    if found is not None:  # rank 0: the rules, the holdout outputs and the checkpoints
        candidates, plotted = found
        rules, rule_dice = search_rules(candidates, params.min_areas_px)
        write_csv(candidates.to_frame(), HOLDOUT_CANDIDATES)
        write_plots(prepared, plotted, rules)
        dice = pair_dice(candidates, rules)
        save_unets(params, prepared, fold_models, rules)
    rules = runtime.group.broadcast(rules)  # every rank predicts the test images with rank 0's rules
    holdout_seconds = time.perf_counter() - started - training_seconds

    predicted = time.perf_counter()
    predict_test(params, prepared, runtime, [fold_model.model for fold_model in fold_models], rules)
    test_seconds = time.perf_counter() - predicted
    if not main_rank:
        return

    names = ("loss", "dice", *(f"dice_{k}" for k in range(1, prepared.num_classes + 1)))
    fold_metrics = {str(m.fold): m.metrics(names) for m in fold_models}
    per_fold = list(fold_metrics.values())
    metrics = {
        "val_dice": float(np.mean([m["val_dice"] for m in per_fold])),
        "val_loss": float(np.mean([m["val_loss"] for m in per_fold])),
        "holdout_images": len(candidates.image_ids),
        "holdout_dice": float(dice.mean()) if len(dice) else None,
        "holdout_dice_per_class": {str(k + 1): float(v) for k, v in enumerate(dice.mean(axis=0))}
        if len(dice)
        else {},
        "rules": {
            str(k + 1): {**asdict(rule), "grid_dice": float(d)}
            for k, (rule, d) in enumerate(zip(rules, rule_dice, strict=True))
        },
        "train_images_per_s": float(np.mean([m["train_images_per_s"] for m in per_fold])),
        "test_images_per_s": round(len(prepared.test) / test_seconds, 2) if test_seconds else None,
        "training_time_s": round(training_seconds, 1),
        "holdout_time_s": round(holdout_seconds, 1),
        "test_time_s": round(test_seconds, 1),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(runtime.peak_memory_mb(), 1),
        "device": str(runtime.device),
        "processes": runtime.group.world,
        "folds": fold_metrics,
    }
    write_json(metrics, METRICS_FILE)
    write_headline({name: metrics[name] for name in HEADLINE}, HEADLINE_FILE)
    store.finish()
    rule_text = ", ".join(f"{k + 1}: {rule.describe()}" for k, rule in enumerate(rules))
    holdout_text = f"{metrics['holdout_dice']:.4f}" if metrics["holdout_dice"] is not None else "n/a"
    print(
        f"segment: {params.folds} U-Net(s) on {params.backbone}; holdout Dice {holdout_text} over "
        f"{metrics['holdout_images']} images; rules {rule_text}; {metrics['wall_time_s']} s; "
        f"test predictions -> {SUBMISSION_RAW}, candidates -> {TEST_CANDIDATES}"
    )


if __name__ == "__main__":
    cli.run(main)
