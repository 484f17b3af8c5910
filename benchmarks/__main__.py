"""`python -m benchmarks [--quick] [--only NAME ...]`: every speed ratio of the project, each measured
side by side with its reference in this one run, printed as a Markdown table with its target.

Each benchmark module in BENCHMARKS has `measure(quick: bool) -> list[Check]`. Exit status 1 when a
target is missed, so the command can gate a release; the README shows the latest output.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from benchmarks.report import Check, machine, table

# Module names under benchmarks/, in the order they run (cheap ones first).
BENCHMARKS: tuple[str, ...] = ("rle_speed", "backend_speed", "loop_speed", "dvc_overhead")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke run, noisier")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    checks: list[Check] = []
    for name in args.only:
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        found = module.measure(args.quick)
        checks.extend(found)
        print(f"{name}: {len(found)} checks in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table(checks))
    return 0 if all(check.passed for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
