"""Stage bundle and `stages.predict` on the session's DAG (`dag_repo`): the Kaggle folder, predict.py run
offline with the training stack unimportable, and predictions on new images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from stages.bundle import build_predict_script
from stages.core import rle
from stages.core.dataset import parse_labels, read_csv
from tests.dvc_repo import params_overridden, run

# predict.py must run on a Kaggle image: none of these may be needed.
FORBIDDEN = ("dvc", "dvclive", "albumentations", "sklearn", "segmentation_models_pytorch", "timm", "stages")
GUARD = f"""
import importlib.abc, runpy, sys
FORBIDDEN = {FORBIDDEN!r}
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"predict.py imported {{name}}, which a Kaggle notebook does not have")
        return None
sys.meta_path.insert(0, Guard())
sys.path = [p for p in sys.path if p not in ("", ".")]
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def pairs(path: Path) -> pd.Series:
    return parse_labels(read_csv(path), str(path)).pairs.set_index(["ImageId", "ClassId"])["EncodedPixels"]


def test_bundle_follows_postprocess_in_the_dag(dag_repo: Path) -> None:
    output = run(dag_repo, "dvc", "dag", "--dot").stdout
    edges = set(re.findall(r'"([\w:]+)" -> "([\w:]+)"', output))
    assert ("postprocess", "bundle") in edges and ("segment", "bundle") in edges
    assert not any(source == "bundle" for source, _ in edges)  # the last stage


def test_bundle_folder(dag_repo: Path) -> None:
    folder = dag_repo / "models/kaggle"
    config = json.loads((folder / "bundle.json").read_text())
    for name in (*config["classifier"]["models"], *config["segmentation"]["models"]):
        assert (folder / name).is_file()
    assert len(config["classifier"]["models"]) == 2 and len(config["segmentation"]["models"]) == 1
    rules = json.loads((dag_repo / "data/rules.json").read_text())
    assert config["gating"]["mode"] == rules["gating"] == "image"
    assert config["gating"]["image_threshold"] == rules["image_threshold"]
    assert config["rules"] == [rules["rules"][str(k)] for k in range(1, 5)]
    assert config["segmentation"]["tta"] == "hflip" and config["num_classes"] == 4
    script = build_predict_script(
        (dag_repo / "stages/core/kaggle_predict.py").read_text(),
        (dag_repo / "stages/core/inference_ops.py").read_text(),
    )
    assert (folder / "predict.py").read_text() == script
    dataset = json.loads((folder / "dataset-metadata.json").read_text())
    assert set(dataset) == {"title", "id", "licenses"}
    kernel = json.loads((folder / "notebook/kernel-metadata.json").read_text())
    assert kernel["code_file"] == "submission.ipynb" and kernel["enable_internet"] is False
    assert kernel["dataset_sources"] == [dataset["id"]]
    book = json.loads((folder / "notebook/submission.ipynb").read_text())
    assert book["nbformat"] == 4 and [cell["cell_type"] for cell in book["cells"]][:2] == ["markdown", "code"]
    metrics = json.loads((dag_repo / "data/bundle_metrics.json").read_text())
    assert metrics["predict"]["matches_submission"] is True and metrics["predict"]["images_per_s"] > 0
    assert metrics["predict"]["images"] == 8


def test_predict_script_offline_gives_the_pipelines_submission(dag_repo: Path, tmp_path: Path) -> None:
    """predict.py in its own process, from another folder, with the training stack unimportable, writes
    data/submission.csv again: the same rows and RLE strings, byte for byte."""
    root = dag_repo / "data/synthetic"
    out = tmp_path / "submission.csv"
    command = [
        sys.executable, "-c", GUARD, str(dag_repo / "models/kaggle/predict.py"),
        "--images", str(root / "test_images"), "--sample", str(root / "sample_submission.csv"),
        "--out", str(out), "--device", "cpu", "--batch-size", "3",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout
    assert pairs(out).equals(pairs(dag_repo / "data/submission.csv"))
    assert out.read_bytes() == (dag_repo / "data/submission.csv").read_bytes()


def test_the_guard_blocks_the_training_stack(tmp_path: Path) -> None:
    script = tmp_path / "uses_smp.py"
    script.write_text("import segmentation_models_pytorch\n")
    result = subprocess.run(
        [sys.executable, "-c", GUARD, str(script)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0 and "which a Kaggle notebook does not have" in result.stderr


def test_predict_command_on_new_images(dag_repo: Path, tmp_path: Path) -> None:
    images = dag_repo / "data/synthetic/test_images"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    missing = tmp_path / "nope.png"
    command = ["python", "-m", "stages.predict", str(images), str(broken), str(missing), "--out", str(out)]
    result = run(dag_repo, *command, check=False)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"error: {missing}: not found (skipped)",
        f"error: {broken}: unreadable image (skipped)",
    ]
    predictions = pd.read_csv(out / "predictions.csv", dtype={"ImageId": str}, keep_default_na=False)
    names = sorted(p.name for p in images.iterdir())
    assert predictions["ImageId"].tolist() == names
    assert list(predictions.columns[:3]) == ["ImageId", "path", "allMissing"]
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == sorted(Path(n).stem for n in names)
    # The same models, gate and rules as the pipeline: the submitted masks of data/submission.csv.
    submitted = pairs(dag_repo / "data/submission.csv")
    for row in predictions.itertuples(index=False):
        for k in range(1, 5):
            text = getattr(row, f"rle_{k}")
            assert text == submitted[(row.ImageId, k)]
            assert getattr(row, f"area_{k}") == rle.area(text)
    scores = pd.read_csv(dag_repo / "data/test_missing_count.csv").set_index("ImageId")["allMissing"]
    assert predictions.set_index("ImageId")["allMissing"].to_dict() == scores.to_dict()


def test_soft_gating_bundle_gives_the_pipelines_submission(dag_repo: Path) -> None:
    with params_overridden(dag_repo, {"postprocess": {"gating": "soft"}}, restore=()):
        run(dag_repo, "dvc", "repro")
        config = json.loads((dag_repo / "models/kaggle/bundle.json").read_text())
        assert config["gating"] == {"mode": "soft", "image_threshold": None, "class_thresholds": None}
        metrics = json.loads((dag_repo / "data/bundle_metrics.json").read_text())
        assert metrics["predict"]["matches_submission"] is True
