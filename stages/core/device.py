"""All device logic in one place: which device, mixed precision, memory format, pinned memory, peak
memory, and the processes sharing the work (stages.core.distributed: one, or torchrun's).

CUDA paths only switch on when a CUDA device is in use; on CPU every helper is a no-op, so the same
training code runs on a laptop and on a GPU. On CUDA: bfloat16 autocast where the GPU supports it
(Ampere and later; float32's exponent range, so no gradient scaling), float16 with the grad scaler
otherwise; channels_last (NHWC, faster convolutions on tensor cores); cudnn.benchmark (fixed input
sizes); pinned host memory for the loaders with non_blocking copies (overlap transfer and compute).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stages.core.distributed import SINGLE, Group, group_from_env, join
from stages.core.errors import PipelineError


def autocast_dtype(mixed_precision: bool, cuda: bool, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype, or None for float32: mixed precision only on CUDA; bfloat16 where the GPU
    has it (same exponent range as float32: no overflow, no loss scaling), else float16."""
    if not (mixed_precision and cuda):
        return None
    return torch.bfloat16 if bf16_supported else torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 do not need it."""
    return dtype == torch.float16


def pin_memory(device: torch.device) -> bool:
    """Page-locked loader batches: asynchronous (non_blocking) host-to-GPU copies. Pointless on CPU."""
    return device.type == "cuda"


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: bool  # autocast, CUDA only
    channels_last: bool  # NHWC memory format, faster convolutions on tensor cores
    bf16: bool = False  # autocast in bfloat16 (the GPU supports it) rather than float16
    group: Group = SINGLE  # the processes running the stage together (torchrun), one by default

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.amp, self.is_cuda, self.bf16)

    @property
    def pin_memory(self) -> bool:
        return pin_memory(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = self.amp_dtype
        return torch.autocast(device_type="cuda", dtype=dtype) if dtype else contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.amp_dtype))

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        # non_blocking: with pinned loader memory the copy overlaps the previous batch's compute.
        images = images.to(self.device, non_blocking=self.is_cuda)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def tensor(self, values: torch.Tensor) -> torch.Tensor:
        """Any other tensor (targets, weights) to the device, asynchronously from pinned memory."""
        return values.to(self.device, non_blocking=self.is_cuda)

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float:
        """Peak GPU memory on CUDA, else the process's peak resident memory."""
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def resolve_runtime(device: str, mixed_precision: bool, key: str = "device") -> Runtime:
    """`device`: auto (CUDA when present, else CPU), cpu, cuda or cuda:N. Under torchrun with several
    processes, `cuda` (and auto on a GPU machine) is cuda:LOCAL_RANK, each process its own GPU, and the
    process group is joined here (NCCL on CUDA, gloo on CPU)."""
    group = group_from_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise PipelineError(f"params: {key} must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"params: {key} is {device!r} but no CUDA device is available; use auto or cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise PipelineError(f"params: {key} must be auto, cpu, cuda or cuda:N, got {device!r}")
    if resolved.type == "cuda" and group.local_world > 1:
        resolved = _local_gpu(resolved, group, device, key)
    if resolved.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    cuda = resolved.type == "cuda"
    amp = mixed_precision and cuda
    return Runtime(
        device=resolved,
        amp=amp,
        channels_last=cuda,
        bf16=amp and torch.cuda.is_bf16_supported(),
        group=join(group, resolved),
    )


def _local_gpu(resolved: torch.device, group: Group, device: str, key: str) -> torch.device:
    """cuda:LOCAL_RANK for one of several processes on a node: one GPU each."""
    if resolved.index is not None:
        raise PipelineError(
            f"params: {key} is {device!r}, one GPU for the {group.local_world} processes of this node; use "
            "cuda or auto (process k takes cuda:k)"
        )
    count = torch.cuda.device_count()
    if group.local_rank >= count:
        raise PipelineError(
            f"params: {key} is {device!r} for {group.local_world} processes on this node (nproc_per_node), "
            f"but only {count} CUDA device(s) are visible: one process per GPU"
        )
    return torch.device("cuda", group.local_rank)


@contextlib.contextmanager
def inference(runtime: Runtime) -> Iterator[None]:
    with torch.inference_mode(), runtime.autocast():
        yield
