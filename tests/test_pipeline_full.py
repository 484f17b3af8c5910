"""Stages segment and postprocess and the whole DAG, through `dvc repro` (the session's `dag_repo`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from stages.core import rle
from stages.core.dataset import parse_labels, read_csv
from tests.dvc_repo import STAGES, params_overridden, run


def updated(output: str) -> list[str]:
    """Stages whose outputs `dvc repro` changed: run, or restored from DVC's run cache."""
    return [
        stage
        for stage in STAGES
        if f"Running stage '{stage}'" in output or f"Stage '{stage}' is cached" in output
    ]


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


def read_candidates(repo: Path) -> pd.DataFrame:
    return pd.read_csv(repo / "data/test_candidates.csv", dtype={"ImageId": str}, keep_default_na=False)


def expected_pairs(repo: Path, rules: dict[str, dict], wiped: set[str]) -> dict[tuple[str, int], str]:
    """What a submission must hold: each pair's candidate at its class's rule threshold, kept when at
    least the rule's min area and its image not wiped."""
    candidates = read_candidates(repo).set_index(["ImageId", "ClassId", "threshold"])
    expected = {}
    for image_id in pd.read_csv(repo / "data/test_missing_count.csv", dtype={"ImageId": str})["ImageId"]:
        for class_id in range(1, 5):
            rule = rules[str(class_id)]
            key = (image_id, class_id, rule["threshold"])
            area, encoded = (
                candidates.loc[key, ["area", "EncodedPixels"]] if key in candidates.index else (0, "")
            )
            kept = image_id not in wiped and area > 0 and area >= rule["min_area_px"]
            expected[(image_id, class_id)] = encoded if kept else ""
    return expected


def test_gating_wipes_exactly_the_images_at_or_over_the_threshold(dag_repo: Path) -> None:
    evaluation = json.loads((dag_repo / "data/eval.json").read_text())
    assert evaluation["gating"] == "image"
    scores = pd.read_csv(dag_repo / "data/test_missing_count.csv").set_index("ImageId")["allMissing"]
    wiped = set(scores.index[scores >= evaluation["threshold"]])
    expected = expected_pairs(dag_repo, evaluation["rules"], wiped)
    gated = read_pairs(dag_repo / "data/submission.csv")
    assert {key: rle for key, rle in gated.items()} == expected
    assert evaluation["test_pairs_wiped"] == 4 * len(wiped)


def test_candidates_and_the_raw_submission(dag_repo: Path) -> None:
    segment = json.loads((dag_repo / "data/segment_metrics.json").read_text())
    raw = read_pairs(dag_repo / "data/submission_raw.csv")
    assert {key: rle for key, rle in raw.items()} == expected_pairs(dag_repo, segment["rules"], set())
    candidates = read_candidates(dag_repo)
    grid = yaml.safe_load((dag_repo / "params.yaml").read_text())["segment"]["thresholds"]
    assert set(candidates["threshold"]) <= set(grid) and (candidates["area"] > 0).all()
    for row in candidates.sample(min(len(candidates), 20), random_state=0).itertuples():
        assert rle.area(row.EncodedPixels) == row.area
    # A lower threshold's mask contains the higher one's: areas never grow with the threshold.
    areas = candidates.pivot_table(index=["ImageId", "ClassId"], columns="threshold", values="area").fillna(0)
    assert (areas.diff(axis=1).fillna(0) <= 0).all().all()
    holdout = pd.read_csv(dag_repo / "data/holdout_candidates.csv", dtype={"ImageId": str})
    assert len(holdout) == segment["holdout_images"] * 4 * len(grid)
    assert (holdout["intersection"] <= holdout[["pred_area", "truth_area"]].min(axis=1)).all()


def test_every_gating_mode_of_a_binary_classifier_is_evaluated(dag_repo: Path) -> None:
    evaluation = json.loads((dag_repo / "data/eval.json").read_text())
    modes = evaluation["gating_modes"]
    assert list(modes) == ["none", "image", "soft"]  # per-class gating needs the multilabel head
    for name, mode in modes.items():
        # The image gate carries its threshold, as used (tuned or not).
        gate = {"threshold"} if name == "image" else set()
        assert set(mode) == {"holdout", "rules", "test"} | gate
        for split in ("holdout", "test"):
            assert set(mode[split]["per_class"]) == {"1", "2", "3", "4"}
    # No gating with the segment stage's own grid: the rules and test Dice of the raw submission.
    segment = json.loads((dag_repo / "data/segment_metrics.json").read_text())
    assert modes["none"]["rules"] == {
        k: {n: r[n] for n in ("threshold", "min_area_px")} for k, r in segment["rules"].items()
    }
    assert modes["none"]["test"]["mean_dice"] == pytest.approx(
        evaluation["test"]["segmentation"]["mean_dice"]
    )
    assert evaluation["holdout"]["gated"] == modes["image"]["holdout"]


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
    # eval.json is the detail (a plain output); its headline figures are the DVC metrics.
    shown = run(dag_repo, "dvc", "metrics", "show", "--json").stdout
    assert "data/metrics/postprocess.json" in shown and "data/eval.json" not in shown


def test_checkpoint_carries_the_post_processing_rules(dag_repo: Path) -> None:
    checkpoint = torch.load(dag_repo / "models/unet/fold_0.pt", weights_only=True)
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
    # A prefix, so no name is all digits (ImageIds can be): dvc plots show fails to order those.
    assert all(plot.name.startswith("holdout_") for plot in plots)


def test_postprocess_param_reruns_only_postprocess_inspect_and_the_bundle(dag_repo: Path) -> None:
    with params_overridden(dag_repo, {"postprocess": {"threshold": 0.0}}, restore=()):
        started = time.perf_counter()
        output = run(dag_repo, "dvc", "repro").stdout
        seconds = time.perf_counter() - started
        # The bundle packs postprocess's gate and rules, and inspect draws that gate's errors: both follow.
        assert updated(output) == [
            "postprocess",
            "inspect",
            "bundle",
        ]
        # Threshold 0 wipes every image: the submission is all empty.
        assert (read_pairs(dag_repo / "data/submission.csv") == "").all()
    print(f"postprocess + inspect + bundle rerun: {seconds:.1f} s")


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


def test_gate_threshold_is_tuned_or_the_threshold_stages(dag_repo: Path) -> None:
    evaluation = json.loads((dag_repo / "data/eval.json").read_text())
    stage = json.loads((dag_repo / "data/threshold.json").read_text())["threshold"]
    assert evaluation["thresholds_from"] == "tuned" and evaluation["stage_threshold"] == stage
    assert evaluation["gating_modes"]["image"]["threshold"] == evaluation["threshold"]
    rules = (dag_repo / "data/rules.json").read_text()
    with params_overridden(dag_repo, {"postprocess": {"tune_thresholds": False}}, restore=()):
        output = run(dag_repo, "dvc", "repro").stdout
        # The bundle and inspect read rules.json: they follow only if the stage's threshold gave other rules
        # or gate.
        changed = (dag_repo / "data/rules.json").read_text() != rules
        assert updated(output) == ["postprocess", "inspect", "bundle"] if changed else ["postprocess"]
        fixed = json.loads((dag_repo / "data/eval.json").read_text())
        assert fixed["thresholds_from"] == "stage" and fixed["threshold"] == stage
        scores = pd.read_csv(dag_repo / "data/test_missing_count.csv").set_index("ImageId")["allMissing"]
        wiped = set(scores.index[scores >= stage])
        gated = read_pairs(dag_repo / "data/submission.csv")
        assert {key: rle for key, rle in gated.items()} == expected_pairs(dag_repo, fixed["rules"], wiped)
