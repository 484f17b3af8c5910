"""The local leaderboard: grade a submission against ground truth.

    python -m stages.score SUBMISSION TRUTH [--json] [--images DIR | --image-size HxW]

Both files in either published CSV format. A pair missing from the submission counts as an empty
prediction; a pair the truth does not have is an error. Image sizes (to check RLE bounds) come from
the images: DIR, else a test_images/ folder beside TRUTH, else --image-size (default 256x1600).
A new-format truth may list defect rows only when its images are at hand: the folder's other images
are then graded as clean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages.core import cli
from stages.core.scoring import score_files

__all__ = ["parse_size", "score_files"]


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x1600, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.score", description=__doc__.splitlines()[0])
    parser.add_argument("submission", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument("--images", type=Path, help="folder of the truth's images, to read their sizes")
    parser.add_argument(
        "--image-size", type=parse_size, default=(256, 1600), help="HxW when no images are found"
    )
    parser.add_argument(
        "--num-classes", type=int, help="defect classes (default: the truth's highest ClassId)"
    )
    args = parser.parse_args()
    report = score_files(args.submission, args.truth, args.images, args.image_size, args.num_classes)
    if args.json:
        print(json.dumps(report.as_dict()))
        return
    print(f"mean Dice {report.mean_dice:.5f} over {report.n_images} images")
    for class_id, value in report.per_class.items():
        print(f"  class {class_id}: {value:.5f}")


if __name__ == "__main__":
    cli.run(main)
