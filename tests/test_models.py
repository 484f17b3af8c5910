"""Model factories and checkpoints: encoder and weights checks, local weights files, the allMissing
classifier (frozen encoder included), the U-Net, and checkpoints that rebuild their model. Offline: every
encoder starts from random weights or from a file written here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.base import ClassificationHead
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from stages.core.errors import PipelineError
from stages.core.models import (
    CLASSIFIER_BACKBONES,
    DefectClassifier,
    build_encoder,
    build_unet,
    check_encoder,
    load_classifier,
    load_unet,
    save_checkpoint,
)
from stages.core.training import TrainParams, make_optimizer


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared machine, OpenMP threads waiting for each other cost more than
    they gain on these tiny inputs (several times slower under load). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_encoder(name: str, seed: int) -> nn.Module:
    """An smp encoder with seeded random weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    encoder = get_encoder(name, in_channels=3, depth=5, weights=None)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return encoder


def assert_same_state(a: nn.Module | dict[str, torch.Tensor], b: nn.Module | dict[str, torch.Tensor]) -> None:
    first = a.state_dict() if isinstance(a, nn.Module) else a
    second = b.state_dict() if isinstance(b, nn.Module) else b
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert torch.equal(tensor, second[key]), key


def one_line_error(error: pytest.ExceptionInfo[PipelineError]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --- check_encoder ------------------------------------------------------------------------------------------


def test_check_encoder_accepts_known_names_and_weights(tmp_path: Path) -> None:
    weights = tmp_path / "encoder.pth"
    weights.write_bytes(b"not checked here")
    for name in CLASSIFIER_BACKBONES:
        check_encoder(name, "none", "classifier", CLASSIFIER_BACKBONES)
    check_encoder("resnet18", "imagenet", "segmentation")  # any smp encoder when no list is given
    check_encoder("resnet18", str(weights), "classifier", CLASSIFIER_BACKBONES)


@pytest.mark.parametrize(
    ("name", "allowed"),
    [("vgg_doesnotexist", None), ("resnet101", CLASSIFIER_BACKBONES), ("", CLASSIFIER_BACKBONES)],
)
def test_check_encoder_unknown_backbone(name: str, allowed: tuple[str, ...] | None) -> None:
    with pytest.raises(PipelineError) as error:
        check_encoder(name, "none", "classifier", allowed)
    message = one_line_error(error)
    assert "classifier.backbone" in message and repr(name) in message
    if allowed:
        assert "densenet121" in message  # lists the choices


def test_check_encoder_missing_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(PipelineError) as error:
        check_encoder("resnet18", str(missing), "segmentation")
    message = one_line_error(error)
    assert "segmentation.encoder_weights" in message and str(missing) in message
    with pytest.raises(PipelineError, match=r"classifier\.encoder_weights"):
        check_encoder("resnet18", str(tmp_path), "classifier")  # a folder is not a weights file


# --- local weights files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """A seeded random resnet18 encoder's state dict (contiguous, as safetensors requires)."""
    return {
        key: tensor.contiguous() for key, tensor in random_encoder("resnet18", seed=1).state_dict().items()
    }


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_build_encoder_loads_a_local_weights_file(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], fmt: str
) -> None:
    path = tmp_path / f"resnet18.{'pth' if fmt == 'wrapped' else fmt}"
    if fmt == "safetensors":
        save_file(resnet18_state, str(path))
    elif fmt == "wrapped":  # a training checkpoint holding the state dict under "state_dict"
        torch.save({"state_dict": resnet18_state, "epoch": 3}, path)
    else:
        torch.save(resnet18_state, path)
    torch.manual_seed(1)  # the seed of the file's encoder: loading, not the initialisation, must match
    assert_same_state(build_encoder("resnet18", str(path)), resnet18_state)


def test_unet_takes_its_encoder_from_a_local_weights_file(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "encoder.pth"
    torch.save(resnet18_state, path)
    unet = build_unet("resnet18", str(path), num_classes=4)
    assert_same_state(unet.encoder, resnet18_state)


def test_weights_of_another_encoder_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(random_encoder("mobilenet_v2", seed=0).state_dict(), path)
    with pytest.raises(PipelineError) as error:
        build_encoder("resnet18", str(path))
    message = one_line_error(error)
    assert str(path) in message and "do not fit" in message
    assert "Missing key(s)" in message  # the reason, not only torch's header line
    assert len(message) < len(str(path)) + 400  # torch lists every key: shortened


def test_weights_with_a_wrong_shape_do_not_fit(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    state = {**resnet18_state, "conv1.weight": torch.zeros(64, 3, 3, 3)}
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(PipelineError) as error:
        build_encoder("resnet18", str(path))
    message = one_line_error(error)
    assert str(path) in message and "conv1.weight" in message


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_garbage_weights_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage.{suffix}"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a weights file \x00\xff" * 8)
    with pytest.raises(PipelineError) as error:
        build_encoder("resnet18", str(path))
    message = one_line_error(error)
    assert str(path) in message and "not a readable weights file" in message


def test_a_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(PipelineError, match="expected a state dict, got list"):
        build_encoder("resnet18", str(path))


# --- the allMissing classifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", CLASSIFIER_BACKBONES)
def test_every_classifier_backbone_builds_offline(backbone: str) -> None:
    model = DefectClassifier(backbone, "none").eval()
    with torch.no_grad():
        logits = model(images(size=64))
    assert logits.shape == (2, 1) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("head", "num_classes", "outputs"), [("binary", 4, 1), ("multilabel", 4, 5), ("multilabel", 2, 3)]
)
def test_classifier_heads(head: str, num_classes: int, outputs: int) -> None:
    model = DefectClassifier("resnet18", "none", head=head, num_classes=num_classes).eval()
    assert model.outputs == outputs
    with torch.no_grad():
        assert model(images(size=64)).shape == (2, outputs)
    # smp's own head: pooling, dropout and one linear layer from the encoder's last features.
    assert isinstance(model.classification_head, ClassificationHead)
    assert model.classification_head[3].in_features == model.encoder.out_channels[-1]
    with pytest.raises(ValueError, match="unknown classifier head"):
        DefectClassifier("resnet18", "none", head="multiclass")


def batch_norm_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("call_train", [True, False])
def test_frozen_encoder_trains_only_the_head(call_train: bool) -> None:
    torch.manual_seed(0)
    model = DefectClassifier("resnet18", "none", dropout=0.0)
    model.freeze_encoder()  # smp's: frozen weights, BatchNorm statistics fixed through train() calls
    if call_train:
        model.train()  # fit() does this every epoch
    assert model.training and not any(norm.training for norm in encoder_norms(model))
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.classification_head.state_dict().items()}
    optimizer = make_optimizer(TrainParams(optimizer="sgd", learning_rate=0.1, weight_decay=0.1), model)
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == 512 + 1
    for step in range(2):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(images(seed=step)), torch.ones(2, 1))
        loss.backward()
        optimizer.step()
    assert_same_state(model.encoder, encoder_before)  # weights and running statistics
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(not torch.equal(v, head_before[k]) for k, v in model.classification_head.state_dict().items())
    model.eval()
    assert not model.training and not any(norm.training for norm in encoder_norms(model))
    model.train()
    assert not any(norm.training for norm in encoder_norms(model))


def encoder_norms(model: nn.Module) -> list[nn.Module]:
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms
    return norms


def test_frozen_unet_keeps_its_encoder_fixed() -> None:
    torch.manual_seed(1)
    model = build_unet("resnet18", "none", num_classes=2, decoder_channels=(16, 8, 8, 8, 8))
    model.freeze_encoder()
    model.train()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = make_optimizer(TrainParams(optimizer="sgd", learning_rate=0.1), model)
    optimizer.zero_grad()
    model(images(size=32)).mean().backward()
    optimizer.step()
    assert_same_state(model.encoder, encoder_before)
    assert not any(norm.training for norm in encoder_norms(model))


def test_unfrozen_classifier_updates_batch_norm_in_train_mode() -> None:
    model = DefectClassifier("resnet18", "none").train()
    assert model.encoder.training
    before = batch_norm_stats(model.encoder)
    model(images())
    after = batch_norm_stats(model.encoder)
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])


# --- checkpoints --------------------------------------------------------------------------------------------


def test_classifier_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = DefectClassifier("resnet18", "none", dropout=0.3, head="multilabel", num_classes=3)
    model.train()
    with torch.no_grad():
        model(images(n=4, seed=5))  # move BatchNorm statistics away from their defaults
    model.eval()
    path = tmp_path / "models" / "fold_0.pt"
    config = {"backbone": "resnet18", "dropout": 0.3, "head": "multilabel", "num_classes": 3}
    save_checkpoint(path, model, config, {"fold": 0, "best_epoch": 2})
    assert path.is_file() and list(path.parent.iterdir()) == [path]  # no temporary file left behind
    loaded, checkpoint = load_classifier(path)
    assert isinstance(loaded, DefectClassifier) and not loaded.training and loaded.outputs == 4
    assert checkpoint["fold"] == 0 and checkpoint["best_epoch"] == 2
    assert checkpoint["config"] == config
    assert_same_state(loaded, model)  # BatchNorm statistics included
    batch = images(seed=7)
    with torch.no_grad():
        expected, got = model(batch), loaded(batch)
    assert torch.equal(got, expected)


def test_classifier_checkpoint_from_before_the_multilabel_head_loads(tmp_path: Path) -> None:
    """Checkpoints written before smp's ClassificationHead: no head in the config, the head's layers
    under `head.` (the same layers in the same order)."""
    model = DefectClassifier("resnet18", "none").eval()
    state = {
        key.replace("classification_head.", "head.", 1): value for key, value in model.state_dict().items()
    }
    assert "head.3.weight" in state
    path = tmp_path / "old.pt"
    torch.save(
        {"config": {"backbone": "resnet18", "dropout": 0.2, "input_size": [64, 384]}, "state_dict": state},
        path,
    )
    loaded, _ = load_classifier(path)
    assert loaded.outputs == 1
    assert_same_state(loaded, model)


def test_unet_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = build_unet("resnet18", "none", num_classes=4)
    model.train()
    with torch.no_grad():
        model(images(n=2, seed=5))
    model.eval()
    path = tmp_path / "unet.pt"
    save_checkpoint(path, model, {"encoder": "resnet18", "num_classes": 4}, {"fold": 1})
    loaded, checkpoint = load_unet(path)
    assert not loaded.training and checkpoint["fold"] == 1
    batch = images(size=32, seed=8)
    with torch.no_grad():
        expected, got = model(batch), loaded(batch)
    assert got.shape == (2, 4, 32, 32)
    assert torch.equal(got, expected)


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="checkpoint not found"):
        load_classifier(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint\n\x00" * 4)
    with pytest.raises(PipelineError) as error:
        load_unet(garbage)
    assert str(garbage) in one_line_error(error)
    foreign = tmp_path / "weights_only.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(PipelineError, match="not a checkpoint of this project"):
        load_classifier(foreign)


class _Payload:
    """Stands for arbitrary pickled code: torch.load(weights_only=False) would build it."""


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    model = build_unet("resnet18", "none", num_classes=2).eval()
    path = tmp_path / "unet.pt"
    extra = {"fold": np.int64(1), "val_metrics": {"dice": np.float64(0.5)}, "train_folds": (2, 3)}
    save_checkpoint(path, model, {"encoder": "resnet18", "num_classes": 2, "input_size": (32, 64)}, extra)
    checkpoint = torch.load(path, weights_only=True)  # builtins and tensors only
    assert checkpoint["fold"] == 1 and type(checkpoint["fold"]) is int
    assert checkpoint["train_folds"] == [2, 3] and checkpoint["config"]["input_size"] == [32, 64]
    hostile = tmp_path / "hostile.pt"
    torch.save({"config": {"encoder": "resnet18"}, "state_dict": {}, "payload": _Payload()}, hostile)
    with pytest.raises(PipelineError) as error:
        load_unet(hostile)
    assert str(hostile) in one_line_error(error)


def test_a_checkpoint_of_another_model_is_one_line(tmp_path: Path) -> None:
    unet = tmp_path / "unet.pt"
    save_checkpoint(
        unet, build_unet("resnet18", "none", num_classes=4), {"encoder": "resnet18", "num_classes": 4}, {}
    )
    with pytest.raises(PipelineError) as error:
        load_classifier(unet)  # a U-Net's checkpoint where the classifier's belongs
    assert one_line_error(error) == (
        f"{unet}: not a classifier checkpoint, or one whose weights do not fit its config (no 'backbone' in "
        "its config); retrain it (`dvc repro`) or put back the stage's own file"
    )
    classifier = tmp_path / "fold_0.pt"
    save_checkpoint(classifier, DefectClassifier("resnet18", "none"), {"backbone": "resnet34"}, {})
    with pytest.raises(PipelineError) as error:
        load_classifier(classifier)  # its config names another backbone than its weights'
    message = one_line_error(error)
    assert message.startswith(f"{classifier}: not a classifier checkpoint") and "Missing key(s)" in message
    with pytest.raises(PipelineError, match="not a U-Net checkpoint"):
        load_unet(classifier)


def test_a_full_disk_while_saving_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fold_0.pt"
    path.write_bytes(b"previous")

    def full(*args: object, **kwargs: object) -> None:  # torch's C++ writer, as it reports a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                           "file data/3: file write failed")  # fmt: skip

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(PipelineError) as error:
        save_checkpoint(path, DefectClassifier("resnet18", "none"), {"backbone": "resnet18"}, {})
    assert one_line_error(error).startswith(f"{path}: cannot write (")
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["fold_0.pt"]
    monkeypatch.setattr(torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):  # not a write failure: not hidden
        save_checkpoint(path, DefectClassifier("resnet18", "none"), {"backbone": "resnet18"}, {})


def test_a_weights_file_that_does_not_fit_names_the_param(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(random_encoder("mobilenet_v2", seed=0).state_dict(), path)
    with pytest.raises(PipelineError) as error:
        DefectClassifier("resnet18", str(path), weights_key="classifier.encoder_weights")
    assert one_line_error(error).startswith(
        f"params: classifier.encoder_weights: {path}: weights do not fit the resnet18 encoder (Error(s)"
    )
    with pytest.raises(PipelineError, match=r"^params: segment\.encoder_weights: .* the resnet18 encoder"):
        build_unet("resnet18", str(path), 4, weights_key="segment.encoder_weights")


def test_imagenet_for_an_encoder_without_imagenet_weights() -> None:
    with pytest.raises(PipelineError) as error:
        check_encoder("resnext101_32x16d", "imagenet", "segment")
    assert one_line_error(error).startswith(
        "params: segment.encoder_weights: smp has no imagenet weights for resnext101_32x16d (it has"
    )


# --- imagenet weights without the network: one line, at once ------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


OFFLINE_START = "params: classifier.encoder_weights 'imagenet': could not download the pretrained weights ("
OFFLINE_END = "); download them once and set classifier.encoder_weights to the local file, or use none"


@pytest.mark.usefixtures("empty_hub_cache")
def test_imagenet_with_the_hub_unreachable_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No half minute of huggingface_hub's retries: one request, refused here at once (nothing listens on
    port 9), and one line."""
    from huggingface_hub import constants

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    )
    started = time.perf_counter()
    with pytest.raises(PipelineError) as error:
        DefectClassifier("resnet18", "imagenet", weights_key="classifier.encoder_weights")
    message = one_line_error(error)
    assert message.startswith(OFFLINE_START + "http://127.0.0.1:9: ") and message.endswith(OFFLINE_END)
    assert time.perf_counter() - started < 20


@pytest.mark.usefixtures("empty_hub_cache")
def test_imagenet_with_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PipelineError) as error:
        build_unet("resnet18", "imagenet", 4, weights_key="classifier.encoder_weights")
    assert one_line_error(error) == (
        OFFLINE_START + "HF_HUB_OFFLINE is set and they are not in the cache" + OFFLINE_END
    )


def test_imagenet_download_failing_inside_smp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the downloader raises (huggingface_hub, httpx, timm, torch.hub) is the same one line."""
    import stages.core.models as models

    def refused(*args: object, **kwargs: object) -> None:
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(models, "check_hub", lambda name, key: None)
    monkeypatch.setattr(models, "get_encoder", refused)
    with pytest.raises(PipelineError) as error:
        build_encoder("resnet18", "imagenet", "classifier.encoder_weights")
    assert one_line_error(error) == (
        OFFLINE_START + "ConnectionError: [Errno 111] Connection refused" + OFFLINE_END
    )
