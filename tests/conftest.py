"""The whole DAG, run once per test session through `dvc repro` on a tiny synthetic dataset; and no network
for the tests (connections to other machines fail at once)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.dvc_repo import copy_repo, run

# One epoch each, small inputs: DenseNet121 (the default backbone) as two fold models, one U-Net trained on
# 12 random crops.
TINY_TRAINING = {"min_epochs": 1, "max_epochs": 1, "batch_size": 8, "input_height": 64, "input_width": 384}
DAG_PARAMS = {
    "classifier": {**TINY_TRAINING, "folds": 2},
    "segment": {
        **TINY_TRAINING,
        "folds": 1,
        "crop_height": 64,
        "crop_width": 128,
        "images_per_epoch": 12,
        "min_areas_px": [0, 200, 1000],
        "plot_images": 2,
    },
    # The segment stage's min-area grid: the ungated rules then equal the raw submission's.
    "postprocess": {"min_areas_px": [0, 200, 1000]},
    # Fewer pictures than errors on some galleries: the metrics count every error, the folders the first.
    "inspect": {"gallery_images": 2},
}


@pytest.fixture(scope="session")
def dag_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("dag"), DAG_PARAMS)
    run(repo, "dvc", "repro")
    return repo


def _is_local(address: object) -> bool:
    """Loopback and Unix sockets stay allowed (torch's gloo rendezvous uses them); nothing else."""
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = str(address[0]) if isinstance(address, tuple) and address else ""
    return host in ("localhost", "::1") or host.startswith("127.")


class NetworkBlocked(OSError):
    """Raised by any connection the test suite tries to open to another machine."""


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_local(address):
        raise NetworkBlocked(f"the tests never use the network (tried {address!r})")
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_local(address):
        raise NetworkBlocked(f"the tests never use the network (tried {address!r})")
    return _connect_ex(self, address)


def pytest_configure(config: pytest.Config) -> None:
    # The whole session, in this process: every download attempt (smp's imagenet weights, say) fails fast.
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
