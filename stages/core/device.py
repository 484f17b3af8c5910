"""All device logic in one place: which device, mixed precision, memory format, peak memory, and the
processes sharing the work (stages.core.distributed: one, or torchrun's).

CUDA paths (AMP, channels_last) only switch on when a CUDA device is in use; on CPU every helper is
a no-op, so the same training code runs on a laptop and on a GPU.
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


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: bool  # float16 autocast + gradient scaling, CUDA only
    channels_last: bool  # NHWC memory format, faster convolutions on tensor cores
    group: Group = SINGLE  # the processes running the stage together (torchrun), one by default

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.amp)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=self.is_cuda)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

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
    return Runtime(
        device=resolved, amp=mixed_precision and cuda, channels_last=cuda, group=join(group, resolved)
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
