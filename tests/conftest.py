"""The whole DAG, run once per test session through `dvc repro` on a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dvc_repo import copy_repo, run

# One epoch each, small inputs: DenseNet121 (the default backbone) as two fold models, one U-Net trained on
# 12 random crops.
TINY_TRAINING = {"min_epochs": 1, "max_epochs": 1, "batch_size": 8, "input_height": 64, "input_width": 384}
DAG_PARAMS = {
    "classifier": {**TINY_TRAINING, "folds": 2},
    "segment": {
        **TINY_TRAINING,
        "folds": 1,
        "crop_height": 64,
        "crop_width": 128,
        "images_per_epoch": 12,
        "min_areas_px": [0, 200, 1000],
        "plot_images": 2,
    },
    # The segment stage's min-area grid: the ungated rules then equal the raw submission's.
    "postprocess": {"min_areas_px": [0, 200, 1000]},
}


@pytest.fixture(scope="session")
def dag_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("dag"), DAG_PARAMS)
    run(repo, "dvc", "repro")
    return repo
