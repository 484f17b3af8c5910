"""Model factories on segmentation-models-pytorch encoders, and self-describing checkpoints.

Both the allMissing classifier and the U-Net take their encoder from smp, so `encoder_weights` means the
same everywhere: `none` (random init), `imagenet` (smp downloads it when online) or a path to a local
weights file (.pth/.pt state dict or .safetensors) for that encoder. `weights_key` is that param's name
(`classifier.encoder_weights`), for the messages: a download that fails or a file that does not fit the
encoder is one line naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import ClassificationHead, SegmentationModel
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from stages.core.errors import PipelineError
from stages.core.io import atomic_path, target_name

CLASSIFIER_BACKBONES = ("densenet121", "resnet18", "resnet34", "resnet50", "mobilenet_v2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_encoder(name: str, weights: str, key: str, allowed: tuple[str, ...] | None = None) -> None:
    """Validate an encoder name and its weights param before any model is built."""
    names = allowed or tuple(smp.encoders.get_encoder_names())
    if name not in names:
        raise PipelineError(
            f"params: {key}.backbone {name!r} is not supported (choose from {', '.join(names)})"
        )
    if weights not in ("none", "imagenet") and not Path(weights).is_file():
        raise PipelineError(
            f"params: {key}.encoder_weights: weights file {weights!r} not found "
            "(use none, imagenet or a path to a file)"
        )
    settings = smp.encoders.encoders.get(name, {}).get("pretrained_settings", {})
    if weights == "imagenet" and not name.startswith("tu-") and "imagenet" not in settings:
        raise PipelineError(
            f"params: {key}.encoder_weights: smp has no imagenet weights for {name} "
            f"(it has {', '.join(settings) or 'none'}); use none or a path to a weights file"
        )


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's span several), shortened to `limit` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_sentence(error: BaseException, limit: int = 160) -> str:
    text = _one_line(error, 10_000)
    return _one_line(Exception(text.split(". ")[0].rstrip(".")), limit)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds on a corrupt or foreign file
        raise PipelineError(
            f"{path}: not a readable weights file ({type(error).__name__}: {_first_sentence(error)})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PipelineError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_encoder_weights(
    encoder: nn.Module, weights: str, name: str = "", weights_key: str = "encoder_weights"
) -> None:
    """Load a local weights file into an smp encoder (its loader drops the ImageNet head)."""
    state = load_state_dict_file(weights)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        # torch's first line only says "Error(s) in loading state_dict"; the details follow on the next.
        encoder_name = f"the {name} encoder" if name else "the encoder"
        raise PipelineError(
            f"params: {weights_key}: {weights}: weights do not fit {encoder_name} "
            f"({_one_line(error, 200)}); use a weights file of that encoder, or none"
        ) from None


def download_failure(weights_key: str, reason: str) -> PipelineError:
    return PipelineError(
        f"params: {weights_key} 'imagenet': could not download the pretrained weights ({reason}); "
        f"download them once and set {weights_key} to the local file, or use none"
    )


def check_hub(name: str, weights_key: str, timeout: float = 10.0) -> None:
    """Before smp downloads an encoder's ImageNet weights from the Hugging Face hub: unless they are in
    the local cache, one request without retries must reach the hub. huggingface_hub itself retries an
    unreachable hub for half a minute before its error; offline, this fails at once."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    settings = smp.encoders.encoders.get(name, {}).get("pretrained_settings", {}).get("imagenet")
    if settings is None:  # a timm universal encoder: timm finds its own weights
        return
    repo_id, revision = settings["repo_id"], settings["revision"]
    if isinstance(try_to_load_from_cache(repo_id, "model.safetensors", revision=revision), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise download_failure(weights_key, "HF_HUB_OFFLINE is set and they are not in the cache")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "model.safetensors", revision=revision), timeout=timeout)
    except Exception as error:  # httpx's connection errors, huggingface_hub's HTTP errors
        raise download_failure(weights_key, f"{constants.ENDPOINT}: {_short_reason(error)}") from None


def _short_reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {_one_line(error, 120)}"


@contextlib.contextmanager
def imagenet_download(name: str, weights_key: str) -> Iterator[None]:
    """Around the smp call that downloads ImageNet weights: any failure is one line naming the param."""
    check_hub(name, weights_key)
    try:
        yield
    except Exception as error:  # huggingface_hub, httpx, timm and torch.hub raise many kinds
        raise download_failure(weights_key, _short_reason(error)) from None


def with_weights(
    build: Callable[[str | None], nn.Module],
    name: str,
    weights: str,
    weights_key: str,
    encoder_of: Callable[[Any], nn.Module] = lambda model: model,
) -> Any:
    """`build(smp_weights)` (None or "imagenet"), then a local weights file loaded into its encoder: the one
    place models get their encoder weights."""
    if weights == "imagenet":
        with imagenet_download(name, weights_key):
            return build("imagenet")
    model = build(None)
    if weights != "none":
        load_encoder_weights(encoder_of(model), weights, name, weights_key)
    return model


def build_encoder(name: str, weights: str, weights_key: str = "encoder_weights") -> nn.Module:
    return with_weights(
        lambda smp_weights: get_encoder(name, in_channels=3, depth=5, weights=smp_weights),
        name,
        weights,
        weights_key,
    )


CLASSIFIER_HEADS = ("binary", "multilabel")


def classifier_outputs(head: str, num_classes: int) -> int:
    """Output columns: 0 is the allMissing logit; the multilabel head adds one presence logit per class."""
    return 1 if head == "binary" else 1 + num_classes


class DefectClassifier(SegmentationModel):
    """An smp encoder and smp's ClassificationHead (average pooling, dropout, linear).

    Output (N, C) logits: column 0 is allMissing (the image has no defect of any class); with
    head="multilabel" columns 1..K are the presence of each defect class. A SegmentationModel without a
    decoder, so that smp's freeze_encoder() (frozen weights, BatchNorm statistics kept fixed through
    later train() calls) serves it as it serves the U-Net.
    """

    def __init__(
        self,
        backbone: str,
        weights: str = "none",
        dropout: float = 0.2,
        head: str = "binary",
        num_classes: int = 4,
        weights_key: str = "encoder_weights",
    ) -> None:
        super().__init__()
        if head not in CLASSIFIER_HEADS:
            raise ValueError(f"unknown classifier head {head!r}; choose from {', '.join(CLASSIFIER_HEADS)}")
        self.head_kind, self.num_classes = head, num_classes
        self.encoder = build_encoder(backbone, weights, weights_key)
        self.classification_head = ClassificationHead(
            self.encoder.out_channels[-1], classifier_outputs(head, num_classes), dropout=dropout
        )

    @property
    def outputs(self) -> int:
        return classifier_outputs(self.head_kind, self.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classification_head(self.encoder(images)[-1])


UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp's default


def build_unet(
    encoder: str,
    weights: str,
    num_classes: int,
    decoder_channels: tuple[int, ...] = UNET_DECODER_CHANNELS,
    weights_key: str = "encoder_weights",
) -> smp.Unet:
    return with_weights(
        lambda smp_weights: smp.Unet(
            encoder_name=encoder,
            encoder_weights=smp_weights,
            decoder_channels=tuple(decoder_channels),
            classes=num_classes,
            activation=None,  # logits; sigmoid is applied in the loss and at prediction
        ),
        encoder,
        weights,
        weights_key,
        lambda model: model.encoder,
    )


def plain(value: Any) -> Any:
    """Python builtins only (numpy scalars as int/float, tuples as lists), so that the checkpoint loads
    with torch.load(weights_only=True), which unpickles nothing else."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: Path, model: nn.Module, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """A checkpoint that rebuilds the model without params.yaml: `config` holds the factory arguments."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    payload = {"config": plain(config), "state_dict": state, **plain(extra)}
    with atomic_path(path) as tmp:
        torch_write(lambda: torch.save(payload, tmp), path)


def torch_write(save: Callable[[], None], path: Path) -> None:
    """Run a torch.save or torch.jit.save: torch's C++ writer reports a full disk as a RuntimeError (with the
    temporary file's name), made here a PipelineError naming the output."""
    try:
        save()
    except RuntimeError as error:
        if "write" not in str(error).lower():
            raise
        raise PipelineError(f"{target_name(Path(path))}: cannot write ({_one_line(error, 200)})") from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # weights_only: tensors and Python builtins only, never arbitrary pickled code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: checkpoint not found") from None
    except Exception as error:  # a truncated or foreign file
        # torch's first sentence says what failed; the rest advises weights_only=False, unsafe here.
        raise PipelineError(
            f"{path}: not a readable checkpoint, truncated or corrupt ({type(error).__name__}: "
            f"{_first_sentence(error)}); retrain it (`dvc repro`)"
        ) from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise PipelineError(f"{path}: not a checkpoint of this project (no config and state_dict)")
    return checkpoint


def rebuild(path: Path, kind: str, build: Callable[[], nn.Module], state: dict[str, Any]) -> nn.Module:
    """The checkpoint's model from its config, with its weights: a checkpoint of another model (a U-Net's
    where a classifier's belongs, a config that does not match the weights) is one line naming the file."""
    try:
        model = build()
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = f"no {error} in its config" if isinstance(error, KeyError) else _one_line(error, 200)
        raise PipelineError(
            f"{path}: not a {kind} checkpoint, or one whose weights do not fit its config ({reason}); "
            "retrain it (`dvc repro`) or put back the stage's own file"
        ) from None
    return model.eval()


def load_classifier(path: Path) -> tuple[DefectClassifier, dict[str, Any]]:
    checkpoint = read_checkpoint(path)
    config = checkpoint["config"]
    # Before smp's ClassificationHead the head was called `head` (same layers, same order).
    state = {
        ("classification_head." + key.removeprefix("head.") if key.startswith("head.") else key): value
        for key, value in checkpoint["state_dict"].items()
    }
    model = rebuild(
        path,
        "classifier",
        lambda: DefectClassifier(
            config["backbone"],
            "none",
            config.get("dropout", 0.0),
            config.get("head", "binary"),  # checkpoints from before the multilabel head
            config.get("num_classes", 4),
        ),
        state,
    )
    return model, checkpoint  # type: ignore[return-value]


def load_unet(path: Path) -> tuple[smp.Unet, dict[str, Any]]:
    checkpoint = read_checkpoint(path)
    config = checkpoint["config"]
    model = rebuild(
        path,
        "U-Net",
        lambda: build_unet(
            config["encoder"],
            "none",
            config["num_classes"],
            tuple(config.get("decoder_channels", UNET_DECODER_CHANNELS)),
        ),
        checkpoint["state_dict"],
    )
    return model, checkpoint  # type: ignore[return-value]
