"""Training options and the shared training loop: params validation (through params.from_mapping), the
runtime (device, mixed precision), optimizers and schedulers, and fit()'s early stopping that returns the
best epoch's weights."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stages.classifier import ClassifierParams
from stages.core.device import Runtime, autocast_dtype, needs_grad_scaler, resolve_runtime
from stages.core.errors import PipelineError
from stages.core.images import AugmentParams, CropSpec
from stages.core.params import from_mapping
from stages.core.training import (
    FitResult,
    FoldTask,
    TrainParams,
    class_balance_weights,
    fit,
    format_epoch,
    make_loader,
    make_optimizer,
    make_scheduler,
    train_folds,
)
from stages.segment import BCEDiceLoss, SegmentParams

VALID: dict[str, Any] = {
    "backbone": "resnet18",
    "encoder_weights": "none",
    "freeze_encoder": False,
    "input_height": 64,
    "input_width": 384,
    "batch_size": 16,
    "min_epochs": 3,
    "max_epochs": 8,
    "patience": 2,
    "learning_rate": 0.001,
    "weight_decay": 0.0001,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "folds": 1,
    "seed": 42,
    "device": "auto",
    "mixed_precision": True,
    "num_workers": 0,
    "augment": {"horizontal_flip": 0.5, "vertical_flip": 0.0, "gauss_noise": 1.0},
}


# --- params -------------------------------------------------------------------------------------------------


def test_a_valid_section_builds_typed_params() -> None:
    params = from_mapping(TrainParams, VALID, "classifier")
    assert params.input_size == (64, 384)
    assert params.learning_rate == 0.001 and params.optimizer == "adamw"
    assert params.augment == AugmentParams(horizontal_flip=0.5, vertical_flip=0.0, gauss_noise=1.0)
    assert from_mapping(TrainParams, {}, "segmentation") == TrainParams()  # the defaults are valid
    classifier = from_mapping(ClassifierParams, {**VALID, "backbone": "densenet121", "dropout": 0.5}, "c")
    assert classifier.backbone == "densenet121" and classifier.dropout == 0.5
    assert from_mapping(ClassifierParams, {}, "classifier").backbone == "densenet121"
    assert isinstance(from_mapping(TrainParams, {"learning_rate": 1}, "s").learning_rate, float)


BAD_VALUES = [
    ({"learning_rate": -0.001}, "classifier.learning_rate"),
    ({"learning_rate": 0}, "classifier.learning_rate"),
    ({"learning_rate": "fast"}, "classifier.learning_rate"),
    ({"min_epochs": 5, "max_epochs": 4}, "classifier.max_epochs"),
    ({"min_epochs": 0}, "classifier.min_epochs"),
    ({"patience": 0}, "classifier.patience"),
    ({"input_height": 100}, "classifier.input_height"),
    ({"input_width": 400}, "classifier.input_width"),
    ({"input_width": 0}, "classifier.input_width"),
    ({"input_height": 64.0}, "classifier.input_height"),
    ({"batch_size": 0}, "classifier.batch_size"),
    ({"weight_decay": -1e-4}, "classifier.weight_decay"),
    ({"folds": 0}, "classifier.folds"),
    ({"num_workers": -1}, "classifier.num_workers"),
    ({"optimizer": "rmsprop"}, "classifier.optimizer"),
    ({"scheduler": "step"}, "classifier.scheduler"),
    ({"mixed_precision": "yes"}, "classifier.mixed_precision"),
    ({"lr": 0.01}, "classifier.lr"),
    ({"augment": {"horizontal_flip": 1.5}}, "classifier.augment.horizontal_flip"),
    ({"augment": {"gauss_noise": -0.1}}, "classifier.augment.gauss_noise"),
    ({"augment": {"brightness_limit": 2.0}}, "classifier.augment.brightness_limit"),
    ({"augment": {"rotate": 0.5}}, "classifier.augment.rotate"),
    ({"augment": 0.5}, "classifier.augment"),
]


@pytest.mark.parametrize(("change", "key"), BAD_VALUES, ids=[key for _, key in BAD_VALUES])
def test_bad_train_params_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(PipelineError) as error:
        from_mapping(TrainParams, {**VALID, **change}, "classifier")
    message = str(error.value)
    assert "\n" not in message
    assert key + " " in message or key + "'" in message, message


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"backbone": "resnet101"}, "classifier.backbone"),  # an smp encoder, but not a classifier backbone
        ({"encoder_weights": "weights/missing.pth"}, "classifier.encoder_weights"),
        ({"dropout": 1.0}, "classifier.dropout"),
        ({"dropout": -0.1}, "classifier.dropout"),
        ({"max_epochs": 1}, "classifier.max_epochs"),  # the shared TrainParams checks still apply
    ],
)
def test_bad_classifier_params_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(PipelineError, match=key.replace(".", r"\.")):
        from_mapping(ClassifierParams, {**VALID, **change}, "classifier")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"head": "softmax"}, "classifier.head"),
        ({"images_per_epoch": 0}, "classifier.images_per_epoch"),
        ({"images_per_epoch": 2.5}, "classifier.images_per_epoch"),
    ],
)
def test_bad_classifier_head_and_budget_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(PipelineError, match=key.replace(".", r"\.")):
        from_mapping(ClassifierParams, {**VALID, **change}, "classifier")


SEGMENT = {**VALID, "backbone": "resnet18", "input_height": 128, "input_width": 800}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crop_height": 64}, "segment.crop_width and crop_height must both be set or both be null"),
        ({"crop_height": 64, "crop_width": 100}, "segment.crop_width must be a multiple of 32, got 100"),
        (
            {"crop_height": 256, "crop_width": 256},
            "segment.crop_height must be <= the input size (128), got 256",
        ),
        (
            {"crop_height": 64, "crop_width": 832},
            "segment.crop_width must be <= the input size (800), got 832",
        ),
        ({"crop_defect_bias": 1.5}, "segment.crop_defect_bias must be a probability in [0, 1], got 1.5"),
        ({"thresholds": [0.5, 0.5]}, "segment.thresholds must not repeat a value"),
        ({"thresholds": [0.0]}, "segment.thresholds must be in (0, 1), got 0.0"),
        ({"train_images": "clean"}, "segment.train_images must be one of all, defective, got 'clean'"),
        ({"tune_on": "all"}, "segment.tune_on is not a known parameter"),
    ],
)
def test_bad_segment_params_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineError) as error:
        from_mapping(SegmentParams, {**SEGMENT, **change}, "segment")
    assert message in str(error.value)


def test_segment_crop_params() -> None:
    assert from_mapping(SegmentParams, SEGMENT, "segment").crop is None
    params = from_mapping(SegmentParams, {**SEGMENT, "crop_height": 128, "crop_width": 256}, "segment")
    assert params.crop == CropSpec(128, 256, 0.5)


# --- runtime ------------------------------------------------------------------------------------------------

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


@needs_no_cuda
@pytest.mark.parametrize("mixed_precision", [True, False])
def test_auto_runtime_is_cpu_without_amp(mixed_precision: bool) -> None:
    runtime = resolve_runtime("auto", mixed_precision, "classifier.device")
    assert runtime.device == torch.device("cpu") and not runtime.is_cuda
    assert runtime.amp is False and runtime.channels_last is False
    assert isinstance(runtime.autocast(), contextlib.nullcontext)
    assert runtime.grad_scaler().is_enabled() is False
    assert resolve_runtime("cpu", True) == runtime


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_names_the_key(device: str) -> None:
    with pytest.raises(PipelineError, match=r"classifier\.device .*no CUDA device") as error:
        resolve_runtime(device, True, "classifier.device")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("device", ["bogus", "gpu", "", "cuda:x", "meta", "mps"])
def test_unknown_devices_name_the_key(device: str) -> None:
    with pytest.raises(
        PipelineError, match=r"^params: score_train\.device must be auto, cpu, cuda or cuda:N"
    ):
        resolve_runtime(device, False, "score_train.device")


def test_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    runtime = resolve_runtime("auto", True)
    assert runtime.device == torch.device("cuda") and runtime.amp and runtime.channels_last
    assert resolve_runtime("cuda:0", False).amp is False
    assert torch.backends.cudnn.benchmark is True  # fixed input sizes: cuDNN picks its fastest kernels
    assert runtime.amp_dtype == torch.float16 and runtime.pin_memory


@pytest.mark.parametrize(
    ("mixed_precision", "cuda", "bf16_supported", "dtype", "scaler"),
    [
        (True, True, True, torch.bfloat16, False),  # Ampere and later: bfloat16, no loss scaling
        (True, True, False, torch.float16, True),  # older GPUs: float16 needs the grad scaler
        (False, True, True, None, False),  # mixed precision off: float32
        (True, False, True, None, False),  # never on CPU
        (True, False, False, None, False),
    ],
)
def test_precision_follows_the_gpu(
    mixed_precision: bool, cuda: bool, bf16_supported: bool, dtype: torch.dtype | None, scaler: bool
) -> None:
    assert autocast_dtype(mixed_precision, cuda, bf16_supported) == dtype
    assert needs_grad_scaler(dtype) is scaler
    device = torch.device("cuda:0" if cuda else "cpu")
    runtime = Runtime(device, mixed_precision and cuda, channels_last=cuda, bf16=bf16_supported)
    assert runtime.amp_dtype == dtype and runtime.pin_memory is cuda


def test_resolve_runtime_picks_bfloat16_on_a_gpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert resolve_runtime("cuda:1", True).amp_dtype == torch.bfloat16
    assert resolve_runtime("cuda:1", False).amp_dtype is None


def test_cpu_runtime_keeps_tensors_as_they_are() -> None:
    runtime = resolve_runtime("cpu", True)
    images, targets = torch.rand(2, 3, 4, 5), torch.rand(2, 4)
    assert runtime.batch(images).is_contiguous() and runtime.tensor(targets) is targets
    assert not runtime.pin_memory and runtime.amp_dtype is None


# --- optimizers and schedulers ------------------------------------------------------------------------------


def test_make_optimizer_uses_only_trainable_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    for name, kind in kinds.items():
        optimizer = make_optimizer(TrainParams(optimizer=name, learning_rate=0.05, weight_decay=0.01), model)
        assert type(optimizer) is kind
        (group,) = optimizer.param_groups
        assert group["lr"] == 0.05 and group["weight_decay"] == 0.01
        assert [p.shape for p in group["params"]] == [(1, 4), (1,)]


def test_make_scheduler() -> None:
    optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    cosine = make_scheduler(TrainParams(scheduler="cosine", max_epochs=4), optimizer)
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max == 4
    plateau = make_scheduler(TrainParams(scheduler="plateau"), optimizer)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert make_scheduler(TrainParams(scheduler="none"), optimizer) is None


# --- fit ----------------------------------------------------------------------------------------------------

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False)


class Scripted:
    """An evaluate callback returning scripted validation losses, recording the weights it saw."""

    def __init__(self, losses: Sequence[float]) -> None:
        self.losses = list(losses)
        self.states: list[dict[str, torch.Tensor]] = []
        self.logged: list[tuple[int, dict[str, float]]] = []

    def __call__(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        self.states.append(copy.deepcopy(model.state_dict()))
        return {"loss": self.losses[len(self.states) - 1], "auc": 0.5}

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        self.logged.append((epoch, dict(metrics)))


def run_fit(losses: Sequence[float], **params: Any) -> tuple[FitResult, Scripted]:
    torch.manual_seed(0)
    inputs = torch.randn(10, 4)
    dataset = TensorDataset(inputs, inputs.sum(1, keepdim=True))
    train = DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(dataset, batch_size=4)
    scripted = Scripted(losses)
    options = {"optimizer": "sgd", "learning_rate": 0.01, "scheduler": "none", **params}
    result = fit(
        nn.Linear(4, 1), train, val, nn.MSELoss(), scripted, TrainParams(**options), CPU, scripted.log, "t"
    )
    assert len(scripted.states) == result.epochs_run  # one validation per epoch
    return result, scripted


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_early_stopping_returns_the_best_epoch() -> None:
    result, scripted = run_fit([1.0, 0.5, 0.7, 0.8, 0.9, 0.1], min_epochs=1, max_epochs=6, patience=2)
    assert result.best_epoch == 2 and result.epochs_run == 4
    assert_state_equal(result.best_state, scripted.states[1])  # the weights after epoch 2, not the last
    assert not torch.equal(result.best_state["weight"], scripted.states[3]["weight"])
    assert result.best_metrics["loss"] == 0.5 and result.best_metrics["auc"] == 0.5
    assert [epoch for epoch, _ in scripted.logged] == [1, 2, 3, 4]
    assert [metrics["best"] for _, metrics in scripted.logged] == [1.0, 1.0, 0.0, 0.0]
    assert all(metrics["lr"] == 0.01 and "train_loss" in metrics for _, metrics in scripted.logged)
    assert result.train_images == 4 * 10
    assert result.train_seconds > 0 and result.images_per_second > 0


def test_the_best_state_is_a_copy() -> None:
    result, scripted = run_fit([1.0, 2.0, 3.0], min_epochs=3, max_epochs=3, patience=5)
    assert result.best_epoch == 1
    assert_state_equal(result.best_state, scripted.states[0])
    assert not torch.equal(result.best_state["weight"], scripted.states[2]["weight"])


def test_max_epochs_is_respected() -> None:
    result, _ = run_fit([5.0, 4.0, 3.0, 2.0, 1.0], min_epochs=1, max_epochs=3, patience=1)
    assert result.epochs_run == 3 and result.best_epoch == 3


def test_min_epochs_is_respected_even_when_the_loss_worsens() -> None:
    result, scripted = run_fit([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], min_epochs=5, max_epochs=7, patience=1)
    assert result.epochs_run == 5 and result.best_epoch == 1
    assert_state_equal(result.best_state, scripted.states[0])
    short, _ = run_fit([1.0, 2.0, 3.0, 4.0], min_epochs=1, max_epochs=4, patience=1)
    assert short.epochs_run == 2


def test_an_equal_loss_is_not_an_improvement() -> None:
    result, _ = run_fit([1.0, 0.5, 0.5, 0.5], min_epochs=1, max_epochs=4, patience=2)
    assert result.best_epoch == 2 and result.epochs_run == 4


def test_a_nan_loss_is_never_the_best() -> None:
    result, scripted = run_fit([math.nan, 0.9, math.nan, 0.95], min_epochs=1, max_epochs=4, patience=2)
    assert result.best_epoch == 2 and result.epochs_run == 4
    assert_state_equal(result.best_state, scripted.states[1])


def test_fit_trains_the_model() -> None:
    losses: list[float] = []

    def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            total = sum(float(nn.functional.mse_loss(model(x), y, reduction="sum")) for x, y in loader)
        losses.append(total / len(loader.dataset))
        return {"loss": losses[-1]}

    torch.manual_seed(0)
    inputs = torch.randn(32, 4)
    dataset = TensorDataset(inputs, inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
    params = TrainParams(optimizer="adam", learning_rate=0.1, scheduler="cosine", max_epochs=10, patience=10)
    result = fit(
        nn.Linear(4, 1),
        DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
        DataLoader(dataset, batch_size=8),
        nn.MSELoss(),
        evaluate,
        params,
        CPU,
        lambda epoch, metrics: None,
        "linear",
    )
    assert result.epochs_run == 10
    assert result.best_metrics["loss"] == min(losses) < losses[0] / 4
    assert result.best_metrics["lr"] < 0.1  # cosine annealing lowered the learning rate


def test_format_epoch() -> None:
    line = format_epoch("classifier fold 0", 3, {"train_loss": 0.5, "loss": 0.25, "lr": 1e-3, "best": 1.0})
    assert line == "classifier fold 0 epoch 3: train_loss=0.5000 loss=0.2500 lr=1.00e-03 *best*"
    assert not format_epoch("x", 1, {"loss": 1.0, "lr": 0.1, "best": 0.0}).endswith("*best*")


# --- images per epoch ---------------------------------------------------------------------------------------


class Indexed(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize(("n", "samples"), [(5, 12), (5, 3), (4, 4)])
def test_images_per_epoch_draws_whole_permutations(n: int, samples: int) -> None:
    loader = make_loader(Indexed(n), batch_size=4, num_workers=0, shuffle=True, seed=1, samples=samples)
    drawn = [int(i) for batch in loader for i in batch]
    assert len(drawn) == samples
    # Consecutive permutations: no item twice before every item once.
    for start in range(0, samples - n + 1, n):
        assert sorted(drawn[start : start + n]) == list(range(n))
    assert len(set(drawn[(samples // n) * n :])) == samples % n
    again = [int(i) for batch in make_loader(Indexed(n), 4, 0, True, 1, samples) for i in batch]
    assert again == drawn  # seeded
    second_epoch = [int(i) for batch in loader for i in batch]
    assert len(second_epoch) == samples


def test_without_images_per_epoch_an_epoch_is_one_pass() -> None:
    drawn = [int(i) for batch in make_loader(Indexed(7), 3, 0, shuffle=True, seed=0) for i in batch]
    assert sorted(drawn) == list(range(7))
    assert [int(i) for batch in make_loader(Indexed(7), 3, 0) for i in batch] == list(range(7))


def test_images_per_epoch_sets_the_training_budget() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(10, 4)
    dataset = TensorDataset(inputs, inputs.sum(1, keepdim=True))
    params = TrainParams(optimizer="sgd", scheduler="none", max_epochs=3, min_epochs=3, images_per_epoch=25)
    train = make_loader(dataset, 4, 0, shuffle=True, seed=0, samples=params.images_per_epoch)
    result = fit(
        nn.Linear(4, 1),
        train,
        DataLoader(dataset, batch_size=4),
        nn.MSELoss(),
        lambda model, loader: {"loss": 1.0},
        params,
        CPU,
        lambda epoch, metrics: None,
        "budget",
    )
    assert result.train_images == 3 * 25


# --- the fold loop both model stages share ------------------------------------------------------------------


class Rows(torch.utils.data.Dataset):
    """One (features, target) item per table row: features from the row's `x`, target its `y`."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.x = torch.tensor(rows["x"].to_numpy(), dtype=torch.float32)[:, None].repeat(1, 4)
        self.y = torch.tensor(rows["y"].to_numpy(), dtype=torch.float32)[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class Freezable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = nn.Linear(4, 4), nn.Linear(4, 1)
        self.frozen = False

    def freeze_encoder(self) -> None:
        self.frozen = True
        self.encoder.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_train_folds_holds_out_each_fold_and_keeps_its_best_weights() -> None:
    table = pd.DataFrame(
        {"x": np.linspace(-1, 1, 30), "fold": np.arange(30) % 5, "keep": np.arange(30) % 3 > 0}
    )
    table["y"] = 2 * table["x"]
    seen: dict[str, list[pd.DataFrame]] = {"train": [], "val": []}

    def train_set(rows: pd.DataFrame, seed: int) -> Rows:
        seen["train"].append(rows)
        return Rows(rows)

    def val_set(rows: pd.DataFrame) -> Rows:
        seen["val"].append(rows)
        return Rows(rows)

    losses: list[float] = []

    def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
        with torch.no_grad():
            losses.append(float(sum(nn.functional.mse_loss(model(x), y) for x, y in loader)))
        return {"loss": losses[-1]}

    task = FoldTask(
        name="toy",
        build_model=Freezable,
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.MSELoss(),
        evaluate=evaluate,
        select_train_rows=lambda rows: rows[rows["keep"]],
    )
    params = TrainParams(folds=3, max_epochs=3, min_epochs=3, freeze_encoder=True, learning_rate=0.05)
    fold_models = train_folds(task, params, table, CPU, NullLive())
    assert [m.fold for m in fold_models] == [0, 1, 2]
    for fold_model, train_rows, val_rows in zip(fold_models, seen["train"], seen["val"], strict=True):
        fold = fold_model.fold
        assert (val_rows["fold"] == fold).all() and len(val_rows) == 6
        assert (train_rows["fold"] != fold).all() and train_rows["keep"].all()  # selected rows only
        assert fold_model.train_folds == sorted(set(range(5)) - {fold})
        assert fold_model.model.frozen and not any(
            p.requires_grad for p in fold_model.model.encoder.parameters()
        )
        assert_state_equal(fold_model.model.state_dict(), fold_model.result.best_state)
        extra = fold_model.checkpoint_extra(params)
        assert extra["val_fold"] == fold and extra["train_folds"] == fold_model.train_folds
        assert extra["params"]["folds"] == 3
        assert set(fold_model.metrics(("loss",))) == {
            "best_epoch",
            "epochs_run",
            "val_loss",
            "train_images_per_s",
        }


class NullLive:
    """dvclive's Live, as far as the epoch logger uses it."""

    step = 0

    def log_metric(self, name: str, value: float, plot: bool = True) -> None:
        assert isinstance(name, str) and isinstance(value, float)


def test_images_per_epoch_must_be_positive() -> None:
    with pytest.raises(PipelineError, match=r"segment\.images_per_epoch must be at least 1"):
        from_mapping(TrainParams, {"images_per_epoch": 0}, "segment")
    assert from_mapping(TrainParams, {"images_per_epoch": None}, "segment").images_per_epoch is None


# --- class-balanced sampling --------------------------------------------------------------------------------

BALANCE_TABLE = pd.DataFrame(
    {
        # 6 clean images, 3 with class 1, 1 with class 2, 1 with classes 1 and 2.
        "has_defect": [False] * 6 + [True] * 5,
        "rle_1": [""] * 6 + ["1 1", "1 1", "1 1", "", "1 1"],
        "rle_2": [""] * 6 + ["", "", "", "1 1", "1 1"],
    }
)


def class_shares(weights: np.ndarray) -> list[float]:
    table = BALANCE_TABLE
    return [
        float(weights[table["rle_1"] != ""].sum()),
        float(weights[table["rle_2"] != ""].sum()),
        float(weights[~table["has_defect"]].sum()),
    ]


def test_class_balance_zero_draws_images_uniformly_up_to_multi_class_images() -> None:
    weights = class_balance_weights(BALANCE_TABLE, 2, 0.0)
    assert weights.sum() == pytest.approx(1.0)
    # Every (image, class) membership counts once: the two-class image is twice as likely.
    assert weights[-1] == pytest.approx(2 * weights[0])
    np.testing.assert_allclose(weights[:10], weights[0])


def test_class_balance_one_draws_every_class_equally_often() -> None:
    weights = class_balance_weights(BALANCE_TABLE, 2, 1.0)
    # Classes 1, 2 and clean each get a third; the two-class image is drawn through either class.
    by_class = np.array([1 / 3 / 4, 1 / 3 / 2, 1 / 3 / 6])  # per image of class 1, class 2, clean
    expected = np.array([by_class[2]] * 6 + [by_class[0]] * 3 + [by_class[1], by_class[0] + by_class[1]])
    np.testing.assert_allclose(weights, expected / expected.sum())
    shares = class_shares(weights)
    assert shares[1] > shares[2]  # rare class 2 now drawn more than the 6 clean images


def test_a_class_absent_from_the_rows_gets_no_weight() -> None:
    rows = BALANCE_TABLE[BALANCE_TABLE["rle_2"] == ""]
    weights = class_balance_weights(rows, 2, 1.0)
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()


def test_weighted_loader_draws_by_weight() -> None:
    weights = np.array([0.0, 0.0, 1.0, 0.0])
    loader = make_loader(Indexed(4), 8, 0, shuffle=True, seed=0, samples=20, weights=weights)
    assert [int(i) for batch in loader for i in batch] == [2] * 20


# --- the U-Net's loss ---------------------------------------------------------------------------------------


def test_bce_pos_weight_weighs_defect_pixels() -> None:
    logits = torch.zeros(1, 2, 4, 4)
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2] = 1.0  # class 1: 8 defect pixels of 16; class 2 absent (its Dice term is skipped)
    plain = BCEDiceLoss(1.0, 0.0)(logits, masks)
    weighted = BCEDiceLoss(1.0, 0.0, pos_weight=3.0)(logits, masks)
    # At p = 0.5 every pixel costs log 2; the 8 defect pixels count 3 times: (8 * 3 + 24) / 32 = 1.5x.
    assert plain == pytest.approx(math.log(2))
    assert weighted == pytest.approx(1.5 * math.log(2))
    dice_only = BCEDiceLoss(0.0, 1.0, pos_weight=3.0)(logits, masks)
    assert dice_only == pytest.approx(BCEDiceLoss(0.0, 1.0)(logits, masks))  # the Dice term ignores it
