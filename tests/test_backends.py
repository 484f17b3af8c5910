"""Inference backends (stages/core/backends.py): each gives the eager model's outputs on a tiny classifier and
a tiny U-Net (any batch size, flip TTA included); an export failure, a missing runtime or a disagreeing
backend is one warning line and eager results; the param is validated in every stage that predicts."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import ClassificationHead
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from stages.classifier import ClassifierParams
from stages.core import backends
from stages.core.backends import BACKENDS, InferenceBackend, predictor
from stages.core.device import Runtime
from stages.core.errors import PipelineError
from stages.core.inference import classifier_probabilities, predict_probabilities
from stages.core.inference_ops import classifier_probabilities as batch_probabilities
from stages.core.inference_ops import flip_tta_probabilities
from stages.core.params import from_mapping
from stages.score_train import ScoreTrainParams
from stages.segment import SegmentParams

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False)
HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx")
TOLERANCE = 1e-4  # max probability difference to eager: float32 kernels of another library, same maths
UNET_SIZE = (32, 64)
CLASSIFIER_SIZE = (32, 64)

needs_onnxruntime = pytest.mark.skipif(not HAS_ONNXRUNTIME, reason="onnxruntime is not installed")


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    backends.clear_cache()
    # One thread: on a shared 2-core machine two threads wait on each other at every layer of these tiny
    # models, which then take seconds instead of milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Inductor would spend minutes compiling C++ on this CPU; dynamo's own eager backend runs the same
    # wrapper (capture, padding of the last batch, fallback) in seconds. The benchmark measures inductor.
    monkeypatch.setattr(backends, "COMPILER", "eager")
    yield
    torch.set_num_threads(threads)
    backends.clear_cache()


class TinyClassifier(nn.Module):
    """DefectClassifier's parts (an smp encoder, smp's ClassificationHead), two encoder stages deep."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = get_encoder("resnet18", in_channels=3, depth=2, weights=None)
        self.classification_head = ClassificationHead(self.encoder.out_channels[-1], 5, dropout=0.2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classification_head(self.encoder(images)[-1])


def tiny_unet() -> nn.Module:
    """An smp U-Net as build_unet makes it (logits, 4 classes), three encoder stages deep."""
    torch.manual_seed(0)
    return smp.Unet(
        "resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8), classes=4
    ).eval()


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier().eval()


def head_bias(model: nn.Module) -> torch.Tensor:
    return next(layer for layer in model.classification_head if isinstance(layer, nn.Linear)).bias


def images(n: int, size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


AVAILABLE = [
    pytest.param(name, marks=needs_onnxruntime) if name == "onnxruntime" else name
    for name in BACKENDS
    if name != "eager"
]


@pytest.mark.parametrize("name", AVAILABLE)
def test_unet_backend_equals_eager_with_flip_tta(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_unet()
    run = predictor(model, InferenceBackend(name, "segment.inference_backend"))
    with torch.inference_mode():
        for n in (3, 2, 4):  # the first batch builds it; a smaller last batch, a larger one
            batch = images(n, UNET_SIZE, seed=n)
            got = flip_tta_probabilities([run], batch, "hvflip")
            expected = flip_tta_probabilities([model], batch, "hvflip")
            assert got.shape == expected.shape == (n, 4, *UNET_SIZE)
            assert float((got - expected).abs().max()) < TOLERANCE
            masks, eager_masks = got >= 0.5, expected >= 0.5
            agree = (masks == eager_masks).float().mean()
            assert agree > 0.999
    assert capsys.readouterr().err == ""  # no fallback


@pytest.mark.parametrize("name", AVAILABLE)
def test_classifier_backend_equals_eager(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    models = [tiny_classifier(), tiny_classifier()]
    with torch.no_grad():
        head_bias(models[1]).add_(1.0)  # two different models, averaged
    run = [predictor(model, InferenceBackend(name, "classifier.inference_backend")) for model in models]
    with torch.inference_mode():
        for n in (4, 1):
            batch = images(n, CLASSIFIER_SIZE, seed=n)
            got, expected = batch_probabilities(run, batch), batch_probabilities(models, batch)
            assert got.shape == expected.shape == (n, 5)
            assert float((got - expected).abs().max()) < TOLERANCE
    assert capsys.readouterr().err == ""


@needs_onnxruntime
def test_the_pipeline_functions_take_a_backend(tmp_path: Path) -> None:
    """classifier_probabilities and predict_probabilities (what the stages call) on image files."""
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"{i}.png" for i in range(3)]
    for name in names:
        assert cv2.imwrite(str(folder / name), rng.integers(0, 256, (80, 120, 3), dtype=np.uint8))
    table = pd.DataFrame({"ImageId": names, "height": 80, "width": 120})
    onnx = InferenceBackend("onnxruntime", "segment.inference_backend")
    unet = tiny_unet()
    got = list(predict_probabilities([unet], table, folder, UNET_SIZE, CPU, 2, "hflip", backend=onnx))
    expected = list(predict_probabilities([unet], table, folder, UNET_SIZE, CPU, 2, "hflip"))
    assert [image_id for image_id, _ in got] == names
    for (_, p), (_, q) in zip(got, expected, strict=True):
        assert p.shape == q.shape == (4, 80, 120)
        assert float(np.abs(p - q).max()) < TOLERANCE
    classifier = tiny_classifier()
    scores = classifier_probabilities([classifier], table, folder, CLASSIFIER_SIZE, CPU, 2, backend=onnx)
    eager = classifier_probabilities([classifier], table, folder, CLASSIFIER_SIZE, CPU, 2)
    np.testing.assert_allclose(scores, eager, atol=TOLERANCE)


def one_warning(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@needs_onnxruntime
def test_an_export_failure_warns_once_and_predicts_with_eager(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX is not supported.\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", fail)
    model = tiny_unet()
    run = predictor(model, InferenceBackend("onnxruntime", "segment.inference_backend"))
    with torch.inference_mode():
        for n in (2, 1):
            batch = images(n, UNET_SIZE)
            assert torch.equal(run(batch), model(batch))  # eager results, exactly
    assert one_warning(capsys) == (
        "warning: segment.inference_backend: onnxruntime failed (RuntimeError: Exporting the operator "
        "'aten::foo' to ONNX is not supported.); predicting with eager"
    )


def test_a_missing_runtime_warns_and_predicts_with_eager(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, as when it is not installed
    model = tiny_classifier()
    run = predictor(model, InferenceBackend("onnxruntime", "classifier.inference_backend"))
    batch = images(2, CLASSIFIER_SIZE)
    with torch.inference_mode():
        assert torch.equal(run(batch), model(batch))
    assert one_warning(capsys) == (
        "warning: classifier.inference_backend: onnxruntime is not installed (pip install onnxruntime onnx); "
        "predicting with eager"
    )


def test_a_compile_failure_warns_and_predicts_with_eager(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Compiler: cc not found")

    monkeypatch.setattr(torch, "compile", broken)
    model = tiny_classifier()
    run = predictor(model, InferenceBackend("compile", "score_train.inference_backend"))
    batch = images(2, CLASSIFIER_SIZE)
    with torch.inference_mode():
        assert torch.equal(run(batch), model(batch))
    assert one_warning(capsys) == (
        "warning: score_train.inference_backend: compile failed (RuntimeError: Compiler: cc not found); "
        "predicting with eager"
    )


def test_a_backend_that_disagrees_with_eager_is_not_used(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def off_by_one(model: nn.Module, example: torch.Tensor) -> backends.Predictor:
        return lambda batch: model(batch) + 1.0

    monkeypatch.setitem(backends._BUILDERS, "compile", off_by_one)
    model = tiny_classifier()
    run = predictor(model, InferenceBackend("compile", "classifier.inference_backend"))
    batch = images(3, CLASSIFIER_SIZE)
    with torch.inference_mode():
        assert torch.equal(run(batch), model(batch))
    warning = one_warning(capsys)
    assert warning.startswith("warning: classifier.inference_backend: compile disagrees with eager (max ")
    assert warning.endswith("> 0.001); predicting with eager")


def test_a_model_is_prepared_once_while_its_weights_stay() -> None:
    model = tiny_classifier()
    backend = InferenceBackend("compile", "classifier.inference_backend")
    first = predictor(model, backend)
    assert predictor(model, backend) is first
    assert predictor(model, InferenceBackend("eager")) is model
    with torch.no_grad():
        head_bias(model).add_(1.0)  # in place: new weights, a new predictor
    assert predictor(model, backend) is not first


@pytest.mark.parametrize(
    ("cls", "section"),
    [(ClassifierParams, "classifier"), (ScoreTrainParams, "score_train"), (SegmentParams, "segment")],
)
def test_the_param_is_validated_in_one_line(cls: type, section: str) -> None:
    for name in BACKENDS:
        assert from_mapping(cls, {"inference_backend": name}, section).inference_backend == name
    with pytest.raises(PipelineError) as error:
        from_mapping(cls, {"inference_backend": "tensorrt"}, section)
    assert str(error.value) == (
        f"params: {section}.inference_backend must be one of eager, onnxruntime, compile, got 'tensorrt'"
    )


def test_an_unknown_backend_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"segment\.inference_backend must be one of eager, onnxruntime"):
        InferenceBackend("tvm", "segment.inference_backend")
