"""Benchmark: RLE decode and encode against a plain numpy reference without any validation.

    .venv/bin/python -m benchmarks.rle_speed [--quick]

The masks are the real competition strings of ../shared/fixtures/ (located as the tests locate them);
where that folder is absent, masks of the synthetic dataset stand in and the detail says so. Each round
times the project's codec and the reference over every mask, in alternating order, and a check's figure
is the ratio of the medians over the rounds (reference time / project time: >= 1 means at least as fast).

The references: for decode the usual Kaggle loop (split, int, fill slices of a zeroed image, reshape in
Fortran order); for encode the classic mask2rle (pad with zeros, np.where on the differences).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from benchmarks.report import Check, machine, table
from stages.core import rle
from tests.helpers import OLD_FIXTURE, read_fixture_rows

SHAPE = (256, 1600)
T = TypeVar("T")


def reference_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    tokens = text.split()
    for start, length in zip(tokens[0::2], tokens[1::2], strict=True):
        begin = int(start) - 1
        flat[begin : begin + int(length)] = 1
    return flat.reshape(shape, order="F")


def reference_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def fixture_strings() -> tuple[list[str], str]:
    """The non-empty RLE strings to time and where they come from."""
    if OLD_FIXTURE.is_file():
        texts = [text for _, _, text in read_fixture_rows() if text]
        return texts, f"{len(texts)} real masks ({OLD_FIXTURE.name})"
    from stages.core.synthetic import SyntheticSpec, generate, plan_split

    spec = SyntheticSpec(*SHAPE)
    texts = []
    for index, classes in enumerate(plan_split(0, "train", 100, spec)):
        texts += [rle.encode(mask) for mask in generate(0, "train", index, spec, classes)[1] if mask.any()]
    return texts, f"{len(texts)} synthetic masks (fixtures absent: {OLD_FIXTURE.parent})"


def over_all(function: Callable[[T], object], items: list[T]) -> Callable[[], None]:
    """A run of `function` over every item, each result dropped at once (as a stage uses a mask and moves
    on: keeping them all would time fresh memory pages rather than the codec)."""

    def run() -> None:
        for item in items:
            function(item)

    return run


def median_seconds(
    ours: Callable[[], None], reference: Callable[[], None], rounds: int
) -> tuple[float, float]:
    """Median seconds of each function over interleaved rounds (the first of each pair alternates)."""
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    pair = [("ours", ours), ("reference", reference)]
    ours(), reference()  # warm-up: caches, allocator, lazy imports
    gc.disable()  # a collection landing in one side's round is noise, not a cost of either codec
    try:
        for index in range(rounds):
            for name, function in pair if index % 2 == 0 else pair[::-1]:
                started = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - started)
    finally:
        gc.enable()
    return statistics.median(times["ours"]), statistics.median(times["reference"])


def measure(quick: bool) -> list[Check]:
    texts, source = fixture_strings()
    masks = [rle.decode(text, SHAPE) for text in texts]
    # Same results before any timing: the codec and the references agree on every mask.
    for text, mask in zip(texts, masks, strict=True):
        if not np.array_equal(mask, reference_decode(text, SHAPE)) or rle.encode(mask) != text:
            raise AssertionError(f"codec and reference disagree on a mask of {source}")
        if reference_encode(mask) != text:
            raise AssertionError(f"reference encode disagrees on a mask of {source}")
    rounds = 7 if quick else 41
    checks = []
    cases: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        (
            "decode",
            over_all(lambda text: rle.decode(text, SHAPE), texts),
            over_all(lambda text: reference_decode(text, SHAPE), texts),
        ),
        ("encode", over_all(rle.encode, masks), over_all(reference_encode, masks)),
    ]
    for name, ours, reference in cases:
        ours_s, reference_s = median_seconds(ours, reference, rounds)
        per_mask = 1000 / len(texts)
        checks.append(
            Check(
                f"RLE {name} vs plain numpy reference",
                reference_s / ours_s,
                ">=",
                1.0,
                detail=(
                    f"{ours_s * per_mask:.3f} vs {reference_s * per_mask:.3f} ms per mask; {source}, "
                    f"median of {rounds} interleaved rounds"
                ),
            )
        )
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run, noisier")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(table(measure(args.quick)))


if __name__ == "__main__":
    main()
