"""Inference backends: the trained model as a callable batch -> logits, run by PyTorch or by an optimiser.

params `<section>.inference_backend` (classifier, score_train, segment):
  eager        the nn.Module itself (the reference)
  onnxruntime  the model exported to ONNX (torch.onnx.export, TorchScript-based exporter, a dynamic batch
               axis) into a temporary file and run by ONNX Runtime: its CPU execution provider, or its CUDA
               one when the model is on a GPU and the installed runtime has it
  compile      torch.compile (inductor; minutes of compilation on a CPU, once per model and input size)

A predictor has the eager model's semantics under inference mode: same input (N, 3, H, W) float32, same
logits, any batch size, so flip TTA and model averaging in inference_ops run on it unchanged. It is built
lazily at the first batch of each input size: the export or compilation runs there, and its first images
are checked against the eager model (probabilities within AGREEMENT). When the backend is not installed,
the export or compilation fails, or the check fails, one warning line names the param and the reason and
the eager model predicts instead: a backend can make prediction faster, never make it fail.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

BackendName = Literal["eager", "onnxruntime", "compile"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
ONNX_OPSET = 17  # the TorchScript exporter of torch 2.14 writes 7-20; 17 is well covered by ONNX Runtime
AGREEMENT = 1e-3  # max |probability - eager probability| accepted on the first images of a backend
CHECKED_IMAGES = 2  # images of the first batch run through the eager model for that check
Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InferenceBackend:
    """Which backend predicts, and the param that chose it (named by the fallback warning)."""

    name: str = "eager"
    key: str = "inference_backend"

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"{self.key} must be one of {', '.join(BACKENDS)}, got {self.name!r}")


EAGER = InferenceBackend()


class BackendUnavailable(Exception):
    """The backend cannot run this model here (not installed, no CUDA provider ...): a reason to fall back."""


def predictors(models: list[nn.Module], backend: InferenceBackend = EAGER) -> list[Predictor]:
    """One predictor per model (in eval mode, on its device): the models themselves for eager."""
    return [predictor(model, backend) for model in models]


def predictor(model: nn.Module, backend: InferenceBackend = EAGER) -> Predictor:
    if backend.name == "eager":
        return model
    # A model predicted twice (the segment stage's holdout then test images, score_train's fold then
    # all-model rows) is exported or compiled once: cached while its weights stay the same tensors.
    cache_key = (id(model), backend)
    cached = _CACHE.get(cache_key)
    if cached is not None and cached.model is model and cached.fingerprint == _fingerprint(model):
        _CACHE.move_to_end(cache_key)
        return cached
    made = _LazyPredictor(model, backend)
    _CACHE[cache_key] = made
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return made


_CACHE_SIZE = 8  # fold models of one stage; a bound, so that no model is kept alive for long
_CACHE: OrderedDict[tuple[int, InferenceBackend], _LazyPredictor] = OrderedDict()


def clear_cache() -> None:
    _CACHE.clear()


def _fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Storage and version counter of every weight: changes when a weight is replaced or updated in place."""
    return tuple((tensor.data_ptr(), tensor._version) for tensor in model.state_dict().values())


class _LazyPredictor:
    """Builds the backend's runner at the first batch of each input shape; eager after a failure."""

    def __init__(self, model: nn.Module, backend: InferenceBackend) -> None:
        self.model, self.backend = model, backend
        self.fingerprint = _fingerprint(model)
        self.runners: dict[tuple[Any, ...], Predictor] = {}
        self.failed = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.model(images)
        signature = (tuple(images.shape[1:]), images.dtype, images.device)
        runner = self.runners.get(signature)
        if runner is not None:
            return runner(images)
        try:
            runner = _BUILDERS[self.backend.name](self.model, images)
            output = runner(images)
            _check_agreement(self.model, images, output)
        except Exception as error:  # any export, compile or runtime failure: predict with eager instead
            self.failed = True
            message = f"{self.backend.key}: {self.backend.name} {_reason(error)}; predicting with eager"
            print(f"warning: {message}", file=sys.stderr, flush=True)
            return self.model(images)
        self.runners[signature] = runner
        return output


def _reason(error: BaseException) -> str:
    """The first line of an error's message, shortened: the warning stays one line."""
    if isinstance(error, BackendUnavailable):
        return str(error)
    lines = str(error).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"failed ({type(error).__name__}: {text})" if text else f"failed ({type(error).__name__})"


@contextlib.contextmanager
def _plain_torch(device: torch.device) -> Iterator[None]:
    """Outside inference mode and autocast, gradients off: for export, and the float32 reference."""
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        torch.autocast(device.type, enabled=False),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        yield


def _check_agreement(model: nn.Module, images: torch.Tensor, output: torch.Tensor) -> None:
    """The backend's first probabilities against the float32 eager model's, on the first images."""
    head = images[:CHECKED_IMAGES]
    with _plain_torch(images.device):
        reference = torch.sigmoid(model(head.clone()).float())
    got = torch.sigmoid(output[: len(head)].float())
    if got.shape != reference.shape:
        raise BackendUnavailable(f"gave outputs of shape {tuple(got.shape)}, eager {tuple(reference.shape)}")
    difference = float((got - reference).abs().max()) if got.numel() else 0.0
    if not difference <= AGREEMENT:  # NaN fails too
        raise BackendUnavailable(
            f"disagrees with eager (max probability difference {difference:.2g} > {AGREEMENT:g})"
        )


# ------------------------------------------------------------------------------------------ ONNX Runtime


def _onnx_runner(model: nn.Module, images: torch.Tensor) -> Predictor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("is not installed (pip install onnxruntime onnx)") from None
    device = images.device
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("has no CUDA execution provider here (a CPU-only build)")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *providers]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as the eager model uses
    options.inter_op_num_threads = 1
    # Idle runtime threads would otherwise spin between batches, taking the cores the image decoding,
    # TTA flips and post-processing of the same process run on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory(prefix="onnx-") as folder:
        path = Path(folder) / "model.onnx"
        with _plain_torch(device):
            torch.onnx.export(
                model,
                (torch.zeros((1, *images.shape[1:]), dtype=torch.float32, device=device),),
                str(path),
                dynamo=False,  # the torch.export-based exporter needs onnxscript, not a dependency here
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        session = ort.InferenceSession(str(path), options, providers=providers)
    return _OnnxRunner(session, device)


class _OnnxRunner:
    """ONNX Runtime on torch tensors: input and output bound in place (IO binding), on CPU or CUDA."""

    def __init__(self, session: Any, device: torch.device) -> None:
        self.session, self.device = session, device
        self.output_tail: tuple[int, ...] | None = None
        self.device_id = device.index or 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().to(torch.float32).contiguous()
        if self.output_tail is None:  # the first call learns the output's shape the plain way
            logits = self.session.run(None, {"images": images.cpu().numpy()})[0]
            self.output_tail = tuple(logits.shape[1:])
            return torch.from_numpy(logits).to(self.device)
        output = torch.empty((len(images), *self.output_tail), dtype=torch.float32, device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the input is written on torch's stream
        binding = self.session.io_binding()
        binding.bind_input(
            "images", self.device.type, self.device_id, np.float32, list(images.shape), images.data_ptr()
        )
        binding.bind_output(
            "logits", self.device.type, self.device_id, np.float32, list(output.shape), output.data_ptr()
        )
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return output


# ------------------------------------------------------------------------------------------ torch.compile


COMPILER = "inductor"  # torch.compile's backend (the tests swap in dynamo's fast "eager" one)


def _compile_runner(model: nn.Module, images: torch.Tensor) -> Predictor:
    return _CompiledRunner(torch.compile(model, dynamic=False, backend=COMPILER), len(images))


class _CompiledRunner:
    """A model compiled for one batch size (the first batch's): a smaller batch is padded to it and a
    larger one run in chunks, so the last, partial batch does not cost a second compilation. Padding
    does not change the real images' outputs (an eval-mode model treats each image on its own)."""

    def __init__(self, compiled: Predictor, batch_size: int) -> None:
        self.compiled, self.batch_size = compiled, batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, size = len(images), self.batch_size
        if n == size:
            return self.compiled(images)
        outputs = []
        for start in range(0, n, size):
            chunk = images[start : start + size]
            padding = size - len(chunk)
            if padding:
                chunk = torch.cat([chunk, chunk[-1:].expand(padding, *chunk.shape[1:])])
            outputs.append(self.compiled(chunk)[: size - padding])
        return torch.cat(outputs)


_BUILDERS: dict[str, Callable[[nn.Module, torch.Tensor], Predictor]] = {
    "onnxruntime": _onnx_runner,
    "compile": _compile_runner,
}
