"""Benchmark: milliseconds to render one synthetic image of each look (run by hand; figures go in the README).

.venv/bin/python -m benchmarks.synthesize_speed [--images 50] [--height 256 --width 1600]

Both looks render the same planned class mix side by side in one run, so their ratio holds on any machine.
"""

from __future__ import annotations

import argparse
import time

from stages.core.synthetic import LOOKS, SyntheticSpec, generate, plan_split


def render_ms(spec: SyntheticSpec, images: int) -> float:
    plan = plan_split(0, "train", images, spec)
    generate(0, "train", 0, spec, plan[0])  # warm-up: imports and allocator
    started = time.perf_counter()
    for index, classes in enumerate(plan):
        generate(0, "train", index, spec, classes)
    return (time.perf_counter() - started) / images * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1600)
    args = parser.parse_args()
    times = {
        look: render_ms(SyntheticSpec(args.height, args.width, look=look), args.images) for look in LOOKS
    }
    for look, per_image in times.items():
        print(
            f"synthetic render, look {look}: {per_image:.1f} ms per {args.height}x{args.width} image "
            f"over {args.images} images ({per_image / times[LOOKS[0]]:.2f}x {LOOKS[0]})"
        )


if __name__ == "__main__":
    main()
