"""Stage classifier (notebook 1): the allMissing classifier, one model per fold, and test scores.

allMissing = P(image has no defect of any class). With `head: multilabel` the classifier also gives one
presence probability per defect class, p_k = P(class k is in the image). Outputs
models/classifier/fold_<k>.pt (self-describing checkpoints), data/test_missing_count.csv (ImageId,
allMissing [, p_1 ... p_K], averaged over the fold models), data/classifier_metrics.json (the detail), its
headline figures data/metrics/classifier.json (the DVC metrics) and dvclive curves in data/live/classifier/.
With `nproc_per_node` > 1 it runs under torchrun (stages.core.distributed): the processes share the
training draws, the validation and the test images; rank 0 writes every output.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from stages.core import cli
from stages.core.backends import BackendName, InferenceBackend
from stages.core.device import Runtime, inference, resolve_runtime
from stages.core.distributed import interleave, run_under_torchrun
from stages.core.headline import write_headline
from stages.core.images import ImageTable, build_augmentations, classifier_targets
from stages.core.inference import classifier_probabilities
from stages.core.io import atomic_path, write_csv, write_json
from stages.core.models import (
    CLASSIFIER_BACKBONES,
    DefectClassifier,
    check_encoder,
    classifier_outputs,
    save_checkpoint,
)
from stages.core.params import load_section, require
from stages.core.prepared import PREPARED_DIR, Prepared, load_prepared
from stages.core.resume import ResumeStore, resume_key
from stages.core.training import FoldTask, TrainParams, train_folds

MODEL_DIR = Path("models/classifier")
TEST_SCORES = Path("data/test_missing_count.csv")
METRICS_FILE = Path("data/classifier_metrics.json")
HEADLINE_FILE = Path("data/metrics/classifier.json")
HEADLINE = ("val_auc", "val_loss", "val_accuracy", "train_images_per_s", "wall_time_s", "peak_memory_mb")
LIVE_DIR = Path("data/live/classifier")


@dataclass(frozen=True)
class ClassifierParams(TrainParams):
    backbone: str = "densenet121"
    dropout: float = 0.2
    # binary: one output, allMissing (notebook 1). multilabel: allMissing and one presence probability per
    # defect class (p_1 ... p_K), for per-class gating.
    head: Literal["binary", "multilabel"] = "binary"
    # What predicts the test images (stages/core/backends.py): eager | onnxruntime | compile.
    inference_backend: BackendName = "eager"

    def validate(self, section: str) -> None:
        super().validate(section)
        check_encoder(self.backbone, self.encoder_weights, section, CLASSIFIER_BACKBONES)
        require(0.0 <= self.dropout < 1.0, f"{section}.dropout", "must be in [0, 1)", self.dropout)


def evaluate_classifier(model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, float]:
    """Validation loss (BCE over the output columns), AUC and accuracy at 0.5 of allMissing, and with a
    multilabel head the AUC of each class's presence. Under torchrun the loader holds this rank's strided
    shard: the logits of every rank are gathered back into the validation order (the AUC needs them
    all), so that every rank computes the metrics of the whole validation set."""
    model.eval()
    outputs = getattr(model, "outputs", 1)
    logits, labels = [torch.empty((0, outputs))], [torch.empty((0, outputs))]  # an empty shard too
    with inference(runtime):
        for images, targets in loader:
            logits.append(model(runtime.batch(images)).float().cpu())
            labels.append(targets)
    logit, label = torch.cat(logits), torch.cat(labels)
    if runtime.group.distributed:
        parts = runtime.group.all_gather((logit, label))
        logit, label = (torch.from_numpy(interleave([part[i].numpy() for part in parts])) for i in (0, 1))
    probability, truth = torch.sigmoid(logit).numpy(), label.numpy() >= 0.5
    metrics = {
        "loss": float(nn.functional.binary_cross_entropy_with_logits(logit, label)),
        "auc": _auc(truth[:, 0], probability[:, 0]),
        "accuracy": float(((probability[:, 0] >= 0.5) == truth[:, 0]).mean()),
    }
    for k in range(1, logit.shape[1]):
        metrics[f"auc_{k}"] = _auc(truth[:, k], probability[:, k])
    return metrics


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (the AUC is undefined)."""
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else float("nan")


def classifier_task(params: ClassifierParams, prepared: Prepared, runtime: Runtime) -> FoldTask:
    outputs = classifier_outputs(params.head, prepared.num_classes)
    folder = prepared.train_images

    def train_set(rows: pd.DataFrame, seed: int) -> ImageTable:
        augment = build_augmentations(params.augment, seed)
        labels = classifier_targets(rows, outputs)
        return ImageTable(rows, folder, params.input_size, "labels", augment=augment, labels=labels)

    def val_set(rows: pd.DataFrame) -> ImageTable:
        labels = classifier_targets(rows, outputs)
        return ImageTable(rows, folder, params.input_size, "labels", labels=labels)

    return FoldTask(
        name="classifier",
        build_model=lambda: DefectClassifier(
            params.backbone,
            params.encoder_weights,
            params.dropout,
            params.head,
            prepared.num_classes,
            weights_key="classifier.encoder_weights",
        ),
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.BCEWithLogitsLoss(),
        evaluate=lambda model, loader: evaluate_classifier(model, loader, runtime),
    )


def score_table(image_ids: pd.Series, probabilities: np.ndarray) -> pd.DataFrame:
    """ImageId, allMissing and, for a multilabel head, p_1 ... p_K."""
    table = pd.DataFrame({"ImageId": image_ids.to_numpy(), "allMissing": probabilities[:, 0]})
    for k in range(1, probabilities.shape[1]):
        table[f"p_{k}"] = probabilities[:, k]
    return table


def main() -> None:
    params = load_section(ClassifierParams, "classifier")
    run_under_torchrun("stages.classifier", params.nproc_per_node, "classifier.nproc_per_node")
    prepared = load_prepared()
    params.check_folds("classifier", prepared.n_folds)
    runtime = resolve_runtime(params.device, params.mixed_precision, "classifier.device")
    main_rank = runtime.group.is_main
    config = {
        "backbone": params.backbone,
        "dropout": params.dropout,
        "head": params.head,
        "num_classes": prepared.num_classes,
        "input_size": list(params.input_size),
    }
    started = time.perf_counter()
    runtime.reset_peak_memory()
    task = classifier_task(params, prepared, runtime)
    # A killed run continues from its last finished epoch (see stages/core/resume.py); the number of
    # processes is part of the key, as it changes the training.
    key = resume_key(
        {**asdict(params), "world": runtime.group.world}, [PREPARED_DIR], [prepared.train_images]
    )
    store = ResumeStore.open("classifier", key, remove_stale=main_rank)
    # dvclive empties its folder when it starts: it logs to a temporary one, which replaces the previous
    # curves only when the stage succeeds. Under torchrun only rank 0 logs and writes.
    with ExitStack() as outputs:
        live = None
        if main_rank:
            live_dir = outputs.enter_context(atomic_path(LIVE_DIR, directory=True))
            model_dir = outputs.enter_context(atomic_path(MODEL_DIR, directory=True))
            live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        fold_models = train_folds(task, params, prepared.train, runtime, live, store)
        if main_rank:
            for fold_model in fold_models:
                path = model_dir / f"fold_{fold_model.fold}.pt"
                save_checkpoint(path, fold_model.model, config, fold_model.checkpoint_extra(params))
        test_scores = classifier_probabilities(
            [fold_model.model for fold_model in fold_models],
            prepared.test,
            prepared.test_images,
            params.input_size,
            runtime,
            params.batch_size,
            params.num_workers,
            InferenceBackend(params.inference_backend, "classifier.inference_backend"),
        )
        if live is not None:
            live.make_summary()
            live.end()
    if not main_rank:
        return
    write_csv(score_table(prepared.test["ImageId"], test_scores), TEST_SCORES)
    names = ("loss", "auc", "accuracy", *(f"auc_{k}" for k in range(1, test_scores.shape[1])))
    fold_metrics = {str(m.fold): m.metrics(names) for m in fold_models}
    per_fold = pd.DataFrame(fold_metrics).T.astype(float)
    metrics = {
        "head": params.head,
        "val_loss": float(per_fold["val_loss"].mean()),
        "val_auc": float(np.nanmean(per_fold["val_auc"])),
        "val_accuracy": float(per_fold["val_accuracy"].mean()),
        **{
            f"val_auc_{k}": float(np.nanmean(per_fold[f"val_auc_{k}"]))
            if per_fold[f"val_auc_{k}"].notna().any()
            else None
            for k in range(1, test_scores.shape[1])
        },
        "train_images_per_s": float(per_fold["train_images_per_s"].mean()),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(runtime.peak_memory_mb(), 1),
        "device": str(runtime.device),
        "processes": runtime.group.world,
        "folds": fold_metrics,
    }
    write_json(metrics, METRICS_FILE)
    write_headline({name: metrics[name] for name in HEADLINE}, HEADLINE_FILE)
    store.finish()
    print(
        f"classifier: {params.folds} fold model(s) of {params.backbone} ({params.head} head), val AUC "
        f"{metrics['val_auc']:.4f}, accuracy {metrics['val_accuracy']:.4f}, {metrics['wall_time_s']} s; "
        f"test scores -> {TEST_SCORES}"
    )


if __name__ == "__main__":
    cli.run(main)
