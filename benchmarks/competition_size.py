"""Benchmark: the data path at the competition's size (12,568 train and 5,506 test images of 256x1600).

    .venv/bin/python -m benchmarks.competition_size [--train 12568 --test 5506] [--small] [--workdir /tmp]

In a throwaway copy of the repository (tests/dvc_repo.py's copy_repo), `synthesize` writes the full
dataset; a second copy reads a subset of it (the first 1,000 train and 500 test images, hard links).
Each stage then runs in both copies, each run in a fresh measuring process (peak RSS from
getrusage(RUSAGE_CHILDREN) of that process, which saw only the stage), and the table gives seconds per
1,000 images and peak RSS at both sizes:

- prepare: indexes and validates every train and test image and RLE (images = train + test);
- score_train: a tiny classifier (mobilenet_v2 at 32 x 192, one short epoch, trained once on the
  subset) scores every train image (images = train);
- segment prediction: a tiny U-Net (mobilenet_v2, decoder 16-16-8-8-8, at 32 x 192, no TTA, one short
  epoch, trained once on the subset) predicts every test image: stages.segment.predict_test, the test
  candidates of all 7 thresholds and the raw submission, at the original 256 x 1600 (images = test). Its
  memory must stay flat: the check is peak RSS at the full count over peak RSS at 500 images, <= 1.1.

Models are trained once on the subset and copied: the measured stages are inference and data handling,
not training. Every stage runs with one torch thread (OMP_NUM_THREADS=1, see THREADS). Run by hand (not
in `python -m benchmarks`): here, on 2 cores shared with other jobs, the full run took 27 minutes (16 of
them synthesizing 1.5 GB of JPEGs into the work folder, removed at the end); see the README.
`--small` is a smoke run at a tenth of the counts (subset 100 train and 50 test images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.report import Check, machine, table
from tests.dvc_repo import copy_repo, environment

MODULE = "benchmarks.competition_size"
FULL = (12568, 5506)  # the competition's train and test image counts
SUBSET = (1000, 500)
JPEG_BYTES = 200_000  # a generous size of one synthetic 256x1600 JPEG, for the disk check
# Both copies: tiny models at small inputs, trained on few images (the data path is what is measured).
OVERRIDES: dict[str, dict[str, Any]] = {
    "synthesize": {"workers": 2},
    "classifier": {
        "backbone": "mobilenet_v2",
        "input_height": 32,
        "input_width": 192,
        "min_epochs": 1,
        "max_epochs": 1,
        "patience": 1,
        "images_per_epoch": 64,
        "folds": 1,
        "num_workers": 0,
    },
    "score_train": {"batch_size": 32, "num_workers": 0},
    "segment": {
        "backbone": "mobilenet_v2",
        "decoder_channels": [16, 16, 8, 8, 8],
        "input_height": 32,
        "input_width": 192,
        "crop_height": None,
        "crop_width": None,
        "min_epochs": 1,
        "max_epochs": 1,
        "patience": 1,
        "images_per_epoch": 64,
        "folds": 1,
        "tta": "none",
        "plot_images": 0,
        "num_workers": 0,
    },
}
# One torch (OpenMP) thread per stage: on this 2-core machine shared with other jobs, two threads stall each
# other at every barrier whenever one is descheduled (a U-Net batch took 1-6 s instead of 0.23 s).
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Runs a command as its only child and prints that child's peak RSS (KiB on Linux) and wall time: a fresh
# process per measurement, since RUSAGE_CHILDREN keeps the largest child a process ever waited for.
MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "seconds": seconds, "peak_kib": peak}))
"""


@dataclass(frozen=True)
class Run:
    stage: str
    where: str  # "subset" | "full": which copy of the repository it ran in
    images: int
    seconds: float
    peak_mb: float

    @property
    def per_1000(self) -> float:
        return self.seconds / self.images * 1000


def measured(repo: Path, stage: str, images: int, *command: str) -> Run:
    """Run `command` in `repo` under a fresh measuring process; its output goes to a log file."""
    log = repo / f"{stage.replace(' ', '_')}.log"
    with log.open("w") as handle:
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, *command],
            cwd=repo,
            env={**environment(), **THREADS},
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            check=False,
        )
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {"code": result.returncode}
    if report["code"] != 0 or result.returncode != 0:
        raise RuntimeError(f"{stage} failed in {repo}:\n{log.read_text()[-4000:]}")
    run = Run(stage, repo.name, images, report["seconds"], report["peak_kib"] / 1024)
    print(
        f"  {stage} ({repo.name}): {images} images, {run.seconds:.1f} s, peak RSS {run.peak_mb:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return run


def stage(repo: Path, name: str, images: int) -> Run:
    return measured(repo, name, images, sys.executable, "-m", f"stages.{name}")


def subset_root(source: Path, target: Path, n_train: int, n_test: int) -> None:
    """A Kaggle-layout folder with the first n_train train images (by name) and the first n_test test
    images (in the sample submission's order) of `source`, hard-linked, and their CSV rows."""
    train = pd.read_csv(source / "train.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(source / "sample_submission.csv", dtype=str, keep_default_na=False)
    train_ids = sorted(path.name for path in (source / "train_images").iterdir())[:n_train]
    test_ids = list(dict.fromkeys(sample["ImageId"]))[:n_test]
    for folder, names in (("train_images", train_ids), ("test_images", test_ids)):
        (target / folder).mkdir(parents=True)
        for name in names:
            os.link(source / folder / name, target / folder / name)
    train[train["ImageId"].isin(set(train_ids))].to_csv(target / "train.csv", index=False)
    sample[sample["ImageId"].isin(set(test_ids))].to_csv(target / "sample_submission.csv", index=False)


def predict_test() -> None:
    """Segment's test prediction alone, with the U-Net(s) in models/unet and their rules (run in a copy)."""
    from stages.core.device import resolve_runtime
    from stages.core.models import load_unet
    from stages.core.params import load_section
    from stages.core.postprocess import ClassRule
    from stages.core.prepared import load_prepared
    from stages.segment import MODEL_DIR, SegmentParams
    from stages.segment import predict_test as predict

    params = load_section(SegmentParams, "segment")
    prepared = load_prepared()
    runtime = resolve_runtime(params.device, params.mixed_precision, "segment.device")
    loaded = [load_unet(path) for path in sorted(MODEL_DIR.glob("fold_*.pt"))]
    rules = [ClassRule(**rule) for rule in loaded[0][1]["rules"]]
    predict(params, prepared, runtime, [model for model, _ in loaded], rules)


def copy_models(source: Path, target: Path, folder: str) -> None:
    shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)


def run_all(
    n_train: int, n_test: int, subset: tuple[int, int], workdir: Path
) -> tuple[list[Run], float, float]:
    """Every measurement, in a temporary folder under workdir; returns the runs, the full dataset's size on
    disk (GB) and the total seconds."""
    needed = (n_train + n_test) * JPEG_BYTES * 1.2
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise SystemExit(
            f"{workdir}: {free / 1e9:.1f} GB free, the dataset needs about {needed / 1e9:.1f} GB"
        )
    started = time.perf_counter()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="competition_size_", dir=workdir) as folder:
        work = Path(folder)
        full_params = {
            **OVERRIDES,
            "synthesize": {**OVERRIDES["synthesize"], "n_train": n_train, "n_test": n_test},
        }
        full = copy_repo(work / "full", full_params, tiny=False)
        runs.append(stage(full, "synthesize", n_train + n_test))
        data = full / "data/synthetic"
        gigabytes = sum(path.stat().st_size for path in data.rglob("*") if path.is_file()) / 1e9
        subset_root(full / "data/synthetic", work / "subset_data", *subset)
        small = copy_repo(
            work / "subset", {**full_params, "data": {"root": str(work / "subset_data")}}, tiny=False
        )
        for repo, count in ((small, sum(subset)), (full, n_train + n_test)):
            runs.append(stage(repo, "prepare", count))
        # The tiny models, trained once on the subset (timed for the record, not compared).
        runs.append(stage(small, "classifier", subset[0]))
        copy_models(small, full, "models/classifier")
        for repo, count in ((small, subset[0]), (full, n_train)):
            runs.append(stage(repo, "score_train", count))
        runs.append(stage(small, "segment", subset[0]))
        copy_models(small, full, "models/unet")
        for repo, count in ((small, subset[1]), (full, n_test)):
            runs.append(
                measured(repo, "segment prediction", count, sys.executable, "-m", MODULE, "--predict-test")
            )
    return runs, gigabytes, time.perf_counter() - started


def checks(runs: list[Run]) -> list[Check]:
    small, full = (run for run in runs if run.stage == "segment prediction")
    return [
        Check(
            f"segment prediction peak RSS, {full.images} vs {small.images} test images",
            full.peak_mb / small.peak_mb,
            "<=",
            1.1,
            detail=f"{full.peak_mb:.0f} vs {small.peak_mb:.0f} MB",
        )
    ]


def runs_table(runs: list[Run]) -> str:
    """The stages measured at both sizes side by side, then the one-off runs. `marginal` is the cost of
    the extra images, (full s - subset s) / (full images - subset images): the per-image rate without the
    start-up (imports, model loading) that dominates a small run."""
    lines = [
        "| stage | images, subset / full | s per 1,000 images, subset / full / marginal | "
        "peak RSS (MB), subset / full |",
        "|---|---|---|---|",
    ]
    by_stage: dict[str, dict[str, Run]] = {}
    for run in runs:
        by_stage.setdefault(run.stage, {})[run.where] = run
    for name, pair in by_stage.items():
        if len(pair) == 2:
            small, full = pair["subset"], pair["full"]
            marginal = (full.seconds - small.seconds) / (full.images - small.images) * 1000
            lines.append(
                f"| {name} | {small.images:,} / {full.images:,} | "
                f"{small.per_1000:.1f} / {full.per_1000:.1f} / {marginal:.1f} | "
                f"{small.peak_mb:.0f} / {full.peak_mb:.0f} ({full.peak_mb / small.peak_mb:.2f}x) |"
            )
    for name, pair in by_stage.items():
        if len(pair) == 1:
            (run,) = pair.values()
            lines.append(
                f"| {name} (once, {run.where}) | {run.images:,} | {run.per_1000:.1f} "
                f"({run.seconds:.0f} s) | {run.peak_mb:.0f} |"
            )
    return "\n".join(lines)


def counts(small: bool, n_train: int, n_test: int) -> tuple[int, int, tuple[int, int]]:
    if small:
        return n_train // 10, n_test // 10, (SUBSET[0] // 10, SUBSET[1] // 10)
    return n_train, n_test, SUBSET


def measure(quick: bool) -> list[Check]:
    """The memory check (quick: the smoke run at a tenth of the counts)."""
    n_train, n_test, subset = counts(quick, *FULL)
    runs, _, _ = run_all(n_train, n_test, subset, Path(tempfile.gettempdir()))
    return checks(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=FULL[0], help="train images of the full dataset")
    parser.add_argument("--test", type=int, default=FULL[1], help="test images of the full dataset")
    parser.add_argument("--small", action="store_true", help="a smoke run at a tenth of the counts")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--predict-test", action="store_true", help=argparse.SUPPRESS)  # the measured run
    args = parser.parse_args()
    if args.predict_test:
        predict_test()
        return
    n_train, n_test, subset = counts(args.small, args.train, args.test)
    if not (subset[0] < n_train and subset[1] < n_test):
        parser.error(
            f"the full counts must exceed the subset's {subset[0]} train and {subset[1]} test images"
        )
    print(f"machine: {machine()}", flush=True)
    runs, gigabytes, seconds = run_all(n_train, n_test, subset, args.workdir)
    print(
        f"{n_train:,} train + {n_test:,} test images ({gigabytes:.2f} GB), subset {subset[0]:,} + "
        f"{subset[1]:,}; total {seconds / 60:.1f} min"
    )
    print(runs_table(runs))
    print(table(checks(runs)))


if __name__ == "__main__":
    main()
