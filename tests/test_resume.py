"""Resume after a crash: train_folds() continued from the saved state ends exactly where an uninterrupted run
ends (weights, logged curves), states are keyed by params and inputs, and a finished stage leaves none."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from stages.core.device import resolve_runtime
from stages.core.errors import PipelineError
from stages.core.images import AugmentParams, build_augmentations
from stages.core.resume import ResumeStore, resume_key
from stages.core.training import FoldTask, TrainParams, train_folds

CPU = resolve_runtime("cpu", False)


class Crash(Exception):
    """Stands in for a kill in the middle of an epoch."""


class Noisy(torch.utils.data.Dataset):
    """Rows as 4x4 'images' drawn through every random source training uses: an albumentations pipeline
    (its own generators), NumPy's and Python's global generators; the sampler and dropout use torch's."""

    def __init__(self, rows: pd.DataFrame, seed: int | None, crash_after: list[int]) -> None:
        self.x = rows["x"].to_numpy(np.float32)
        # Validation sets are not augmented (as in the stages): seed None.
        self.augment = build_augmentations(AugmentParams(gauss_noise=0.5), seed) if seed is not None else None
        self.crash_after = crash_after  # [items left before the crash]; [] never crashes

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.crash_after:
            self.crash_after[0] -= 1
            if self.crash_after[0] < 0:
                raise Crash
        image = np.full((4, 4, 1), self.x[index], np.float32)
        image[0, 0, 0] += np.random.normal() * 0.01 + random.random() * 0.01
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)).reshape(-1), torch.tensor([2 * self.x[index]])


class Recorder:
    """dvclive's Live as the epoch logger uses it: every logged (step, name, value)."""

    def __init__(self) -> None:
        self.step, self.logged = 0, []

    def log_metric(self, name: str, value: float, plot: bool = True) -> None:
        self.logged.append((self.step, name, value))


def toy_task(crash_after: list[int]) -> FoldTask:
    def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            return {"loss": float(sum(nn.functional.mse_loss(model(x), y) for x, y in loader))}

    return FoldTask(
        name="toy",
        build_model=lambda: nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.3), nn.Linear(8, 1)),
        train_set=lambda rows, seed: Noisy(rows, seed, crash_after),
        val_set=lambda rows: Noisy(rows, None, []),
        loss_fn=nn.MSELoss(),
        evaluate=evaluate,
        sample_weights=lambda rows: np.linspace(1, 2, len(rows)),
    )


TABLE = pd.DataFrame({"x": np.linspace(-1, 1, 40), "fold": np.arange(40) % 4})
PARAMS = TrainParams(
    folds=2,
    min_epochs=4,
    max_epochs=4,
    batch_size=4,
    images_per_epoch=24,
    optimizer="adamw",
    learning_rate=0.02,
)


def run(store: ResumeStore | None, crash_after: list[int] | None = None, params: TrainParams = PARAMS):
    live = Recorder()
    models = train_folds(toy_task(crash_after or []), params, TABLE, CPU, live, store)  # type: ignore[arg-type]
    return models, live.logged


# 24 items drawn per epoch, 4 epochs per fold: crash in fold 0 epochs 2 and 4, in fold 1 epoch 2.
@pytest.mark.parametrize("crash_after", [30, 80, 130])
def test_a_crashed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, crash_after: int) -> None:
    expected, expected_log = run(None)
    store = ResumeStore.open("toy", "k", tmp_path)
    with pytest.raises(Crash):
        run(store, [crash_after])
    assert store.path(0).is_file()  # at least one epoch finished before the crash
    resumed, resumed_log = run(store)
    for a, b in zip(expected, resumed, strict=True):
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key]), key
        assert (a.result.best_epoch, a.result.epochs_run) == (b.result.best_epoch, b.result.epochs_run)
        assert a.result.best_metrics == b.result.best_metrics
        assert a.result.train_images == b.result.train_images
    assert resumed_log == expected_log  # the earlier epochs' curves are replayed, not lost


def test_a_finished_fold_is_not_trained_again(tmp_path: Path) -> None:
    store = ResumeStore.open("toy", "k", tmp_path)
    first, _ = run(store)
    assert torch.load(store.path(0), weights_only=True)["finished"]
    assert "optimizer" not in torch.load(store.path(1), weights_only=True)  # best weights only
    again, _ = run(store, [0])  # would crash on the first item drawn: nothing is trained
    for a, b in zip(first, again, strict=True):
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key])


def test_without_a_store_nothing_is_saved(tmp_path: Path) -> None:
    run(None)
    assert not any(tmp_path.iterdir())


def test_key_follows_params_inputs_and_listed_files(tmp_path: Path) -> None:
    table, images = tmp_path / "prepared.csv", tmp_path / "images"
    table.write_text("a,b\n1,2\n")
    images.mkdir()
    (images / "a.jpg").write_bytes(b"x")
    key = resume_key(PARAMS, [table], [images])
    assert key == resume_key(PARAMS, [table], [images])
    assert key != resume_key(replace(PARAMS, learning_rate=0.01), [table], [images])
    table.write_text("a,b\n1,3\n")
    changed = resume_key(PARAMS, [table], [images])
    assert changed != key
    (images / "b.jpg").write_bytes(b"y")
    assert resume_key(PARAMS, [table], [images]) != changed


def test_states_under_another_key_are_removed_and_finish_cleans_up(tmp_path: Path) -> None:
    old = ResumeStore.open("toy", "old", tmp_path)
    old.save(0, {"epoch": 1})
    other_stage = ResumeStore.open("other", "x", tmp_path)
    other_stage.save(0, {"epoch": 1})
    new = ResumeStore.open("toy", "new", tmp_path)
    assert not old.folder.exists() and other_stage.folder.exists()
    assert new.load(0) is None
    new.save(0, {"epoch": 2})
    assert new.load(0) == {"epoch": 2}
    new.finish()
    assert not new.folder.exists() and other_stage.folder.exists()
    other_stage.finish()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_unreadable_state_is_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ResumeStore.open("toy", "k", tmp_path)
    store.folder.mkdir(parents=True)
    store.path(0).write_bytes(b"not a torch file")
    assert store.load(0) is None
    assert "unreadable resume state ignored" in capsys.readouterr().err
    expected, _ = run(None)
    resumed, _ = run(store)
    assert torch.equal(expected[0].model.state_dict()["0.weight"], resumed[0].model.state_dict()["0.weight"])


def test_a_full_disk_while_saving_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResumeStore.open("toy", "k", tmp_path)
    store.save(0, {"epoch": 1})

    def full_disk(state: object, path: Path) -> None:
        Path(path).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(PipelineError) as error:
        store.save(0, {"epoch": 2})
    assert str(error.value).startswith(f"{store.path(0)}: cannot write the resume state (")
    assert [p.name for p in store.folder.iterdir()] == ["fold_0.pt"]  # no temporary left
    monkeypatch.undo()
    assert store.load(0) == {"epoch": 1}
