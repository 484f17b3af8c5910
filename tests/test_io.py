"""Atomic outputs: no half-written file, a full disk as one line naming the output, and a stage's outputs
replaced together or not at all (tests/test_bad_inputs.py fills a real disk limit end to end)."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest

from stages.core import cli
from stages.core.errors import PipelineError
from stages.core.io import atomic_path, outputs_together, write_csv, write_json


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("previous")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("stage failed")
    assert target.read_text() == "previous" and leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_a_full_disk_is_one_line_naming_the_output(tmp_path: Path, code: int) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("previous")
    with pytest.raises(PipelineError) as error, atomic_path(target):
        raise OSError(code, "the disk's own words")
    assert str(error.value) == f"{target}: cannot write (the disk's own words)"
    assert target.read_text() == "previous" and leftovers(tmp_path) == []


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_path(tmp_path / "out.csv"):
        raise PermissionError(errno.EACCES, "denied")


def test_writers_report_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    with pytest.raises(PipelineError, match=r"table\.csv: cannot write \(No space left on device\)"):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")
    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(PipelineError, match=r"metrics\.json: cannot write"):
        write_json({"a": 1}, tmp_path / "metrics.json")
    assert leftovers(tmp_path) == [] and not list(tmp_path.iterdir())


def test_a_file_in_a_temporary_folder_is_named_by_its_target(tmp_path: Path) -> None:
    with (
        pytest.raises(PipelineError) as error,
        atomic_path(tmp_path / "models", directory=True) as folder,
        atomic_path(folder / "fold_0.pt"),
    ):
        raise OSError(errno.EFBIG, "File too large")
    assert str(error.value) == f"{tmp_path / 'models' / 'fold_0.pt'}: cannot write (File too large)"
    assert list(tmp_path.iterdir()) == []


def test_outputs_together_replace_all_or_nothing(tmp_path: Path) -> None:
    first, second = tmp_path / "first.csv", tmp_path / "second"
    first.write_text("old first")
    second.mkdir()
    (second / "plot.csv").write_text("old plot")
    with pytest.raises(PipelineError), outputs_together():
        with atomic_path(first) as tmp:
            tmp.write_text("new first")
        assert first.read_text() == "old first"  # the rename waits for the end of the block
        with atomic_path(second, directory=True):
            raise PipelineError("the second output fails")
    assert first.read_text() == "old first" and (second / "plot.csv").read_text() == "old plot"
    assert leftovers(tmp_path) == []

    with outputs_together():
        with atomic_path(first) as tmp:
            tmp.write_text("new first")
        with (
            outputs_together(),  # a nested block joins the outer one
            atomic_path(second, directory=True) as folder,
            atomic_path(folder / "plot.csv") as tmp,
        ):
            tmp.write_text("new plot")
        assert first.read_text() == "old first"
    assert first.read_text() == "new first" and (second / "plot.csv").read_text() == "new plot"
    assert leftovers(tmp_path) == []


def test_a_failing_stage_replaces_none_of_its_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "submission.csv"
    output.write_text("previous")

    def stage() -> None:
        write_csv(pd.DataFrame({"ImageId": ["a.jpg"]}), output)
        raise PipelineError("data/test_truth.csv: line 3: bad RLE")

    with pytest.raises(SystemExit) as exit_code:
        cli.run(stage)
    assert exit_code.value.code == 1
    assert capsys.readouterr().err == "error: data/test_truth.csv: line 3: bad RLE\n"
    assert output.read_text() == "previous" and leftovers(tmp_path) == []
