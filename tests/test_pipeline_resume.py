"""`kill -9` in the middle of a training stage, then `dvc repro` again: the stage continues from its last
finished epoch and ends with the same outputs (scores, candidates, weights) as a run never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.dvc_repo import copy_repo, environment, run

# Three epochs per model, so that a kill after the first finished epoch lands in the middle of the run.
TRAINING = {"min_epochs": 3, "max_epochs": 3, "batch_size": 8, "input_height": 64, "input_width": 384}
PARAMS = {
    "classifier": {**TRAINING, "backbone": "resnet18", "folds": 1},
    "segment": {
        **TRAINING,
        "folds": 1,
        "crop_height": 64,
        "crop_width": 128,
        "images_per_epoch": 16,
        "min_areas_px": [0, 200],
        "plot_images": 1,
    },
}
OUTPUTS = {
    "classifier": ["data/test_missing_count.csv"],
    "segment": ["data/holdout_candidates.csv", "data/test_candidates.csv", "data/submission_raw.csv"],
}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two identical repos, prepared: one runs uninterrupted, the other is killed and rerun."""
    straight = copy_repo(tmp_path_factory.mktemp("straight"), PARAMS)
    run(straight, "dvc", "repro", "prepare")
    killed = tmp_path_factory.mktemp("killed") / "repo"
    shutil.copytree(straight, killed, symlinks=True)
    return straight, killed


def kill_after_first_epoch(repo: Path, stage: str) -> None:
    """Start `dvc repro <stage>` and SIGKILL its whole process group once an epoch's state is saved."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", stage],
        cwd=repo,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not list((repo / ".resume").glob(f"{stage}-*/fold_0.pt")):
            assert process.poll() is None, f"{stage} ended before its first epoch was saved"
            assert time.monotonic() < deadline, f"{stage}: no resume state after 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("stage", ["classifier", "segment"])
def test_a_killed_stage_resumes_to_the_uninterrupted_outputs(repos: tuple[Path, Path], stage: str) -> None:
    straight, killed = repos
    run(straight, "dvc", "repro", stage)
    kill_after_first_epoch(killed, stage)
    state = torch.load(next((killed / ".resume").glob(f"{stage}-*/fold_0.pt")), weights_only=True)
    assert not state["finished"]  # killed in the middle of the run
    output = run(killed, "dvc", "repro", stage).stdout
    assert f"fold 0: resumed after epoch {state['epoch']}" in output
    assert not list((killed / ".resume").glob(f"{stage}-*"))  # removed once the stage finished
    for name in OUTPUTS[stage]:
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    expected, resumed = (
        weights(repo / f"models/{'unet' if stage == 'segment' else stage}/fold_0.pt")
        for repo in (straight, killed)
    )
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    curve = f"data/live/{stage}/plots/metrics/fold_0/loss.tsv"
    steps = [pd.read_csv(repo / curve, sep="\t")["step"].tolist() for repo in (straight, killed)]
    assert steps[0] == steps[1] == [1, 2, 3]  # the epochs before the kill are in the curves too
