"""Benchmark: milliseconds to render one synthetic image (run by hand; figures go in the README).

.venv/bin/python -m benchmarks.synthesize_speed [--images 50] [--height 256 --width 1600]
"""

from __future__ import annotations

import argparse
import time

from stages.core.synthetic import SyntheticSpec, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1600)
    args = parser.parse_args()
    spec = SyntheticSpec(height=args.height, width=args.width)
    generate(0, "train", 0, spec)  # warm-up: imports and allocator
    started = time.perf_counter()
    for index in range(args.images):
        generate(0, "train", index, spec)
    per_image = (time.perf_counter() - started) / args.images * 1000
    print(
        f"synthetic render: {per_image:.1f} ms per {args.height}x{args.width} image over {args.images} images"
    )


if __name__ == "__main__":
    main()
