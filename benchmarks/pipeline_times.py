"""Benchmark: wall time of every stage of the default pipeline, from scratch, in a throwaway copy.

    .venv/bin/python -m benchmarks.pipeline_times [--set section.key=value ...]

Runs `dvc repro --single-item <stage>` for each stage in DAG order (so each time is that stage alone,
DVC's own overhead included) and prints a table plus the end-to-end total and the headline metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.dvc_repo import copy_repo, run

STAGES = ("synthesize", "prepare", "classifier", "score_train", "threshold", "segment", "postprocess")


def parse_override(text: str) -> tuple[str, str, Any]:
    key, _, value = text.partition("=")
    section, _, name = key.partition(".")
    if not (section and name and value):
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    return section, name, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=parse_override, action="append", default=[], help="section.key=value")
    args = parser.parse_args()
    overrides: dict[str, dict[str, Any]] = {}
    for section, name, value in args.set:
        overrides.setdefault(section, {})[name] = value
    with tempfile.TemporaryDirectory() as folder:
        # No tiny-dataset overrides here: the defaults of params.yaml, plus --set.
        repo = copy_repo(Path(folder), overrides, tiny=False)
        times = {}
        for stage in STAGES:
            started = time.perf_counter()
            run(repo, "dvc", "repro", "--single-item", stage)
            times[stage] = time.perf_counter() - started
        evaluation = json.loads((repo / "data/eval.json").read_text())
        threshold = json.loads((repo / "data/threshold.json").read_text())
        classifier = json.loads((repo / "data/classifier_metrics.json").read_text())
        segment = json.loads((repo / "data/segment_metrics.json").read_text())
    print("| stage | wall time (s) |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| **total** | **{sum(times.values()):.1f}** |")
    print(
        json.dumps({"eval": evaluation, "threshold": threshold, "classifier": classifier, "segment": segment})
    )


if __name__ == "__main__":
    main()
