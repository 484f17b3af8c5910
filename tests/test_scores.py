"""The classifier's score tables and the threshold stage's choice, as the later stages read them: a
hand-edited, foreign or NaN-bearing file is one line naming the file and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.core.errors import PipelineError
from stages.core.postprocess import stage_thresholds
from stages.core.scores import read_scores

REMAKE = "rerun `dvc repro score_train`"
GOOD = (
    "ImageId,allMissing,has_defect,fold,out_of_fold,p_1\n"
    "a.jpg,0.25,True,0,True,0.5\n"
    "b.jpg,1.0,False,1,False,0\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train_missing_count.csv"
    path.write_text(text)
    return path


def test_a_good_table(tmp_path: Path) -> None:
    table = read_scores(write(tmp_path, GOOD), 1, REMAKE)
    assert table["ImageId"].tolist() == ["a.jpg", "b.jpg"]
    assert table["allMissing"].tolist() == [0.25, 1.0] and table["p_1"].tolist() == [0.5, 0.0]
    assert table["has_defect"].tolist() == [True, False] and table["out_of_fold"].dtype == bool


@pytest.mark.parametrize(
    ("cell", "value", "message"),
    [
        ("0.25", "nan", "line 2: allMissing 'nan' is not a probability in [0, 1]"),
        ("0.25", "inf", "line 2: allMissing 'inf' is not a probability in [0, 1]"),
        ("0.25", "-0.1", "line 2: allMissing '-0.1' is not a probability in [0, 1]"),
        ("0.25", "", "line 2: allMissing '' is not a probability in [0, 1]"),
        (",0.5\n", ",high\n", "line 2: p_1 'high' is not a probability in [0, 1]"),
        ("True,0,True", "True,0,yes", "line 2: out_of_fold 'yes' is not True or False"),
        ("b.jpg", "a.jpg", "line 3: image a.jpg is listed twice"),
    ],
)
def test_bad_cells_name_the_line(tmp_path: Path, cell: str, value: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace(cell, value, 1))
    with pytest.raises(PipelineError) as error:
        read_scores(path, 1, REMAKE)
    assert str(error.value) == f"{path}: {message}; {REMAKE}"


def test_missing_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(
        PipelineError, match=r"train_missing_count\.csv: not found; rerun `dvc repro score_train`"
    ):
        read_scores(tmp_path / "train_missing_count.csv", 1, REMAKE)
    path = write(tmp_path, GOOD.replace("allMissing", "all_missing"))
    with pytest.raises(PipelineError) as error:
        read_scores(path, 1, REMAKE)
    assert str(error.value).startswith(
        f"{path}: no column allMissing (columns: ImageId, all_missing, has_defect"
    )


def test_stage_thresholds() -> None:
    chosen = {"threshold": 0.4, "per_class": {str(k): {"threshold": k / 10} for k in (1, 2)}}
    assert stage_thresholds(chosen, 2, "t.json") == (0.4, [0.1, 0.2])
    assert stage_thresholds({"threshold": 1}, 2, "t.json") == (1.0, None)


@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        ({"threshold": 1.7}, "t.json: threshold 1.7 is not a number in [0, 1]"),
        ({"threshold": None}, "t.json: threshold None is not a number in [0, 1]"),
        ({"threshold": "0.5"}, "t.json: threshold '0.5' is not a number in [0, 1]"),
        ({"threshold": True}, "t.json: threshold True is not a number in [0, 1]"),
        ({"objective": "dice"}, "t.json: no threshold"),
        ([0.5], "t.json: no threshold"),
        ({"threshold": 0.5, "per_class": {"1": {"threshold": 0.5}}}, "t.json: per_class.2.threshold None"),
        (
            {"threshold": 0.5, "per_class": {"1": {"threshold": -1}, "2": {}}},
            "t.json: per_class.1.threshold -1",
        ),
    ],
)
def test_stage_thresholds_out_of_range_or_missing(chosen: object, message: str) -> None:
    with pytest.raises(PipelineError) as error:
        stage_thresholds(chosen, 2, "t.json")
    assert str(error.value).startswith(message) and str(error.value).endswith("; rerun `dvc repro threshold`")
