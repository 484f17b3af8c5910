"""The DVC metrics as a long table, one row per metric (`make metrics`):

    dvc metrics show --json [-a | -A | -T] | python -m stages.metrics [FILE] [--precision N]

reads the JSON `dvc metrics show --json` prints (from FILE, or standard input) and prints stage, metric and
one value column per revision. `dvc metrics show` itself gives every metric key a column of its own, too
wide for a terminal. A file DVC could not read (a stage not run yet) is a `warning:` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.core import cli
from stages.core.errors import PipelineError
from stages.core.metrics_table import metrics_table, render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.metrics", description=__doc__.splitlines()[0])
    parser.add_argument(
        "file", nargs="?", type=Path, help="the JSON of `dvc metrics show --json` (default: stdin)"
    )
    parser.add_argument("--precision", type=int, default=5, help="decimals of the values (default 5, as DVC)")
    args = parser.parse_args(argv)
    source = str(args.file) if args.file else "stdin"
    try:
        text = args.file.read_text(encoding="utf-8") if args.file else sys.stdin.read()
    except OSError as error:
        raise PipelineError(f"{source}: cannot read ({error.strerror or error})") from None
    if not text.strip():  # `dvc metrics show --json` failed: its own error is above
        raise PipelineError(f"{source}: empty; expected the output of `dvc metrics show --json`")
    try:
        shown = json.loads(text)
    except ValueError as error:
        raise PipelineError(
            f"{source}: not the JSON of `dvc metrics show --json` ({' '.join(str(error).split())})"
        ) from None
    if not isinstance(shown, dict) or not all(isinstance(entry, dict) for entry in shown.values()):
        raise PipelineError(f"{source}: not the JSON of `dvc metrics show --json` (expected revisions)")
    table = metrics_table(shown, args.precision)
    for problem in table.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not table.rows:
        raise PipelineError(f"{source}: no metrics to show; run `dvc repro` first")
    print(render(table.headers, table.rows))


if __name__ == "__main__":
    cli.run(main)
