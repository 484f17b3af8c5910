"""The headline metrics: the DVC metrics files hold exactly the agreed keys, as numbers taken from the
detail files, and `make metrics`, `make metrics-diff` and `make exps` fit a 120-column terminal."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.core.headline import headline, write_headline
from stages.core.metrics_table import metrics_table, render, revision_name, stage_name
from tests.dvc_repo import REPO, environment, run

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
WIDTH = 120
# The headline schema (agreed between the stages; inspect is another stage's): stage -> keys, in order.
# postprocess: `threshold` where the gating mode has one, and the test_* keys where test truth exists.
SCHEMA: dict[str, tuple[str, ...]] = {
    "classifier": (
        "val_auc",
        "val_loss",
        "val_accuracy",
        "train_images_per_s",
        "wall_time_s",
        "peak_memory_mb",
    ),
    "score_train": ("images_per_s", "wall_time_s", "peak_memory_mb"),
    "threshold": ("threshold", "auc", "gating_dice", "all_empty_dice"),
    "segment": (
        "holdout_dice",
        "val_dice",
        "val_loss",
        "train_images_per_s",
        "test_images_per_s",
        "wall_time_s",
        "peak_memory_mb",
    ),
    "postprocess": (
        "threshold",
        *(f"{images}_dice_{kind}" for images in ("holdout", "test") for kind in ("empty", "unet", "gated")),
        *(f"{images}_dice_gated_{k}" for images in ("holdout", "test") for k in range(1, 5)),
    ),
    "inspect": ("classifier_auc", "gmm_auc", "gate_wiped_defective", "gate_kept_clean", "wall_time_s"),
    "bundle": ("bundle_mb", "predict_images_per_s", "matches_submission", "competition_estimate_s"),
}
DETAIL_FILES = (
    "data/synthetic_stats.json",
    "data/classifier_metrics.json",
    "data/threshold.json",
    "data/segment_metrics.json",
    "data/eval.json",
    "data/bundle_metrics.json",
)
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def declared_metrics() -> dict[str, list[str]]:
    return {
        name: [next(iter(entry)) if isinstance(entry, dict) else entry for entry in stage.get("metrics", [])]
        for name, stage in DVC_YAML.items()
    }


def read(repo: Path, name: str) -> dict[str, Any]:
    return json.loads((repo / name).read_text())


# --- without the DAG -----------------------------------------------------------------------------------


def test_dvc_yaml_declares_only_the_headline_files_as_metrics() -> None:
    for stage, files in declared_metrics().items():
        assert files == ([f"data/metrics/{stage}.json"] if stage in SCHEMA else []), stage
    outs = {out for stage in DVC_YAML.values() for out in stage.get("outs", [])}
    assert set(DETAIL_FILES) <= outs  # the detail keeps its files, as plain outputs


def test_headline_keeps_numbers_only() -> None:
    values = {"a": 1, "b": 0.5, "c": True, "d": False, "e": None, "f": float("nan"), "g": np.float32(0.25)}
    values |= {"h": np.int64(3), "i": float("inf")}
    assert headline(values) == {"a": 1, "b": 0.5, "c": 1, "d": 0, "g": 0.25, "h": 3}
    assert [type(value) for value in headline(values).values()] == [int, float, int, int, float, int]
    with pytest.raises(TypeError, match="'mode'"):
        headline({"mode": "image"})


def test_write_headline_writes_flat_json(tmp_path: Path) -> None:
    target = tmp_path / "data/metrics/x.json"
    write_headline({"auc": 0.75, "matches": True, "undefined": None}, target)
    assert json.loads(target.read_text()) == {"auc": 0.75, "matches": 1}
    assert not list(target.parent.glob(".*.tmp"))


# The shape DVC 3.67 prints (checked on the session DAG by test_make_metrics_... below).
SHOWN = {
    "": {
        "data": {
            "data/metrics/classifier.json": {"data": {"val_auc": 0.912345678, "wall_time_s": 12.0}},
            "data/metrics/bundle.json": {"data": {"matches_submission": 1}},
            "data/metrics/segment.json": {"error": {"type": "FileNotFoundError", "msg": "no  file"}},
            "other/extra.json": {"data": {"nested": {"key": 2}, "list": [1, 2], "text": "a"}},
        }
    },
    "0123456789abcdef0123456789abcdef01234567": {
        "data": {"data/metrics/classifier.json": {"data": {"val_auc": 0.5, "wall_time_s": 10.25}}}
    },
    "broken": {"error": {"type": "SCMError", "msg": "unknown revision"}},
}


def test_metrics_table_has_one_row_per_metric_and_a_column_per_revision() -> None:
    table = metrics_table(SHOWN)
    assert table.headers == ["stage", "metric", "workspace", "0123456", "broken"]
    assert table.rows == [
        ["classifier", "val_auc", "0.91235", "0.5", "-"],
        ["classifier", "wall_time_s", "12.0", "10.25", "-"],
        ["bundle", "matches_submission", "1", "-", "-"],
        ["other/extra.json", "nested.key", "2", "-", "-"],
        ["other/extra.json", "text", "a", "-", "-"],
    ]
    assert table.problems == ["data/metrics/segment.json: no file", "broken: unknown revision"]
    assert metrics_table(SHOWN, precision=2).rows[0][2] == "0.91"


def test_render_aligns_the_columns_and_names_each_stage_once() -> None:
    text = render(["stage", "metric", "workspace"], [["a", "x", "1.5"], ["a", "long_name", "10.25"]])
    assert text.splitlines() == [
        "stage  metric     workspace",
        "a      x                1.5",
        "       long_name      10.25",
    ]


def test_names() -> None:
    assert stage_name("data/metrics/segment.json") == "segment"
    assert stage_name("data/eval.json") == "data/eval.json"
    assert revision_name("") == "workspace"
    assert revision_name("HEAD~1") == "HEAD~1"


def test_metrics_command_rejects_what_is_not_dvc_json(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "stages.metrics"]
    for text, message in (
        ("", "error: stdin: empty; expected the output of `dvc metrics show --json`"),
        ("{not json", "error: stdin: not the JSON of `dvc metrics show --json` (Expecting"),
        ('{"": {"data": {}}}', "error: stdin: no metrics to show; run `dvc repro` first"),
    ):
        result = subprocess.run(command, input=text, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 1
        assert result.stderr.startswith(message), result.stderr
    shown = tmp_path / "shown.json"
    shown.write_text(json.dumps(SHOWN))
    result = subprocess.run([*command, str(shown)], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[1].split() == ["classifier", "val_auc", "0.91235", "0.5", "-"]
    assert "warning: data/metrics/segment.json: no file" in result.stderr


# --- on the session's DAG -------------------------------------------------------------------------------


def test_every_metrics_file_holds_exactly_the_schema_keys(dag_repo: Path) -> None:
    has_test_truth = (dag_repo / "data/synthetic/test_truth.csv").is_file()
    assert has_test_truth  # the synthetic data ships it: the test_* keys must be there
    for stage, files in declared_metrics().items():
        for name in files:
            values = read(dag_repo, name)
            expected = {key for key in SCHEMA[stage] if has_test_truth or not key.startswith("test_")}
            assert set(values) == expected, name
            for key, value in values.items():
                assert type(value) in (int, float) and math.isfinite(value), (name, key, value)


def test_headline_values_are_the_detail_values(dag_repo: Path) -> None:
    classifier = read(dag_repo, "data/classifier_metrics.json")
    assert read(dag_repo, "data/metrics/classifier.json") == {
        key: classifier[key] for key in SCHEMA["classifier"]
    }
    threshold = read(dag_repo, "data/threshold.json")
    assert read(dag_repo, "data/metrics/threshold.json") == {
        key: threshold[key] for key in SCHEMA["threshold"]
    }
    segment = read(dag_repo, "data/segment_metrics.json")
    assert read(dag_repo, "data/metrics/segment.json") == {key: segment[key] for key in SCHEMA["segment"]}

    evaluation = read(dag_repo, "data/eval.json")
    postprocess = read(dag_repo, "data/metrics/postprocess.json")
    assert (
        postprocess["threshold"]
        == evaluation["threshold"]
        == evaluation["gating_modes"]["image"]["threshold"]
    )
    for images in ("holdout", "test"):
        assert postprocess[f"{images}_dice_empty"] == evaluation[images]["empty"]["mean_dice"]
        assert postprocess[f"{images}_dice_unet"] == evaluation["gating_modes"]["none"][images]["mean_dice"]
        gated = evaluation["gating_modes"][evaluation["gating"]][images]
        assert postprocess[f"{images}_dice_gated"] == gated["mean_dice"]
        for k in range(1, 5):
            assert postprocess[f"{images}_dice_gated_{k}"] == gated["per_class"][str(k)]
    # U-Net alone = the holdout "segmentation" figure of the detail, and the raw submission's on the test
    # images here (the DAG's postprocess searches segment's min-area grid).
    assert postprocess["holdout_dice_unet"] == evaluation["holdout"]["segmentation"]["mean_dice"]
    assert postprocess["test_dice_unet"] == pytest.approx(evaluation["test"]["segmentation"]["mean_dice"])

    bundle = read(dag_repo, "data/bundle_metrics.json")
    assert read(dag_repo, "data/metrics/bundle.json") == {
        "bundle_mb": bundle["bundle_mb"],
        "predict_images_per_s": bundle["predict"]["images_per_s"],
        "matches_submission": int(bundle["predict"]["matches_submission"]),
        "competition_estimate_s": bundle["predict"]["competition_estimate_s"],
    }


def test_score_train_times_itself(dag_repo: Path) -> None:
    timing = read(dag_repo, "data/metrics/score_train.json")
    images = len(pd.read_csv(dag_repo / "data/train_missing_count.csv"))
    assert timing["wall_time_s"] > 0
    # The scoring is part of the stage's wall time, so its rate is at least images / wall time.
    assert timing["images_per_s"] >= images / (timing["wall_time_s"] + 0.05) - 0.005
    assert 50 < timing["peak_memory_mb"] < 64_000  # the process's peak RSS: torch and the models at least


def make(repo: Path, *args: str) -> str:
    """A Makefile target as a user runs it, with the tests' interpreter's environment as the venv."""
    command = ["make", "-s", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}", *args]
    result = subprocess.run(command, cwd=repo, env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, f"make {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def fits(text: str) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    assert lines
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, f"{len(too_wide)} lines over {WIDTH} characters:\n" + "\n".join(too_wide)
    return lines


def test_make_metrics_prints_every_headline_value_in_a_long_table(dag_repo: Path) -> None:
    shown = json.loads(run(dag_repo, "dvc", "metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    assert sorted(files) == sorted(name for names in declared_metrics().values() for name in names)
    assert all(set(entry) == {"data"} for entry in files.values())  # every file read, no error
    lines = fits(make(dag_repo, "metrics"))
    assert lines[0].split() == ["stage", "metric", "workspace"]
    printed: dict[tuple[str, str], str] = {}
    stage = ""
    for line in lines[1:]:
        cells = line.split()
        stage = cells[0] if len(cells) == 3 else stage
        printed[(stage, cells[-2])] = cells[-1]
    expected = {
        (Path(name).stem, key): repr(round(value, 5)) if isinstance(value, float) else str(value)
        for name, entry in files.items()
        for key, value in entry["data"].items()
    }
    assert printed == expected
    assert ("postprocess", "test_dice_gated") in printed


@pytest.fixture(scope="module")
def experiment_repo(dag_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's DAG copied (its git history stays as the other tests expect) and committed, with one
    experiment that fixes the gate's threshold: postprocess reruns, nothing trains."""
    repo = tmp_path_factory.mktemp("experiments") / "repo"
    shutil.copytree(dag_repo, repo, symlinks=True)
    run(repo, "git", "add", "-A")
    run(repo, *GIT, "commit", "-qm", "the tiny DAG's run")
    run(repo, "dvc", "exp", "run", "-n", "fixed-gate", "-S", "postprocess.threshold=0.5", "postprocess")
    return repo


def test_make_metrics_diff_fits_and_names_the_changed_metrics(experiment_repo: Path) -> None:
    lines = fits(make(experiment_repo, "metrics-diff"))
    assert lines[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
    rows = {tuple(line.split()[:2]) for line in lines[1:]}
    assert ("data/metrics/postprocess.json", "threshold") in rows  # 0.5 now, the tuned one at HEAD
    assert {path for path, _ in rows} <= {f"data/metrics/{stage}.json" for stage in SCHEMA}
    # REV reaches dvc: the workspace holds the experiment's results, so against it nothing changed.
    assert make(experiment_repo, "metrics-diff", "REV=fixed-gate").strip() == ""


def test_make_exps_fits_and_shows_the_headline_columns(experiment_repo: Path) -> None:
    lines = fits(make(experiment_repo, "exps"))
    header = next(line for line in lines if "Experiment" in line).split()
    assert header == ["Experiment", "Created", "val_auc", "val_dice", "holdout_dice_gated", "test_dice_gated"]
    assert any("[fixed-gate]" in line for line in lines)
    rows = [line.split() for line in lines if re.search(r"\d\.\d", line)]
    assert len(rows) >= 3  # the workspace, the baseline commit and the experiment, each with its figures
    wider = make(experiment_repo, "exps", r"KEEP=postprocess\.threshold")
    assert "postprocess.threshold" in wider and "0.5" in wider
