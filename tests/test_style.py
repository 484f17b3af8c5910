"""The code base stays ruff clean (lint and format), as CI checks on every submission."""

from __future__ import annotations

import subprocess
import sys

from tests.dvc_repo import REPO


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_check() -> None:
    result = ruff("check", "stages", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = ruff("format", "--check", "stages", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
