"""Stage segment (notebook 4): U-Net with one sigmoid channel per defect class, tuned post-processing,
holdout and test predictions.

Trains one smp U-Net per fold (BCE + Dice loss, augmentations on image and mask together, early
stopping, best checkpoint), then searches a per-class probability threshold and minimum mask area on
the holdout (validation) images, and writes:
  models/unet/fold_<k>.pt          self-describing checkpoints, post-processing rules included
  data/submission_raw.csv          test predictions (fold models averaged, optional flip TTA), sample format
  data/holdout_predictions.csv     holdout predictions (ImageId, ClassId, EncodedPixels, every pair)
  data/segment_metrics.json        validation Dice per class, chosen rules, timing and memory
  data/plots/segment/*.png         a few holdout images, truth vs prediction per class
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from dvclive import Live
from torch import nn
from torch.utils.data import DataLoader

from stages.core import cli, rle
from stages.core.dataset import SubmissionWriter
from stages.core.device import Runtime, inference, resolve_runtime
from stages.core.images import ImageTable, build_augmentations, decode_masks, read_image
from stages.core.inference import predict_masks
from stages.core.io import atomic_path, write_json
from stages.core.metric import mask_dice
from stages.core.models import UNET_DECODER_CHANNELS, build_unet, check_encoder, save_checkpoint
from stages.core.overlay import truth_vs_prediction
from stages.core.params import load_section, require
from stages.core.postprocess import ClassRule, GridSearch
from stages.core.prepared import Prepared, load_prepared
from stages.core.training import TrainParams, epoch_logger, fit, make_loader, seed_everything

MODEL_DIR = Path("models/unet")
SUBMISSION_RAW = Path("data/submission_raw.csv")
HOLDOUT = Path("data/holdout_predictions.csv")
METRICS_FILE = Path("data/segment_metrics.json")
LIVE_DIR = Path("data/live/segment")
PLOTS_DIR = Path("data/plots/segment")


@dataclass(frozen=True)
class SegmentParams(TrainParams):
    backbone: str = "resnet18"  # any smp encoder
    decoder_channels: tuple[int, ...] = UNET_DECODER_CHANNELS
    # "defective": train on images with a defect only (gating handles the clean ones); validation and
    # the post-processing search always use every holdout image.
    train_images: Literal["all", "defective"] = "all"
    # Holdout images the post-processing grid is tuned on. "defective": the images gating lets through
    # are meant to be defective, so tune for them and leave clean images to the classifier; "all" when
    # the submission is not gated.
    tune_on: Literal["all", "defective"] = "all"
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)  # post-processing grid, per class
    min_areas_px: tuple[int, ...] = (0, 500, 1000, 2000, 4000)  # in original-image pixels
    tta: Literal["none", "hflip", "hvflip"] = "hflip"
    predict_batch_size: int = 16
    plot_images: int = 4

    def validate(self, section: str) -> None:
        super().validate(section)
        check_encoder(self.backbone, self.encoder_weights, section)
        require(self.bce_weight >= 0, f"{section}.bce_weight", "must be >= 0", self.bce_weight)
        require(self.dice_weight >= 0, f"{section}.dice_weight", "must be >= 0", self.dice_weight)
        require(
            self.bce_weight + self.dice_weight > 0, f"{section}.dice_weight", "or bce_weight must be > 0", 0.0
        )
        require(
            len(self.thresholds) > 0, f"{section}.thresholds", "must list at least one value", self.thresholds
        )
        for threshold in self.thresholds:
            require(0 < threshold < 1, f"{section}.thresholds", "must be in (0, 1)", threshold)
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


class BCEDiceLoss(nn.Module):
    """Weighted sum of smp's BCE and multilabel Dice losses on logits."""

    def __init__(self, bce_weight: float, dice_weight: float) -> None:
        super().__init__()
        self.bce, self.dice = (
            smp.losses.SoftBCEWithLogitsLoss(),
            smp.losses.DiceLoss("multilabel", from_logits=True),
        )
        self.bce_weight, self.dice_weight = bce_weight, dice_weight

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, masks) + self.dice_weight * self.dice(logits, masks)


def evaluate_segmentation(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, runtime: Runtime
) -> dict[str, float]:
    """Validation loss and competition Dice per class at probability 0.5, at the model's input size."""
    model.eval()
    total_loss, seen, dice = 0.0, 0, []
    with inference(runtime):
        for images, masks in loader:
            logits = model(runtime.batch(images)).float().cpu()
            total_loss += float(loss_fn(logits, masks)) * len(images)
            seen += len(images)
            dice.append(mask_dice(logits.numpy() > 0, masks.numpy() > 0.5))
    per_pair = np.concatenate(dice)
    metrics = {"loss": total_loss / max(seen, 1), "dice": float(per_pair.mean())}
    metrics.update({f"dice_{k + 1}": float(v) for k, v in enumerate(per_pair.mean(axis=0))})
    return metrics


def search_rules(
    model: nn.Module, loader: DataLoader, grid: GridSearch, runtime: Runtime, area_scale: float
) -> None:
    with inference(runtime):
        for images, masks in loader:
            probabilities = torch.sigmoid(model(runtime.batch(images)).float()).cpu().numpy()
            grid.update(probabilities, masks.numpy(), area_scale)


def train_folds(
    params: SegmentParams, prepared: Prepared, runtime: Runtime, live: Live
) -> tuple[list, dict, GridSearch]:
    """One U-Net per fold; the post-processing grid accumulates every fold's holdout images."""
    train, num_classes = prepared.train, prepared.num_classes
    loss_fn = BCEDiceLoss(params.bce_weight, params.dice_weight)
    grid = GridSearch(params.thresholds, params.min_areas_px, num_classes)
    original_pixels = float((train["height"] * train["width"]).mean())
    area_scale = original_pixels / (params.input_height * params.input_width)
    models, fold_metrics = [], {}
    for fold in range(params.folds):
        seed_everything(params.seed + fold)
        augment = build_augmentations(params.augment, params.seed + fold)
        fit_rows, val_rows = train[train["fold"] != fold], train[train["fold"] == fold]
        if params.train_images == "defective":
            fit_rows = fit_rows[fit_rows["has_defect"]]
        dataset = ImageTable(
            fit_rows, prepared.train_images, params.input_size, "masks", num_classes, augment
        )
        train_loader = make_loader(dataset, params.batch_size, params.num_workers, True, params.seed + fold)
        val_dataset = ImageTable(val_rows, prepared.train_images, params.input_size, "masks", num_classes)
        val_loader = make_loader(val_dataset, params.batch_size, params.num_workers)
        model = build_unet(params.backbone, params.encoder_weights, num_classes, params.decoder_channels)
        if params.freeze_encoder:
            model.freeze_encoder()
        model = runtime.model(model)
        name = f"segment fold {fold}"
        result = fit(
            model,
            train_loader,
            val_loader,
            loss_fn,
            lambda m, loader: evaluate_segmentation(m, loader, loss_fn, runtime),
            params,
            runtime,
            epoch_logger(live, name, fold),
            name,
        )
        model.load_state_dict(result.best_state)
        if params.tune_on == "defective":
            tune_rows = val_rows[val_rows["has_defect"]]
            tune_dataset = ImageTable(
                tune_rows, prepared.train_images, params.input_size, "masks", num_classes
            )
            val_loader = make_loader(tune_dataset, params.batch_size, params.num_workers)
        search_rules(model, val_loader, grid, runtime, area_scale)
        models.append((model, fold, sorted(int(f) for f in fit_rows["fold"].unique()), result))
        fold_metrics[str(fold)] = {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "val_loss": result.best_metrics["loss"],
            "val_dice": result.best_metrics["dice"],
            **{f"val_dice_{k}": result.best_metrics[f"dice_{k}"] for k in range(1, num_classes + 1)},
            "train_images_per_s": round(result.images_per_second, 2),
        }
    return models, fold_metrics, grid


def predict_holdout(
    params: SegmentParams, prepared: Prepared, runtime: Runtime, models: list, rules: list[ClassRule]
) -> dict[str, object]:
    """Each fold model predicts its own holdout images: written to HOLDOUT, Dice at the original size,
    and the first few images (defective ones first) drawn for the DVC image plots."""
    train, num_classes = prepared.train, prepared.num_classes
    rle_columns = [f"rle_{c}" for c in range(1, num_classes + 1)]
    holdout = train[train["fold"] < params.folds]
    plotted = set(
        holdout.sort_values("has_defect", ascending=False, kind="stable")["ImageId"][: params.plot_images]
    )
    dice_rows = []
    with (
        atomic_path(HOLDOUT) as tmp,
        tmp.open("w", newline="") as handle,
        atomic_path(PLOTS_DIR, True) as plots,
    ):
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
        for model, fold, _, _ in models:
            rows = holdout[holdout["fold"] == fold].set_index("ImageId", drop=False)
            for image_id, masks, _ in predict_masks(
                [model],
                rows,
                prepared.train_images,
                params.input_size,
                runtime,
                params.predict_batch_size,
                rules,
                params.tta,
                params.num_workers,
            ):
                original = (int(rows.at[image_id, "height"]), int(rows.at[image_id, "width"]))
                truth = decode_masks(rows.loc[image_id, rle_columns].tolist(), original, original).transpose(
                    2, 0, 1
                )
                dice_rows.append(mask_dice(masks, truth))
                writer.writerows([image_id, k + 1, rle.encode(mask)] for k, mask in enumerate(masks))
                if image_id in plotted:
                    image = read_image(prepared.train_images / image_id, original, original)
                    panel = truth_vs_prediction(image, truth, masks)
                    cv2.imwrite(
                        str(plots / f"{Path(image_id).stem}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)
                    )
    dice = np.stack(dice_rows) if dice_rows else np.zeros((0, num_classes))
    return {
        "holdout_images": len(dice),
        "holdout_dice": float(dice.mean()) if len(dice) else None,
        "holdout_dice_per_class": {str(k + 1): float(v) for k, v in enumerate(dice.mean(axis=0))}
        if len(dice)
        else {},
    }


def main() -> None:
    params = load_section(SegmentParams, "segment")
    prepared = load_prepared()
    params.check_folds("segment", prepared.n_folds)
    runtime = resolve_runtime(params.device, params.mixed_precision, "segment.device")
    started = time.perf_counter()
    runtime.reset_peak_memory()
    live = Live(dir=str(LIVE_DIR), save_dvc_exp=False, dvcyaml=None, report=None)
    models, fold_metrics, grid = train_folds(params, prepared, runtime, live)
    live.make_summary()
    live.end()
    rules, rule_dice = grid.best()
    config = {
        "encoder": params.backbone,
        "decoder_channels": list(params.decoder_channels),
        "num_classes": prepared.num_classes,
        "input_size": list(params.input_size),
    }
    with atomic_path(MODEL_DIR, directory=True) as model_dir:
        for model, fold, train_folds_, result in models:
            extra = {
                "fold": fold,
                "val_fold": fold,
                "train_folds": train_folds_,
                "best_epoch": result.best_epoch,
                "val_metrics": result.best_metrics,
                "rules": [asdict(rule) for rule in rules],
                "params": asdict(params),
            }
            save_checkpoint(model_dir / f"fold_{fold}.pt", model, config, extra)
    training_seconds = time.perf_counter() - started

    holdout = predict_holdout(params, prepared, runtime, models, rules)
    predicted = time.perf_counter()
    fold_models = [model for model, *_ in models]
    with SubmissionWriter(SUBMISSION_RAW, prepared.sample_submission(), prepared.num_classes) as writer:
        for image_id, masks, _ in predict_masks(
            fold_models,
            prepared.test,
            prepared.test_images,
            params.input_size,
            runtime,
            params.predict_batch_size,
            rules,
            params.tta,
            params.num_workers,
        ):
            writer.write(image_id, [rle.encode(mask) for mask in masks])
    test_seconds = time.perf_counter() - predicted

    per_fold = list(fold_metrics.values())
    metrics = {
        "val_dice": float(np.mean([m["val_dice"] for m in per_fold])),
        "val_loss": float(np.mean([m["val_loss"] for m in per_fold])),
        **holdout,
        "rules": {
            str(k + 1): {**asdict(rule), "grid_dice": float(d)}
            for k, (rule, d) in enumerate(zip(rules, rule_dice, strict=True))
        },
        "train_images_per_s": float(np.mean([m["train_images_per_s"] for m in per_fold])),
        "test_images_per_s": round(len(prepared.test) / test_seconds, 2) if test_seconds else None,
        "training_time_s": round(training_seconds, 1),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(runtime.peak_memory_mb(), 1),
        "device": str(runtime.device),
        "folds": fold_metrics,
    }
    write_json(metrics, METRICS_FILE)
    rule_text = ", ".join(f"{k + 1}: p>={r.threshold:g} area>={r.min_area_px}" for k, r in enumerate(rules))
    print(
        f"segment: {params.folds} U-Net(s) on {params.backbone}; holdout Dice {holdout['holdout_dice']:.4f} "
        f"over {holdout['holdout_images']} images; rules {rule_text}; {metrics['wall_time_s']} s; "
        f"test predictions -> {SUBMISSION_RAW}"
    )


if __name__ == "__main__":
    cli.run(main)
