"""Stages segment and postprocess and the whole DAG, through `dvc repro` (the session's `dag_repo`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from stages.core.dataset import parse_labels, read_csv
from tests.dvc_repo import params_overridden, run

STAGES = ("synthesize", "prepare", "classifier", "score_train", "threshold", "segment", "postprocess")


def read_pairs(path: Path) -> pd.DataFrame:
    return parse_labels(read_csv(path), str(path)).pairs.set_index(["ImageId", "ClassId"])["EncodedPixels"]


def test_dag_has_every_stage(dag_repo: Path) -> None:
    output = run(dag_repo, "dvc", "dag").stdout
    for stage in STAGES:
        assert stage in output


def test_submission_is_complete_and_in_the_sample_format(dag_repo: Path) -> None:
    root = dag_repo / "data/synthetic"
    sample = read_csv(root / "sample_submission.csv")
    for name in ("submission_raw.csv", "submission.csv"):
        submission = read_csv(dag_repo / "data" / name)
        assert list(submission.columns) == list(sample.columns)
        assert len(submission) == len(sample) == 8 * 4
        pairs = read_pairs(dag_repo / "data" / name)
        assert pairs.index.equals(read_pairs(root / "sample_submission.csv").index)


def test_gating_wipes_exactly_the_images_at_or_over_the_threshold(dag_repo: Path) -> None:
    threshold = json.loads((dag_repo / "data/eval.json").read_text())["threshold"]
    scores = pd.read_csv(dag_repo / "data/test_missing_count.csv").set_index("ImageId")["allMissing"]
    raw, gated = (
        read_pairs(dag_repo / "data/submission_raw.csv"),
        read_pairs(dag_repo / "data/submission.csv"),
    )
    for (image_id, class_id), rle in gated.items():
        expected = "" if scores[image_id] >= threshold else raw[(image_id, class_id)]
        assert rle == expected


def test_evaluation_metrics(dag_repo: Path) -> None:
    evaluation = json.loads((dag_repo / "data/eval.json").read_text())
    holdout = evaluation["holdout"]
    for name in ("empty", "segmentation", "gated"):
        assert 0.0 <= holdout[name]["mean_dice"] <= 1.0
        assert set(holdout[name]["per_class"]) == {"1", "2", "3", "4"}
    truth = pd.read_csv(dag_repo / "data/prepared/train.csv", dtype=str, keep_default_na=False)
    holdout_rows = truth[truth["fold"] == "0"]
    empty_pairs = (holdout_rows[[f"rle_{k}" for k in range(1, 5)]] == "").to_numpy().mean()
    assert holdout["empty"]["mean_dice"] == pytest.approx(empty_pairs)
    # The test Dice in eval.json is what the local leaderboard says of the submission files.
    for name, file in (("gated", "submission.csv"), ("segmentation", "submission_raw.csv")):
        scored = run(
            dag_repo,
            "python",
            "-m",
            "stages.score",
            f"data/{file}",
            "data/synthetic/test_truth.csv",
            "--json",
        )
        assert json.loads(scored.stdout)["mean_dice"] == pytest.approx(evaluation["test"][name]["mean_dice"])
    segment = json.loads((dag_repo / "data/segment_metrics.json").read_text())
    assert set(segment["rules"]) == {"1", "2", "3", "4"}
    assert segment["holdout_images"] == len(holdout_rows)
    assert "eval.json" in run(dag_repo, "dvc", "metrics", "show").stdout


def test_checkpoint_carries_the_post_processing_rules(dag_repo: Path) -> None:
    checkpoint = torch.load(dag_repo / "models/unet/fold_0.pt", weights_only=False)
    segment = json.loads((dag_repo / "data/segment_metrics.json").read_text())
    assert checkpoint["config"] == {
        "encoder": "resnet18",
        "decoder_channels": [128, 64, 32, 16, 8],
        "num_classes": 4,
        "input_size": [64, 384],
    }
    assert [rule["threshold"] for rule in checkpoint["rules"]] == [
        segment["rules"][k]["threshold"] for k in ("1", "2", "3", "4")
    ]


def test_holdout_plots(dag_repo: Path) -> None:
    plots = sorted((dag_repo / "data/plots/segment").glob("*.png"))
    assert len(plots) == 2


def test_postprocess_param_reruns_only_postprocess(dag_repo: Path) -> None:
    with params_overridden(dag_repo, {"postprocess": {"threshold": 0.0}}):
        started = time.perf_counter()
        output = run(dag_repo, "dvc", "repro").stdout
        seconds = time.perf_counter() - started
        assert "Running stage 'postprocess'" in output
        for stage in STAGES[:-1]:
            assert f"Running stage '{stage}'" not in output
        # Threshold 0 wipes every image: the submission is all empty.
        assert (read_pairs(dag_repo / "data/submission.csv") == "").all()
    print(f"postprocess-only rerun: {seconds:.1f} s")
    run(dag_repo, "dvc", "repro")


def test_broken_raw_submission_is_rejected(dag_repo: Path) -> None:
    raw_path = dag_repo / "data/submission_raw.csv"
    original = raw_path.read_text()
    lines = original.splitlines()
    try:
        raw_path.write_text("\n".join(lines[:-1]) + "\n")  # drop the last pair
        result = run(dag_repo, "python", "-m", "stages.postprocess", check=False)
        assert result.returncode == 1
        assert result.stderr.strip().startswith("error: data/submission_raw.csv: no row for image")
    finally:
        raw_path.write_text(original)
