"""A stand-in stage for the launcher's failure test in tests/test_ddp.py, light to start (no model code):
under torchrun, rank 1 stops with a one-line error while rank 0 waits for it in a collective."""

from __future__ import annotations

from stages.core import cli
from stages.core.device import resolve_runtime
from stages.core.errors import PipelineError


def main() -> None:
    group = resolve_runtime("cpu", False).group  # joins the gloo process group
    if group.rank == 1:
        raise PipelineError("data/synthetic/train_images/0a1b2c3d4.jpg: unreadable image")
    group.barrier()  # rank 0 loses its peer here


if __name__ == "__main__":
    cli.run(main)
