"""Stage classifier (notebook 1): the allMissing classifier, one model per fold, and test scores.

allMissing = P(image has no defect of any class). Outputs models/classifier/fold_<k>.pt (self-describing
checkpoints), data/test_missing_count.csv (ImageId, allMissing averaged over the fold models),
data/classifier_metrics.json and dvclive curves in data/live/classifier/.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from stages.core import cli
from stages.core.device import Runtime, inference, resolve_runtime
from stages.core.images import ImageTable, build_augmentations
from stages.core.inference import all_missing_probability
from stages.core.io import atomic_path, write_csv, write_json
from stages.core.models import CLASSIFIER_BACKBONES, AllMissingClassifier, check_encoder, save_checkpoint
from stages.core.params import load_section, require
from stages.core.prepared import load_prepared
from stages.core.training import TrainParams, epoch_logger, fit, make_loader, seed_everything

MODEL_DIR = Path("models/classifier")
TEST_SCORES = Path("data/test_missing_count.csv")
METRICS_FILE = Path("data/classifier_metrics.json")
LIVE_DIR = Path("data/live/classifier")


@dataclass(frozen=True)
class ClassifierParams(TrainParams):
    backbone: str = "densenet121"
    dropout: float = 0.2

    def validate(self, section: str) -> None:
        super().validate(section)
        check_encoder(self.backbone, self.encoder_weights, section, CLASSIFIER_BACKBONES)
        require(0.0 <= self.dropout < 1.0, f"{section}.dropout", "must be in [0, 1)", self.dropout)


def evaluate_classifier(model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, float]:
    """Validation loss (BCE on the allMissing logit), AUC and accuracy at 0.5."""
    model.eval()
    logits, labels = [], []
    with inference(runtime):
        for images, targets in loader:
            logits.append(model(runtime.batch(images)).float().cpu())
            labels.append(targets)
    logit, label = torch.cat(logits), torch.cat(labels)
    probability = torch.sigmoid(logit).numpy()
    both_classes = 0 < label.sum() < len(label)
    return {
        "loss": float(nn.functional.binary_cross_entropy_with_logits(logit, label)),
        "auc": float(roc_auc_score(label.numpy(), probability)) if both_classes else float("nan"),
        "accuracy": float(((probability >= 0.5) == (label.numpy() >= 0.5)).mean()),
    }


def main() -> None:
    params = load_section(ClassifierParams, "classifier")
    prepared = load_prepared()
    params.check_folds("classifier", prepared.n_folds)
    runtime = resolve_runtime(params.device, params.mixed_precision, "classifier.device")
    train = prepared.train
    config = {"backbone": params.backbone, "dropout": params.dropout, "input_size": list(params.input_size)}
    started = time.perf_counter()
    runtime.reset_peak_memory()
    models, fold_metrics = [], {}
    live = Live(dir=str(LIVE_DIR), save_dvc_exp=False, dvcyaml=None, report=None)
    with atomic_path(MODEL_DIR, directory=True) as model_dir:
        for fold in range(params.folds):
            seed_everything(params.seed + fold)
            augment = build_augmentations(params.augment, params.seed + fold)
            fit_rows, val_rows = train[train["fold"] != fold], train[train["fold"] == fold]
            train_loader = make_loader(
                ImageTable(
                    fit_rows, prepared.train_images, params.input_size, "all_missing", augment=augment
                ),
                params.batch_size,
                params.num_workers,
                shuffle=True,
                seed=params.seed + fold,
            )
            val_loader = make_loader(
                ImageTable(val_rows, prepared.train_images, params.input_size, "all_missing"),
                params.batch_size,
                params.num_workers,
            )
            model = AllMissingClassifier(params.backbone, params.encoder_weights, params.dropout)
            if params.freeze_encoder:
                model.freeze_encoder()
            model = runtime.model(model)
            name = f"classifier fold {fold}"
            result = fit(
                model,
                train_loader,
                val_loader,
                nn.BCEWithLogitsLoss(),
                lambda m, loader: evaluate_classifier(m, loader, runtime),
                params,
                runtime,
                epoch_logger(live, name, fold),
                name,
            )
            model.load_state_dict(result.best_state)
            extra = {
                "fold": fold,
                "val_fold": fold,
                "train_folds": sorted(int(f) for f in fit_rows["fold"].unique()),
                "best_epoch": result.best_epoch,
                "val_metrics": result.best_metrics,
                "params": asdict(params),
            }
            save_checkpoint(model_dir / f"fold_{fold}.pt", model, config, extra)
            models.append(model)
            fold_metrics[str(fold)] = {
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "val_loss": result.best_metrics["loss"],
                "val_auc": result.best_metrics["auc"],
                "val_accuracy": result.best_metrics["accuracy"],
                "train_images_per_s": round(result.images_per_second, 2),
            }
        test_scores = all_missing_probability(
            models,
            prepared.test,
            prepared.test_images,
            params.input_size,
            runtime,
            params.batch_size,
            params.num_workers,
        )
    live.make_summary()
    live.end()
    write_csv(pd.DataFrame({"ImageId": prepared.test["ImageId"], "allMissing": test_scores}), TEST_SCORES)
    per_fold = pd.DataFrame(fold_metrics).T
    metrics = {
        "val_loss": float(per_fold["val_loss"].mean()),
        "val_auc": float(np.nanmean(per_fold["val_auc"].astype(float))),
        "val_accuracy": float(per_fold["val_accuracy"].mean()),
        "train_images_per_s": float(per_fold["train_images_per_s"].mean()),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(runtime.peak_memory_mb(), 1),
        "device": str(runtime.device),
        "folds": fold_metrics,
    }
    write_json(metrics, METRICS_FILE)
    print(
        f"classifier: {params.folds} fold model(s) of {params.backbone}, val AUC {metrics['val_auc']:.4f}, "
        f"accuracy {metrics['val_accuracy']:.4f}, {metrics['wall_time_s']} s; test scores -> {TEST_SCORES}"
    )


if __name__ == "__main__":
    cli.run(main)
