"""Stages classifier, score_train and threshold, run through `dvc repro` (the session's `dag_repo`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stages.core.dataset import parse_labels, read_csv
from stages.core.device import resolve_runtime
from stages.core.inference import classifier_probabilities
from stages.core.models import load_classifier
from stages.core.prepared import load_prepared
from tests.conftest import DAG_PARAMS
from tests.dvc_repo import STAGES, params_overridden, run

CLASSIFIER = DAG_PARAMS["classifier"]


@pytest.fixture
def repo(dag_repo: Path) -> Path:
    return dag_repo


def test_outputs(repo: Path) -> None:
    assert sorted(p.name for p in (repo / "models/classifier").iterdir()) == ["fold_0.pt", "fold_1.pt"]
    test_scores = pd.read_csv(repo / "data/test_missing_count.csv")
    assert list(test_scores.columns) == ["ImageId", "allMissing"]
    assert len(test_scores) == 8 and test_scores["allMissing"].between(0, 1).all()
    metrics = json.loads((repo / "data/classifier_metrics.json").read_text())
    assert {
        "val_loss",
        "val_auc",
        "val_accuracy",
        "wall_time_s",
        "peak_memory_mb",
        "train_images_per_s",
    } <= set(metrics)
    assert set(metrics["folds"]) == {"0", "1"}
    curve = pd.read_csv(repo / "data/live/classifier/plots/metrics/fold_1/loss.tsv", sep="\t")
    assert list(curve["step"]) == [1]
    threshold = json.loads((repo / "data/threshold.json").read_text())
    assert threshold["objective"] == "dice"
    assert set(threshold["classes"]) == {"defect", "clean"}
    for name in ("roc.csv", "precision_recall.csv", "histogram.csv", "objective.csv"):
        assert (repo / "data/plots/threshold" / name).is_file()
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_fold_models_never_score_their_own_training_images(repo: Path) -> None:
    scores = pd.read_csv(repo / "data/train_missing_count.csv", dtype={"ImageId": str})
    assert list(scores.columns) == ["ImageId", "allMissing", "has_defect", "fold", "out_of_fold"]
    checkpoints = {
        fold: torch.load(repo / f"models/classifier/fold_{fold}.pt", weights_only=True) for fold in (0, 1)
    }
    for fold, checkpoint in checkpoints.items():
        assert checkpoint["val_fold"] == fold and fold not in checkpoint["train_folds"]
    # Folds 0 and 1 are held out by their own model; folds 2-4 trained both models: not out-of-fold.
    assert (scores["out_of_fold"] == scores["fold"].isin([0, 1])).all()
    assert scores["allMissing"].between(0, 1).all()


def test_reloaded_checkpoint_reproduces_the_scores(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    prepared = load_prepared()
    scores = pd.read_csv("data/train_missing_count.csv", dtype={"ImageId": str}).set_index("ImageId")
    model, checkpoint = load_classifier(Path("models/classifier/fold_1.pt"))
    rows = prepared.train[prepared.train["fold"] == 1]
    again = classifier_probabilities(
        [model],
        rows,
        prepared.train_images,
        tuple(checkpoint["config"]["input_size"]),
        resolve_runtime("cpu", False),
        4,
    )
    np.testing.assert_allclose(again[:, 0], scores.loc[rows["ImageId"], "allMissing"], atol=1e-6)


def test_threshold_param_reruns_only_threshold_and_postprocess(repo: Path) -> None:
    with params_overridden(repo, {"threshold": {"objective": "youden"}}, restore=()):
        output = run(repo, "dvc", "repro").stdout
        assert json.loads((repo / "data/threshold.json").read_text())["objective"] == "youden"
    assert "Running stage 'threshold'" in output and "Running stage 'postprocess'" in output
    for stage in ("synthesize", "prepare", "classifier", "score_train", "segment"):
        assert f"Running stage '{stage}'" not in output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # (An unknown backbone, a missing weights file and more: tests/test_bad_inputs.py.)
        ({"learning_rate": -0.1}, "params: classifier.learning_rate must be positive, got -0.1"),
        ({"folds": 9}, "params: classifier.folds must be <= prepare.n_folds (5), got 9"),
    ],
)
def test_bad_classifier_params_fail_with_one_line(
    repo: Path, override: dict[str, object], message: str
) -> None:
    with params_overridden(repo, {"classifier": override}):
        result = run(repo, "python", "-m", "stages.classifier", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_class_gating_needs_the_multilabel_head(repo: Path) -> None:
    with params_overridden(repo, {"postprocess": {"gating": "class"}}):
        result = run(repo, "python", "-m", "stages.postprocess", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params: postprocess.gating 'class' needs a presence probability and a threshold per class: "
        "set classifier.head to multilabel (supported now: none, image, soft)"
    ]


def test_multilabel_head_per_class_thresholds_and_class_gating(repo: Path) -> None:
    stages = STAGES
    before = (repo / "data/train_missing_count.csv").read_text()
    with params_overridden(repo, {"classifier": {**CLASSIFIER, "head": "multilabel"}}, restore=()):
        output = run(repo, "dvc", "repro").stdout
        reran = {stage for stage in stages if f"Running stage '{stage}'" in output}
        # Not the U-Net.
        assert reran == {"classifier", "score_train", "threshold", "postprocess", "inspect", "bundle"}
        presence = [f"p_{k}" for k in range(1, 5)]
        test_scores = pd.read_csv(repo / "data/test_missing_count.csv")
        assert list(test_scores.columns) == ["ImageId", "allMissing", *presence]
        train_scores = pd.read_csv(repo / "data/train_missing_count.csv")
        assert list(train_scores.columns) == [
            "ImageId",
            "allMissing",
            "has_defect",
            "fold",
            "out_of_fold",
            *presence,
        ]
        assert train_scores[["allMissing", *presence]].stack().between(0, 1).all()
        thresholds = json.loads((repo / "data/threshold.json").read_text())
        assert set(thresholds["per_class"]) == {"1", "2", "3", "4"}
        # Each class threshold keeps every out-of-fold image that has the class.
        oof = train_scores[train_scores["out_of_fold"]]
        truth = pd.read_csv(repo / "data/prepared/train.csv", dtype=str, keep_default_na=False)
        present = truth.set_index("ImageId").loc[oof["ImageId"], [f"rle_{k}" for k in range(1, 5)]].ne("")
        for k in range(1, 5):
            chosen = thresholds["per_class"][str(k)]
            kept = oof[f"p_{k}"].to_numpy() >= chosen["threshold"]
            assert kept[present[f"rle_{k}"].to_numpy()].all()
            assert chosen["present"] == int(present[f"rle_{k}"].sum())
        evaluation = json.loads((repo / "data/eval.json").read_text())
        assert list(evaluation["gating_modes"]) == ["none", "image", "class", "soft"]

        with params_overridden(repo, {"postprocess": {"gating": "class"}}):
            output = run(repo, "dvc", "repro").stdout
            assert {stage for stage in stages if f"Running stage '{stage}'" in output} == {
                "postprocess",
                "inspect",
                "bundle",
            }
            evaluation = json.loads((repo / "data/eval.json").read_text())
            assert evaluation["gating"] == "class"
            class_thresholds = evaluation["class_thresholds"]
            submission = parse_labels(read_csv(repo / "data/submission.csv"), "submission").pairs
            scores = test_scores.set_index("ImageId")
            wiped = 0
            for image_id, class_id, encoded in submission[["ImageId", "ClassId", "EncodedPixels"]].itertuples(
                index=False
            ):
                if scores.at[image_id, f"p_{class_id}"] < class_thresholds[str(class_id)]:
                    assert encoded == ""
                    wiped += 1
            assert evaluation["test_pairs_wiped"] == wiped
            # The Kaggle bundle gates per class alike: predict.py rewrites this submission.
            bundle = json.loads((repo / "data/bundle_metrics.json").read_text())
            assert bundle["gating"] == "class" and bundle["predict"]["matches_submission"] is True
            # Stage inspect counts the class gate's errors per (image, class) pair: its per-class confusion
            # files hold the gate's verdict p_k >= the class threshold on every holdout image.
            rules = json.loads((repo / "data/rules.json").read_text())
            holdout = pd.read_csv(repo / "data/holdout_candidates.csv", dtype={"ImageId": str})[
                "ImageId"
            ].unique()
            oof_scores = train_scores.set_index("ImageId")
            wiped_present = kept_absent = 0
            for k in range(1, 5):
                frame = pd.read_csv(repo / f"data/plots/inspect/class_gate_confusion/class_{k}.csv")
                assert sorted(frame["ImageId"]) == sorted(holdout)
                gated = (
                    oof_scores.loc[frame["ImageId"], f"p_{k}"].to_numpy() >= rules["class_thresholds"][k - 1]
                )
                assert ((frame["predicted"] == "present").to_numpy() == gated).all()
                wiped_present += int(
                    ((frame["actual"] == "present") & (frame["predicted"] == "absent")).sum()
                )
                kept_absent += int(((frame["actual"] == "absent") & (frame["predicted"] == "present")).sum())
            inspected = json.loads((repo / "data/metrics/inspect.json").read_text())
            assert (inspected["gate_wiped_defective"], inspected["gate_kept_clean"]) == (
                wiped_present,
                kept_absent,
            )
            detail = json.loads((repo / "data/inspect.json").read_text())
            assert detail["gating"] == "class" and detail["gate"]["unit"] == "pair"
            pictures = len(list((repo / "data/plots/inspect/gate/kept_clean").glob("*_class*.png")))
            assert pictures == min(kept_absent, DAG_PARAMS["inspect"]["gallery_images"])
    # Back to the binary head: the session's outputs come back from DVC's run-cache, nothing retrains.
    assert (repo / "data/train_missing_count.csv").read_text() == before
