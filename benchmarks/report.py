"""What every benchmark of `python -m benchmarks` returns: checks of a measured figure against a target.

Speed targets are ratios against a reference measured side by side in the same run (machines differ and
are noisy); the few absolute targets (a no-op `dvc repro` in seconds) say so in their unit.
"""

from __future__ import annotations

import operator
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch

_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Check:
    name: str  # what is measured, e.g. "RLE decode vs numpy reference"
    value: float  # the measured figure (a ratio unless `unit` says otherwise)
    op: str  # ">=" | "<="
    target: float
    unit: str = "x"  # "x" for ratios, "s", "%" ...
    detail: str = ""  # the absolute figures behind the ratio, e.g. "0.10 vs 0.12 ms per mask"

    def __post_init__(self) -> None:
        if self.op not in _COMPARE:
            raise ValueError(f"op must be one of {sorted(_COMPARE)}, got {self.op!r}")

    @property
    def passed(self) -> bool:
        return _COMPARE[self.op](self.value, self.target)

    def row(self) -> str:
        verdict = "ok" if self.passed else "**MISSED**"
        return (
            f"| {self.name} | {self.value:.3g}{self.unit} | {self.op} {self.target:g}{self.unit} | "
            f"{verdict} | {self.detail} |"
        )


def machine() -> str:
    """One line naming the machine the absolute figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    # Other jobs on a shared machine skew every figure: the load when the run started says how much.
    load = "/".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; load average {load}"
    )


def table(checks: list[Check]) -> str:
    lines = ["| measured | value | target | | detail |", "|---|---|---|---|---|"]
    return "\n".join([*lines, *(check.row() for check in checks)])
