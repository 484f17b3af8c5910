"""The test suite runs without the network: connections to other machines fail at once (conftest.py)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests.conftest import NetworkBlocked


def test_a_connection_to_another_machine_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(NetworkBlocked):
        sock.connect(("93.184.216.34", 80))


def test_a_download_fails_at_once() -> None:
    with pytest.raises(OSError):  # urllib wraps the refusal in URLError, an OSError
        urllib.request.urlopen("http://93.184.216.34/weights.pth", timeout=5)


def test_loopback_stays_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())
