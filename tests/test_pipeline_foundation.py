"""synthesize and prepare through the real `dvc repro`, in a throwaway copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stages.core.dataset import index_dataset
from tests.dvc_repo import copy_repo, params_overridden, run


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("foundation"))
    run(repo, "dvc", "repro", "prepare")
    return repo


def test_synthesize_writes_the_kaggle_layout(repo: Path) -> None:
    root = repo / "data/synthetic"
    dataset = index_dataset(root)  # validates every file, image and RLE
    assert len(dataset.train) == 32 and len(dataset.test) == 8
    assert dataset.num_classes == 4
    assert set(dataset.train[["height", "width"]].itertuples(index=False, name=None)) == {(64, 400)}
    assert dataset.train_format == "new"
    train_csv = pd.read_csv(root / "train.csv", keep_default_na=False)
    assert list(train_csv.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert (train_csv["EncodedPixels"] != "").all()  # new format: defect rows only
    stats = json.loads((repo / "data/synthetic_stats.json").read_text())
    assert stats["train"]["images"] == 32
    assert stats["train"]["clean_images"] == int((~dataset.train["has_defect"]).sum())


def test_prepare_assigns_stratified_folds(repo: Path) -> None:
    table = pd.read_csv(repo / "data/prepared/train.csv", dtype=str, keep_default_na=False)
    assert len(table) == 32
    folds = table["fold"].astype(int)
    assert set(folds) == set(range(5))
    assert folds.value_counts().max() - folds.value_counts().min() <= 1
    info = json.loads((repo / "data/prepared/dataset.json").read_text())
    assert info["num_classes"] == 4 and info["n_folds"] == 5


def test_truth_scores_one_and_empty_scores_the_empty_fraction(repo: Path) -> None:
    truth = repo / "data/synthetic/test_truth.csv"
    result = run(repo, "python", "-m", "stages.score", str(truth), str(truth), "--json")
    assert json.loads(result.stdout)["mean_dice"] == 1.0
    pairs = pd.read_csv(truth, keep_default_na=False)
    empty = pairs.assign(EncodedPixels="")
    empty.to_csv(repo / "empty.csv", index=False)
    result = run(repo, "python", "-m", "stages.score", "empty.csv", str(truth), "--json")
    assert json.loads(result.stdout)["mean_dice"] == pytest.approx(
        (pairs["EncodedPixels"] == "").mean(), abs=1e-12
    )


def test_up_to_date_dag_reruns_nothing_and_a_prepare_param_reruns_only_prepare(repo: Path) -> None:
    assert "up to date" in run(repo, "dvc", "status", "prepare").stdout
    with params_overridden(repo, {"prepare": {"seed": 7}}, restore=["prepare"]):
        output = run(repo, "dvc", "repro", "prepare").stdout
    assert "Running stage 'prepare'" in output
    assert "Running stage 'synthesize'" not in output


def test_bad_param_fails_with_one_line_naming_it(repo: Path, tmp_path: Path) -> None:
    with params_overridden(repo, {"prepare": {"n_folds": 1}}):
        result = run(repo, "python", "-m", "stages.prepare", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params: prepare.n_folds must be at least 2 (one fold is held out), got 1"
    ]


def test_old_format_switch(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path, {"synthesize": {"train_csv_format": "old", "n_train": 6, "n_test": 2}})
    run(repo, "dvc", "repro", "prepare")
    header = (repo / "data/synthetic/train.csv").read_text().splitlines()[0]
    assert header == "ImageId_ClassId,EncodedPixels"
    assert len((repo / "data/synthetic/train.csv").read_text().splitlines()) == 1 + 6 * 4
    assert index_dataset(repo / "data/synthetic").train_format == "old"
