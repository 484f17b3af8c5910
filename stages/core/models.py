"""Model factories on segmentation-models-pytorch encoders, and self-describing checkpoints.

Both the allMissing classifier and the U-Net take their encoder from smp, so `encoder_weights` means the
same everywhere: `none` (random init), `imagenet` (smp downloads it when online) or a path to a local
weights file (.pth/.pt state dict or .safetensors) for that encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import ClassificationHead, SegmentationModel
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from stages.core.errors import PipelineError
from stages.core.io import atomic_path

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


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's span several), shortened to `limit` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds on a corrupt or foreign file
        raise PipelineError(
            f"{path}: not a readable weights file ({type(error).__name__}: {_one_line(error)})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PipelineError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_encoder_weights(encoder: nn.Module, weights: str) -> None:
    """Load a local weights file into an smp encoder (its loader drops the ImageNet head)."""
    state = load_state_dict_file(weights)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        # torch's first line only says "Error(s) in loading state_dict"; the details follow on the next.
        raise PipelineError(f"{weights}: weights do not fit the encoder ({_one_line(error)})") from None


def build_encoder(name: str, weights: str) -> nn.Module:
    encoder = get_encoder(name, in_channels=3, depth=5, weights="imagenet" if weights == "imagenet" else None)
    if weights not in ("none", "imagenet"):
        load_encoder_weights(encoder, weights)
    return encoder


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
    ) -> None:
        super().__init__()
        if head not in CLASSIFIER_HEADS:
            raise ValueError(f"unknown classifier head {head!r}; choose from {', '.join(CLASSIFIER_HEADS)}")
        self.head_kind, self.num_classes = head, num_classes
        self.encoder = build_encoder(backbone, weights)
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
    encoder: str, weights: str, num_classes: int, decoder_channels: tuple[int, ...] = UNET_DECODER_CHANNELS
) -> smp.Unet:
    model = smp.Unet(
        encoder_name=encoder,
        encoder_weights="imagenet" if weights == "imagenet" else None,
        decoder_channels=tuple(decoder_channels),
        classes=num_classes,
        activation=None,  # logits; sigmoid is applied in the loss and at prediction
    )
    if weights not in ("none", "imagenet"):
        load_encoder_weights(model.encoder, weights)
    return model


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
    with atomic_path(path) as tmp:
        torch.save({"config": plain(config), "state_dict": state, **plain(extra)}, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # weights_only: tensors and Python builtins only, never arbitrary pickled code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: checkpoint not found") from None
    except Exception as error:  # a truncated or foreign file
        raise PipelineError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {_one_line(error)})"
        ) from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise PipelineError(f"{path}: not a checkpoint of this project (no config and state_dict)")
    return checkpoint


def load_classifier(path: Path) -> tuple[DefectClassifier, dict[str, Any]]:
    checkpoint = read_checkpoint(path)
    config = checkpoint["config"]
    model = DefectClassifier(
        config["backbone"],
        "none",
        config.get("dropout", 0.0),
        config.get("head", "binary"),  # checkpoints from before the multilabel head
        config.get("num_classes", 4),
    )
    # Before smp's ClassificationHead the head was called `head` (same layers, same order).
    state = {
        ("classification_head." + key.removeprefix("head.") if key.startswith("head.") else key): value
        for key, value in checkpoint["state_dict"].items()
    }
    model.load_state_dict(state)
    return model.eval(), checkpoint


def load_unet(path: Path) -> tuple[smp.Unet, dict[str, Any]]:
    checkpoint = read_checkpoint(path)
    config = checkpoint["config"]
    decoder = tuple(config.get("decoder_channels", UNET_DECODER_CHANNELS))
    model = build_unet(config["encoder"], "none", config["num_classes"], decoder)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
