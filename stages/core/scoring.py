"""Grading submission files against ground-truth files (the local leaderboard's engine)."""

from __future__ import annotations

from pathlib import Path

from stages.core.dataset import (
    Labels,
    check_duplicates,
    class_ids_of,
    image_size,
    list_images,
    parse_labels,
    read_csv,
)
from stages.core.errors import PipelineError
from stages.core.metric import DiceReport, grade, summarize


def score_files(
    submission_path: Path,
    truth_path: Path,
    images: Path | None = None,
    default_size: tuple[int, int] = (256, 1600),
    num_classes: int | None = None,
) -> DiceReport:
    submission = parse_labels(read_csv(submission_path), str(submission_path))
    return score_labels(submission, str(submission_path), truth_path, images, default_size, num_classes)


def score_labels(
    submission: Labels,
    submission_name: str,
    truth_path: Path,
    images: Path | None = None,
    default_size: tuple[int, int] = (256, 1600),
    num_classes: int | None = None,
) -> DiceReport:
    """score_files() for a submission already parsed (e.g. built in memory)."""
    truth = parse_labels(read_csv(truth_path), str(truth_path))
    check_duplicates(submission, submission_name)
    check_duplicates(truth, str(truth_path))
    highest = max(class_ids_of(truth), default=0)
    if num_classes is None:
        num_classes = highest
    if num_classes < max(highest, 1):
        raise PipelineError(
            f"{truth_path}: has classes up to {highest}, so --num-classes must be at least {max(highest, 1)}"
        )
    graded = list(truth.image_ids)
    folder = images if images is not None else truth_path.parent / "test_images"
    if images is not None or folder.is_dir():
        if truth.csv_format == "new":  # defect rows only: the folder's other images are clean
            listed = set(graded)
            graded += [name for name in list_images(folder) if name not in listed]
        n_pixels = {}
        for image_id in graded:
            height, width = image_size(folder / image_id)
            n_pixels[image_id] = height * width
    else:
        n_pixels = dict.fromkeys(graded, default_size[0] * default_size[1])
    pairs = grade(
        submission.pairs, truth.pairs, num_classes, n_pixels, submission_name, str(truth_path), graded
    )
    return summarize(pairs)
