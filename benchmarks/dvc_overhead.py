"""Benchmark: what DVC costs around the stages. In a throwaway copy of the repository: a full `dvc repro`
from scratch, then a no-op `dvc repro` (nothing changed: target <= 2 s, DVC's own start-up and hashing),
then a threshold-only rerun (`threshold.objective` changed: only threshold and what follows it rerun;
target <= 5% of the full run).

    .venv/bin/python -m benchmarks.dvc_overhead [--quick]

The default data takes the whole pipeline's time (about 12 minutes on the 2-core machine of the README);
--quick runs the tests' tiny dataset instead (about a minute), where the ratio is less telling.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import Check, machine, table
from tests.dvc_repo import copy_repo, run, set_params

TINY_TRAINING = {"min_epochs": 1, "max_epochs": 1, "batch_size": 8, "input_height": 64, "input_width": 384}
QUICK_PARAMS = {
    "classifier": TINY_TRAINING,
    "segment": {**TINY_TRAINING, "crop_height": 64, "crop_width": 128, "images_per_epoch": 12},
}


def timed_repro(repo: Path) -> tuple[float, list[str]]:
    """Seconds of one `dvc repro` and the stages it ran."""
    started = time.perf_counter()
    output = run(repo, "dvc", "repro").stdout
    return time.perf_counter() - started, re.findall(r"Running stage '([^']+)'", output)


def measure(quick: bool) -> list[Check]:
    with tempfile.TemporaryDirectory() as folder:
        repo = copy_repo(Path(folder), QUICK_PARAMS if quick else None, tiny=quick)
        full_seconds, _ = timed_repro(repo)
        noop = [timed_repro(repo) for _ in range(3)]
        if any(ran for _, ran in noop):
            raise RuntimeError(f"a no-op dvc repro ran stages: {[ran for _, ran in noop]}")
        noop_seconds = statistics.median(seconds for seconds, _ in noop)
        set_params(repo, {"threshold": {"objective": "youden"}})
        rerun_seconds, rerun_stages = timed_repro(repo)
    data = "tiny dataset" if quick else "default data"
    return [
        Check(
            "no-op `dvc repro`",
            noop_seconds,
            "<=",
            2.0,
            unit=" s",
            detail=f"median of 3, {data}; absolute time on the machine above",
        ),
        Check(
            "threshold-only rerun / full run",
            100 * rerun_seconds / full_seconds,
            "<=",
            5.0,
            unit="%",
            detail=f"{rerun_seconds:.1f} s vs {full_seconds:.1f} s, {data}; reran {', '.join(rerun_stages)}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tests' tiny dataset instead of the default")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(table(measure(args.quick)))


if __name__ == "__main__":
    main()
