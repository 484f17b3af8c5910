"""Stage inspect: what to look at to judge the pipeline, on the holdout images (`dvc plots show`).

1. Gate errors: pictures of the holdout images the chosen gate (data/rules.json) got wrong, worst first,
   with their true masks and a caption, and the gate's confusion matrix (per class too with class gating).
   What counts as a gate error in each gating mode: stages/core/inspection.py.
2. Segmentation errors: per class, the holdout pairs with the lowest Dice of the submitted masks (the gate
   and rules applied as postprocess scores them), truth above prediction; the masks are predicted again by
   the U-Net fold model that held the image out.
3. Embeddings: the first classifier fold model's pooled features of its validation images, as a 2-D PCA
   scatter coloured by defect class; and a Gaussian mixture of its clean training images' features, whose
   negative log-likelihood scores "unlike a clean image": its ROC AUC beside the classifier's own.
Writes data/plots/inspect/ (pictures and plot CSVs), data/inspect.json (the galleries' images and values)
and data/metrics/inspect.json (DVC metrics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd

from stages.core import cli
from stages.core.device import Runtime, resolve_runtime
from stages.core.errors import PipelineError
from stages.core.features import classifier_features
from stages.core.images import decode_masks, read_image
from stages.core.inference import predict_probabilities
from stages.core.inference_ops import Gate, gate_for, submitted_masks
from stages.core.inspection import (
    CLASS_LABELS,
    GREY,
    IMAGE_LABELS,
    WHITE,
    ChosenGate,
    GateVerdict,
    Line,
    chosen_gate,
    classes_line,
    defect_label,
    dice_picture,
    fit_clean_density,
    gate_confusion,
    gate_errors,
    gate_verdict,
    lowest_dice,
    off_diagonal,
    pca_2d,
    roc_auc,
    submitted_areas,
    truth_picture,
)
from stages.core.io import atomic_path, read_json, target_name, write_json
from stages.core.models import load_classifier, load_unet
from stages.core.params import load_section, require
from stages.core.postprocess import Candidates, pair_dice, select_masks
from stages.core.prepared import Prepared, load_prepared
from stages.core.scores import read_scores

RULES = Path("data/rules.json")
TRAIN_SCORES = Path("data/train_missing_count.csv")
HOLDOUT_CANDIDATES = Path("data/holdout_candidates.csv")
CLASSIFIER_DIR = Path("models/classifier")
UNET_DIR = Path("models/unet")
PLOTS_DIR = Path("data/plots/inspect")
DETAIL = Path("data/inspect.json")
METRICS = Path("data/metrics/inspect.json")


@dataclass(frozen=True)
class InspectParams:
    gallery_images: int = 8  # pictures per gallery (each gate error kind, each class), worst first
    gmm_components: int = 2  # Gaussian mixture of the clean training images' classifier features
    gmm_covariance: Literal["full", "tied", "diag", "spherical"] = "diag"
    # The mixture lives on this many principal axes of those features (null: all of them).
    gmm_pca_dims: int | None = 32
    seed: int = 0  # the mixture's initialisation
    device: str = "auto"  # auto | cpu | cuda | cuda:N: the classifier and U-Net predictions
    batch_size: int = 16

    def validate(self, section: str) -> None:
        require(self.gallery_images >= 0, f"{section}.gallery_images", "must be >= 0", self.gallery_images)
        require(self.gmm_components >= 1, f"{section}.gmm_components", "must be >= 1", self.gmm_components)
        if self.gmm_pca_dims is not None:
            require(
                self.gmm_pca_dims >= 1, f"{section}.gmm_pca_dims", "must be >= 1 or null", self.gmm_pca_dims
            )
        require(self.batch_size >= 1, f"{section}.batch_size", "must be >= 1", self.batch_size)


@dataclass(frozen=True)
class Holdout:
    """The holdout images postprocess scores: candidates, the classifier's scores, the chosen gate on them."""

    candidates: Candidates
    rows: pd.DataFrame  # prepared train rows, indexed by ImageId, in the candidates' order
    all_missing: np.ndarray  # (N,)
    presence: np.ndarray | None  # (N, K) with a multilabel classifier
    out_of_fold: float  # share of the scores from a fold model that did not train on the image
    chosen: ChosenGate
    gate: Gate
    verdict: GateVerdict

    @property
    def present(self) -> np.ndarray:
        return self.candidates.truth_area > 0


def load_holdout(prepared: Prepared) -> Holdout:
    k = prepared.num_classes
    chosen = chosen_gate(read_json(RULES, "run `dvc repro postprocess` first"), k, str(RULES))
    try:
        frame = pd.read_csv(HOLDOUT_CANDIDATES, dtype={"ImageId": str}, keep_default_na=False)
        candidates = Candidates.from_frame(frame)
    except FileNotFoundError:
        raise PipelineError(f"{HOLDOUT_CANDIDATES}: not found; run `dvc repro segment` first") from None
    except (KeyError, ValueError) as error:
        raise PipelineError(f"{HOLDOUT_CANDIDATES}: {error}; rerun `dvc repro segment`") from None
    if candidates.num_classes != k:
        raise PipelineError(f"{HOLDOUT_CANDIDATES}: {candidates.num_classes} classes, expected {k}")
    for c, rule in enumerate(chosen.rules, start=1):
        if not np.isclose(candidates.thresholds, rule.threshold, rtol=0, atol=1e-9).any():
            raise PipelineError(
                f"{RULES}: rules.{c}.threshold {rule.threshold} is not in the threshold grid of "
                f"{HOLDOUT_CANDIDATES}; rerun `dvc repro postprocess`"
            )
    ids = list(candidates.image_ids)
    train = prepared.train.set_index("ImageId", drop=False)
    unknown = [image_id for image_id in ids if image_id not in train.index]
    if unknown:
        raise PipelineError(f"{HOLDOUT_CANDIDATES}: image {unknown[0]} is not a prepared train image")
    scores = read_scores(
        TRAIN_SCORES, k, "rerun `dvc repro score_train`", ("ImageId", "allMissing", "out_of_fold")
    ).set_index("ImageId")
    missing = [image_id for image_id in ids if image_id not in scores.index]
    if missing:
        raise PipelineError(f"{TRAIN_SCORES}: no classifier scores for holdout image {missing[0]}")
    rows = scores.loc[ids]
    presence_columns = [f"p_{c}" for c in range(1, k + 1)]
    presence = rows[presence_columns].to_numpy(np.float64) if set(presence_columns) <= set(rows) else None
    all_missing = rows["allMissing"].to_numpy(np.float64)
    if chosen.mode == "class" and presence is None:
        raise PipelineError(
            f"{RULES}: gating 'class' needs {TRAIN_SCORES} to have p_1..p_{k} (a multilabel classifier); "
            "rerun `dvc repro`"
        )
    gate = gate_for(chosen.mode, all_missing, presence, k, chosen.image_threshold, chosen.class_thresholds)
    submitted = select_masks(candidates.pred_area, candidates.thresholds, chosen.rules, gate)
    return Holdout(
        candidates,
        train.loc[ids],
        all_missing,
        presence,
        float(rows["out_of_fold"].mean()) if len(rows) else 0.0,
        chosen,
        gate,
        gate_verdict(chosen.mode, gate, submitted),
    )


def image_and_truth(prepared: Prepared, row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image at its own size and its true masks (K, H, W)."""
    original = (int(row["height"]), int(row["width"]))
    image = read_image(prepared.train_images / row["ImageId"], original, original)
    rles = [row[f"rle_{c}"] for c in range(1, prepared.num_classes + 1)]
    return image, decode_masks(rles, original, original).transpose(2, 0, 1)


def write_png(picture: np.ndarray, path: Path) -> None:
    # cv2.imwrite returns False instead of raising, on a full disk too.
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise PipelineError(f"{target_name(path)}: cannot write")


def gate_text(holdout: Holdout, k: int | None) -> str:
    chosen = holdout.chosen
    if chosen.mode == "image":
        return f"image gate: wipes allMissing >= {chosen.image_threshold:.4f}"
    if chosen.mode == "class" and k is not None and chosen.class_thresholds is not None:
        return f"class gate: wipes class {k + 1} where p_{k + 1} < {chosen.class_thresholds[k]:.4f}"
    weight = "p_k" if holdout.presence is not None else "(1 - allMissing)"
    return f"soft gate: a mask is kept when {weight} x area >= min area"


def gate_gallery(
    prepared: Prepared,
    holdout: Holdout,
    errors: list[tuple[int, int | None]],
    plots: Path,
    name: str,
    limit: int,
) -> list[dict[str, Any]]:
    """The first `limit` gate errors as captioned pictures of the image with its true masks, in
    plots/gate/<name>/ (created even when empty: DVC shows an empty image folder as nothing)."""
    folder = plots / "gate" / name
    folder.mkdir(parents=True)
    verdict = "wiped by the gate" if name == "wiped_defective" else "kept by the gate"
    entries = []
    for rank, (n, k) in enumerate(errors[:limit], start=1):
        row = holdout.rows.iloc[n]
        image_id, all_missing = str(row["ImageId"]), float(holdout.all_missing[n])
        image, truth = image_and_truth(prepared, row)
        first: Line = [(f"{image_id}   allMissing {all_missing:.4f}", WHITE)]
        if k is not None and holdout.presence is not None:
            first.append((f"   p_{k + 1} {holdout.presence[n, k]:.4f}", WHITE))
        first.append((f"   {gate_text(holdout, k)}", GREY))
        what = f"class {k + 1} " if k is not None else ""
        second = [*classes_line("true classes:", holdout.present[n]), (f"   {what}{verdict}", WHITE)]
        file = f"{rank:02d}_{Path(image_id).stem}" + (f"_class{k + 1}" if k is not None else "") + ".png"
        write_png(truth_picture(image, truth, [first, second]), folder / file)
        entry: dict[str, Any] = {"ImageId": image_id, "allMissing": all_missing}
        if k is not None and holdout.presence is not None:
            entry.update({"class": k + 1, f"p_{k + 1}": float(holdout.presence[n, k])})
        entry["true_classes"] = [int(c) + 1 for c in np.flatnonzero(holdout.present[n])]
        entry["file"] = str((folder / file).relative_to(plots))
        entries.append(entry)
    return entries


def unet_masks(
    prepared: Prepared, holdout: Holdout, images: list[int], runtime: Runtime, batch_size: int
) -> dict[int, np.ndarray]:
    """The submitted masks (K, H, W) of some holdout images (indices), predicted again by the U-Net fold
    model that held each one out, with the chosen gate and rules (as stages.predict and the bundle apply
    them)."""
    if not images:
        return {}
    models = {
        int(path.stem.removeprefix("fold_")): path
        for path in UNET_DIR.glob("fold_*.pt")
        if path.stem.removeprefix("fold_").isdigit()
    }
    rules = holdout.chosen.rules
    masks: dict[int, np.ndarray] = {}
    by_fold: dict[int, list[int]] = {}
    for n in images:
        by_fold.setdefault(int(holdout.rows.iloc[n]["fold"]), []).append(n)
    for fold, members in sorted(by_fold.items()):
        if fold not in models:
            raise PipelineError(
                f"{UNET_DIR}: no fold_{fold}.pt for holdout fold {fold}; rerun `dvc repro segment`"
            )
        model, checkpoint = load_unet(models[fold])
        if checkpoint.get("val_fold", fold) != fold:
            raise PipelineError(f"{models[fold]}: holds out fold {checkpoint.get('val_fold')}, not {fold}")
        table = holdout.rows.iloc[members].reset_index(drop=True)
        predicted = predict_probabilities(
            [model],
            table,
            prepared.train_images,
            tuple(checkpoint["config"]["input_size"]),
            runtime,
            batch_size,
            checkpoint.get("params", {}).get("tta", "none"),
        )
        for n, (_, probabilities) in zip(members, predicted, strict=True):
            kept = submitted_masks(
                probabilities,
                [rule.threshold for rule in rules],
                [rule.min_area_px for rule in rules],
                holdout.gate.keep[n],
                holdout.gate.weight[n],
            )
            masks[n] = np.stack(
                [
                    m.astype(np.uint8) if m is not None else np.zeros(probabilities.shape[1:], np.uint8)
                    for m in kept
                ]
            )
    return masks


def dice_galleries(
    prepared: Prepared, holdout: Holdout, plots: Path, limit: int, runtime: Runtime, batch_size: int
) -> dict[str, Any]:
    """Per class, the `limit` lowest-Dice pairs as truth-above-prediction pictures in plots/dice/class_<k>/
    (each folder created even when empty), and what each picture shows."""
    candidates, rules = holdout.candidates, holdout.chosen.rules
    dice = pair_dice(candidates, rules, holdout.gate)  # exactly as postprocess scores the holdout
    areas = submitted_areas(candidates, rules, holdout.gate)
    ranked = lowest_dice(dice, candidates.truth_area, areas)
    shown = [order[:limit] for order in ranked]
    drawn = sorted({int(n) for order in shown for n in order})
    masks = unet_masks(prepared, holdout, drawn, runtime, batch_size)
    report: dict[str, Any] = {}
    for k, order in enumerate(shown):
        folder = plots / "dice" / f"class_{k + 1}"
        folder.mkdir(parents=True)
        entries = []
        for rank, n in enumerate(order, start=1):
            row = holdout.rows.iloc[n]
            image_id = str(row["ImageId"])
            image, truth = image_and_truth(prepared, row)
            file = folder / f"{rank:02d}_{Path(image_id).stem}.png"
            write_png(dice_picture(image, truth, masks[n], dice_caption(holdout, n, k, dice, areas)), file)
            entries.append(
                {
                    "ImageId": image_id,
                    "dice": float(dice[n, k]),
                    "truth_area": int(candidates.truth_area[n, k]),
                    "submitted_area": int(areas[n, k]),
                    "drawn_area": int(masks[n][k].sum()),  # the mask predicted again for the picture
                    "file": str(file.relative_to(plots)),
                }
            )
        report[str(k + 1)] = {
            "pairs_considered": len(ranked[k]),
            "mean_dice": float(dice[:, k].mean()) if len(dice) else None,
            "gallery": entries,
        }
    return report


def dice_caption(holdout: Holdout, n: int, k: int, dice: np.ndarray, areas: np.ndarray) -> list[Line]:
    image_id, truth_area = holdout.rows.iloc[n]["ImageId"], holdout.candidates.truth_area[n, k]
    rule = holdout.chosen.rules[k]
    first: Line = [
        (f"{image_id}   class {k + 1}   Dice {dice[n, k]:.4f}", WHITE),
        (f"   true {truth_area} px, submitted {areas[n, k]} px", WHITE),
    ]
    rule_text = (
        "class switched off" if rule.off else f"rule p >= {rule.threshold:g}, area >= {rule.min_area_px}"
    )
    if holdout.chosen.mode != "none":
        rule_text += f"; the gate {'kept' if holdout.gate.keep[n, k] else 'wiped'} it"
    return [first, [*classes_line("true classes:", holdout.present[n]), (f"   {rule_text}", GREY)]]


def embeddings(
    params: InspectParams, prepared: Prepared, runtime: Runtime
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The first fold model's features of its validation images (PCA scatter rows) and the AUCs of its
    allMissing and of the clean-image mixture's negative log-likelihood on those images."""
    paths = sorted(
        (path for path in CLASSIFIER_DIR.glob("fold_*.pt") if path.stem.removeprefix("fold_").isdigit()),
        key=lambda path: int(path.stem.removeprefix("fold_")),
    )
    if not paths:
        raise PipelineError(f"{CLASSIFIER_DIR}: no fold_*.pt checkpoints; run `dvc repro classifier` first")
    model, checkpoint = load_classifier(paths[0])
    size = tuple(checkpoint["config"]["input_size"])
    if "val_fold" not in checkpoint or "train_folds" not in checkpoint:
        raise PipelineError(f"{paths[0]}: no val_fold and train_folds; rerun `dvc repro classifier`")
    train = prepared.train
    validation = train[train["fold"] == int(checkpoint["val_fold"])].reset_index(drop=True)
    clean = train[train["fold"].isin(checkpoint["train_folds"]) & ~train["has_defect"]].reset_index(drop=True)
    if len(clean) < max(params.gmm_components, 2):
        raise PipelineError(
            f"params: inspect.gmm_components {params.gmm_components}: {paths[0]} trained on only "
            f"{len(clean)} clean images, too few for the mixture"
        )
    features, probabilities = classifier_features(
        model, validation, prepared.train_images, size, runtime, params.batch_size
    )
    clean_features, _ = classifier_features(
        model, clean, prepared.train_images, size, runtime, params.batch_size
    )
    density = fit_clean_density(
        clean_features, params.gmm_components, params.gmm_covariance, params.gmm_pca_dims, params.seed
    )
    nll = density.negative_log_likelihood(features)
    coords, ratio = pca_2d(features)
    defective = validation["has_defect"].to_numpy(bool)
    scatter = pd.DataFrame(
        {
            "ImageId": validation["ImageId"],
            "label": validation["classes"].map(defect_label),
            "pc1": coords[:, 0],
            "pc2": coords[:, 1],
            "allMissing": probabilities[:, 0],
            "gmm_nll": nll,
        }
    )
    report = {
        "fold_model": str(paths[0]),
        "val_fold": int(checkpoint["val_fold"]),
        "train_folds": [int(f) for f in checkpoint["train_folds"]],
        "images": len(validation),
        "defective_images": int(defective.sum()),
        "labels": {str(k): int(v) for k, v in scatter["label"].value_counts().sort_index().items()},
        "features": int(features.shape[1]),
        "pca_explained_variance_ratio": [float(v) for v in ratio],
        "gmm": {
            "clean_train_images": len(clean),
            "components": params.gmm_components,
            "covariance": params.gmm_covariance,
            "dims": int(density.components.shape[0]),
            "converged": bool(density.mixture.converged_),
        },
        "classifier_auc": roc_auc(1.0 - probabilities[:, 0], defective),
        "gmm_auc": roc_auc(nll, defective),
    }
    return scatter, report


def confusion_counts(images: pd.DataFrame, classes: list[pd.DataFrame]) -> dict[str, Any]:
    wiped, kept = off_diagonal(images, IMAGE_LABELS)
    per_class = {}
    for k, frame in enumerate(classes, start=1):
        wiped_k, kept_k = off_diagonal(frame, CLASS_LABELS)
        per_class[str(k)] = {"wiped_present": wiped_k, "kept_absent": kept_k}
    return {"images": {"wiped_defective": wiped, "kept_clean": kept}, "per_class": per_class}


def main() -> None:
    started = time.perf_counter()
    params = load_section(InspectParams, "inspect")
    prepared = load_prepared()
    holdout = load_holdout(prepared)
    runtime = resolve_runtime(params.device, False, "inspect.device")
    ids = list(holdout.candidates.image_ids)
    errors = gate_errors(holdout.verdict, holdout.present, holdout.all_missing, holdout.presence)
    images_confusion, class_confusion = gate_confusion(ids, holdout.present, holdout.verdict)

    limit = params.gallery_images
    with atomic_path(PLOTS_DIR, directory=True) as plots:
        wiped = gate_gallery(prepared, holdout, errors.wiped_defective, plots, "wiped_defective", limit)
        kept = gate_gallery(prepared, holdout, errors.kept_clean, plots, "kept_clean", limit)
        segmentation = dice_galleries(prepared, holdout, plots, limit, runtime, params.batch_size)
        images_confusion.to_csv(plots / "gate_confusion.csv", index=False)
        (plots / "class_gate_confusion").mkdir()
        for k, frame in enumerate(class_confusion, start=1):
            frame.to_csv(plots / "class_gate_confusion" / f"class_{k}.csv", index=False)
        scatter, embedding = embeddings(params, prepared, runtime)
        scatter.to_csv(plots / "embeddings.csv", index=False)

    wall_time = round(time.perf_counter() - started, 2)
    detail = {
        "gating": holdout.chosen.mode,
        "image_threshold": holdout.chosen.image_threshold,
        "class_thresholds": holdout.chosen.class_thresholds,
        "holdout_images": len(ids),
        "scores_out_of_fold": holdout.out_of_fold,
        "gate": {
            "unit": holdout.verdict.unit,  # what a gate error counts: image, pair (class gating), null (none)
            "wiped_defective": len(errors.wiped_defective),
            "kept_clean": len(errors.kept_clean),
            "confusion": confusion_counts(images_confusion, class_confusion),
            "wiped_defective_gallery": wiped,
            "kept_clean_gallery": kept,
        },
        "segmentation": segmentation,
        "embeddings": embedding,
        "wall_time_s": wall_time,
    }
    write_json(detail, DETAIL)
    # A metrics file holds numbers only: an AUC that is undefined (one kind of image only) is left out.
    metrics = {key: embedding[key] for key in ("classifier_auc", "gmm_auc") if embedding[key] is not None}
    metrics.update(
        gate_wiped_defective=len(errors.wiped_defective),
        gate_kept_clean=len(errors.kept_clean),
        wall_time_s=wall_time,
    )
    write_json(metrics, METRICS)
    aucs = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key.endswith("auc"))
    print(
        f"inspect: {holdout.chosen.mode} gating, {len(ids)} holdout images: {len(errors.wiped_defective)} "
        f"defective {holdout.verdict.unit or 'image'}(s) wiped, {len(errors.kept_clean)} clean kept; "
        f"{aucs or 'no AUC'} on {embedding['images']} validation images; {wall_time} s -> {PLOTS_DIR}/"
    )


if __name__ == "__main__":
    cli.run(main)
