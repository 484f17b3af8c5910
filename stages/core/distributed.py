"""Several processes for one stage (torchrun and DistributedDataParallel); all process-group logic lives here.

A stage whose `nproc_per_node` is above 1 relaunches itself under torchrun (run_under_torchrun). Each
process (a rank) then trains on its strided share of every epoch's draws with a DDP-wrapped model
(gradients are averaged, so every rank holds the same weights), predicts its strided share of the images
(rank r takes images r, r + W, r + 2W, ...), and rank 0 gathers the results by image id and writes every
output. With one process (the default) every Group method is a no-op and nothing here is initialised.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from stages.core.cli import RANK_ERRORS_ENV
from stages.core.errors import PipelineError

T = TypeVar("T")
# torchrun sets these in every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Group:
    """The processes running one stage together, seen from one of them; Group() is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the process's index on its node: its GPU is cuda:local_rank
    local_world: int = 1  # processes on this node
    device: str = "cpu"  # where collectives put their tensors: this process's GPU with NCCL

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, saves and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, table: pd.DataFrame) -> pd.DataFrame:
        """This rank's rows of `table`: rows r, r + W, ... (no padding: the ranks' shards differ by at most
        one row, and together hold every row exactly once)."""
        return table.iloc[strided(len(table), self.rank, self.world)] if self.distributed else table

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64), the same on every rank."""
        if not self.distributed:
            return [float(value) for value in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_gather(self, value: T) -> list[T]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def gather(self, value: T) -> list[T] | None:
        """Every rank's `value` in rank order on rank 0; None on the other ranks."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.world if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (the others pass anything, None say)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: DDP-wrapped across the ranks (it starts from rank 0's weights and averages
        the gradients), or the model itself in one process."""
        if not self.distributed:
            return model
        device = torch.device(self.device)
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP broadcasts them before each
        forward pass, so after an epoch's last pass each rank still holds its own update."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def check_identical(self, state: Mapping[str, torch.Tensor], name: str) -> str:
        """The state's digest, after checking that every rank holds exactly the same one (DDP keeps the
        replicas in step; a difference is a bug, better found here than in the outputs)."""
        digests = self.all_gather(state_digest(state))
        if len(set(digests)) > 1:  # the same line on every rank: the launcher shows it once
            raise PipelineError(
                f"{name}: the {self.world} processes ended with different weights (sha256 by rank: "
                f"{', '.join(digest[:12] for digest in digests)})"
            )
        return digests[self.rank]

    def in_order(
        self, local: Iterable[tuple[str, T]], image_ids: Sequence[str], chunk: int
    ) -> Iterator[tuple[str, T]]:
        """Results of strided shards gathered in the order of `image_ids`, chunk by chunk so that memory
        stays flat: `local` yields (ImageId, result) for this rank's shard of `image_ids`, in shard order.
        Rank 0 yields every image's (ImageId, result) in order; the other ranks yield nothing (but must
        iterate to the end: each chunk is a collective). In one process `local` passes straight through."""
        if not self.distributed:
            yield from local
            return
        local = iter(local)
        for ids, counts in chunks(image_ids, self.world, chunk):
            parts = self.gather(list(itertools.islice(local, counts[self.rank])))
            if parts is not None:
                yield from zip(ids, ordered_by_id(ids, parts), strict=True)


SINGLE = Group()


def chunks(image_ids: Sequence[str], world: int, chunk: int) -> Iterator[tuple[Sequence[str], list[int]]]:
    """Consecutive chunks of `chunk` images per rank, each with how many of its images each rank holds.
    A chunk's length is a multiple of `world` (but the last's), so every chunk starts at a rank-0 image:
    the images rank r holds in successive chunks are the successive images of its strided shard."""
    step = max(chunk, 1) * world
    for start in range(0, len(image_ids), step):
        ids = image_ids[start : start + step]
        yield ids, [len(strided(len(ids), rank, world)) for rank in range(world)]


def strided(n: int, rank: int, world: int) -> np.ndarray:
    """Positions of rank `rank`'s shard of n items: rank, rank + world, ... (disjoint, complete, unpadded)."""
    return np.arange(rank, n, world)


def interleave(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The inverse of strided shards: parts[r] holds the items at positions r, r + W, ... of the whole."""
    whole = np.empty((sum(len(part) for part in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for rank, part in enumerate(parts):
        whole[rank :: len(parts)] = part
    return whole


def ordered_by_id(image_ids: Sequence[str], parts: Iterable[Iterable[tuple[str, T]]]) -> list[T]:
    """The results of `parts` (each rank's (ImageId, result) pairs) in the order of `image_ids`; an image
    missing, produced twice or not asked for is an error (the ranks disagree about the table)."""
    found: dict[str, T] = {}
    for part in parts:
        for image_id, result in part:
            if image_id in found:
                raise PipelineError(f"image {image_id}: predicted by two processes")
            found[image_id] = result
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing or len(found) != len(image_ids):
        extra = sorted(set(found) - set(image_ids))
        raise PipelineError(
            f"the processes' shards do not cover the images: missing {missing[:3]}, unexpected {extra[:3]} "
            "(do all nodes see the same data/prepared?)"
        )
    return [found[image_id] for image_id in image_ids]


class RankSlice(Sampler[int]):
    """A shuffling sampler shared by the ranks: each pass draws the epoch's whole index list once (every
    rank holds the same seeded generator, so the same list) and yields this rank's strided slice of it,
    so the ranks see disjoint parts of the epoch's draws (images_per_epoch and the class-balanced weights
    hold for the epoch as a whole). The list is cut to a multiple of the ranks (at most world - 1 draws
    fewer): DDP needs the same number of batches on every rank, or a rank waits on a gradient sync the
    others never make."""

    def __init__(self, sampler: Sampler[int], rank: int, world: int) -> None:
        self.sampler, self.rank, self.world = sampler, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_slice(list(self.sampler), self.rank, self.world))

    def __len__(self) -> int:
        return len(self.sampler) // self.world  # type: ignore[arg-type]


def epoch_slice(draws: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s share of an epoch's draws: every world-th draw from the rank-th, of the first
    len - len % world draws (so that every rank has as many)."""
    usable = len(draws) - len(draws) % world
    return list(draws[rank:usable:world])


def augment_seed(seed: int, rank: int) -> int:
    """The seed of a rank's augmentations: rank 0 keeps the stage's (a single process's), the others get
    their own streams, so that the ranks do not flip and crop their different images in lockstep."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- the processes of a stage -------------------------------------------------------------------------


def under_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return all(name in env for name in TORCHRUN_ENV)


def group_from_env(env: Mapping[str, str] = os.environ) -> Group:
    """This process's place among torchrun's processes (a single process outside torchrun)."""
    if not under_torchrun(env):
        return SINGLE
    values = {}
    for name in (*TORCHRUN_ENV, "LOCAL_WORLD_SIZE"):
        text = env.get(name, env["WORLD_SIZE"])  # LOCAL_WORLD_SIZE: older launchers omit it
        try:
            values[name] = int(text)
        except ValueError:
            raise PipelineError(f"environment: {name} must be an integer, got {text!r}") from None
    return Group(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])


def join(group: Group, device: torch.device) -> Group:
    """Initialise the process group of torchrun's processes (NCCL for a CUDA device, else gloo) and
    return `group` with the device its collectives use; one process: `group` as it is."""
    if not group.distributed:
        return group
    _die_with_parent()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        atexit.register(_leave)
    return replace(group, device=str(device) if cuda else "cpu")


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _die_with_parent() -> None:
    """Linux: end this process when its launcher dies (a `kill -9` of `dvc repro`), instead of training on
    as an orphan; torchrun starts each process in a session of its own, out of reach of the group kill."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the call
        os._exit(1)


def run_under_torchrun(module: str, nproc: int, key: str) -> None:
    """The start of a stage's main(). With `nproc` > 1 outside torchrun, run `python -m module` in `nproc`
    processes under torchrun and exit with their exit code (this never returns); otherwise return. Under
    torchrun already (several nodes, say), the stage runs on the processes torchrun started."""
    if under_torchrun():
        group = group_from_env()
        if group.local_world != nproc and group.is_main:
            print(
                f"warning: params: {key} is {nproc}, but torchrun started {group.local_world} processes on "
                f"this node; the stage runs on all {group.world} of them",
                file=sys.stderr,
            )
        if group.distributed and group.is_main:
            print(f"{module}: {group.world} processes, rank 0 (writes the outputs) on {socket.gethostname()}")
        return
    if nproc > 1:
        sys.exit(launch(module, nproc))


def launch(module: str, nproc: int) -> int:
    """Run `python -m module` in `nproc` processes on this machine, as `torchrun --standalone
    --nproc_per_node nproc -m module` does (its own argument parser and launcher, called here rather than
    in a subprocess so that its failure report is ours to make); return the exit code. A failing rank's
    one-line error is shown once, without torchrun's tracebacks; Ctrl-C stops every process."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    errors = Path(tempfile.mkdtemp(prefix="stages-ranks-"))
    saved = {name: os.environ.get(name) for name in (RANK_ERRORS_ENV, "OMP_NUM_THREADS")}
    os.environ[RANK_ERRORS_ENV] = str(errors)
    # torchrun's default is 1 thread per process (with a warning); the cores shared out is as safe and
    # faster on a CPU-only machine.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_count() // nproc)))
    levels = _quiet_torch_logs()
    try:
        torchrun(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", module]))
        return 0
    except ChildFailedError as failure:
        rank, root = failure.get_first_failure()
        cause = f"rank {rank} " + (
            f"was killed by {root.signal_name()}" if root.exitcode < 0 else f"exited with {root.exitcode}"
        )
        print(failure_report(read_rank_errors(errors), f"error: {module}: {cause}"), file=sys.stderr)
        return root.exitcode if root.exitcode > 0 else 1
    except (KeyboardInterrupt, SignalException) as stop:  # torchrun has stopped its processes
        name = stop.sigval.name if isinstance(stop, SignalException) else "SIGINT"
        print(f"error: {module}: interrupted ({name}); every process stopped", file=sys.stderr)
        return 130
    except Exception as error:  # torchrun could not start (no free port, say): one line, as any error
        reason = " ".join(str(error).split())[:300]
        raise PipelineError(f"{module}: torchrun could not start {nproc} processes ({reason})") from None
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(errors, ignore_errors=True)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _quiet_torch_logs() -> dict[logging.Logger, int]:
    """torchrun's own log lines (its failure report, the signals it sends) off: the stage reports
    failures itself. Returns the previous levels."""
    loggers = [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch")
    ]
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    return levels


def read_rank_errors(folder: Path) -> list[dict[str, Any]]:
    """The errors the ranks recorded (stages.core.cli.run under the launcher), oldest first."""
    records = []
    for path in sorted(folder.glob("rank_*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # killed while writing it
    return sorted(records, key=lambda record: record["time"])


def failure_report(records: Sequence[Mapping[str, Any]], fallback: str) -> str:
    """What a failed launch shows: each distinct error line of the ranks once (in the order they failed);
    without one, the first rank's traceback (the others then failed on the lost connection to it); without
    any record (a process killed), `fallback`."""
    lines = list(dict.fromkeys(record["text"] for record in records if record["kind"] == "error"))
    if lines:
        return "\n".join(lines)
    crashes = [record for record in records if record["kind"] == "crash"]
    if crashes:
        first = crashes[0]
        return f"{first['text'].rstrip()}\n(rank {first['rank']}; the other processes stopped with it)"
    return fallback
