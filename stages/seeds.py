"""The spread of the metrics over repeated runs (not a DVC stage: a command to run after the experiments).

    python -m stages.seeds [--name 'seed-*'] [--metric FILE:KEY ...] [--no-totals] [--allow-missing]
                           [--input FILE | --input -] [--json]

Reads `dvc exp show --json` (run here, in the current directory, unless --input gives its saved output or
- for stdin): by default that lists the current commit's experiments. Aggregates the finished experiments
whose name matches --name (any, if not given); failed, queued and running ones are listed and skipped. Per
metric: n, mean, sample standard deviation (ddof=1), min and max, as a Markdown table or --json.
Default metrics: the gated Dice (data/metrics/postprocess.json holdout_dice_gated and per class; test_*
too when the dataset has test ground truth), data/metrics/classifier.json val_auc and
data/metrics/threshold.json auc. --metric FILE:KEY (repeatable; a dotted KEY walks nested objects, e.g.
data/eval.json:holdout.gated.mean_dice) replaces them. Either way two run totals follow unless --no-totals:
the sum of wall_time_s and the max of peak_memory_mb over each experiment's metrics files.
A metric an experiment lacks is an error naming both, unless --allow-missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core.dvc_command import dvc_output
from stages.core.errors import PipelineError
from stages.core.experiments import (
    RUN_TOTALS,
    as_dict,
    default_metrics,
    experiments,
    markdown,
    parse_metric,
    select,
    summarize,
)

EXP_SHOW = ("exp", "show", "--json")


def metric_argument(text: str) -> Any:
    try:
        return parse_metric(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def read_exp_show(source: str | None) -> tuple[str, str]:
    """(where it came from, the JSON text) of `dvc exp show --json`: run here, or a file, or stdin (-)."""
    if source == "-":
        return "stdin", sys.stdin.read()
    if source is not None:
        try:
            return source, Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PipelineError(f"{source}: cannot read ({error})") from None
    return f"`dvc {' '.join(EXP_SHOW)}`", dvc_output(*EXP_SHOW)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.seeds", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--name", action="append", default=[], help="shell pattern of the experiment names (repeatable)"
    )
    parser.add_argument(
        "--metric", action="append", type=metric_argument, default=[], help="FILE:KEY (repeatable)"
    )
    parser.add_argument("--no-totals", action="store_true", help="leave out the wall time and memory totals")
    parser.add_argument(
        "--allow-missing", action="store_true", help="aggregate a metric over the experiments that have it"
    )
    parser.add_argument("--input", help="saved output of `dvc exp show --json` (- for stdin)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    source, text = read_exp_show(args.input)
    try:
        found = experiments(json.loads(text))
    except json.JSONDecodeError as error:
        raise PipelineError(f"{source}: not JSON ({error.msg} at line {error.lineno})") from None
    except PipelineError as error:
        raise PipelineError(f"{source}: {error}") from None
    selected, skipped = select(found, args.name)
    if not selected:
        which = f" named {' or '.join(args.name)}" if args.name else ""
        raise PipelineError(
            f"no finished experiment{which} in {source} ({len(skipped)} not finished, {len(found)} in all)"
        )
    metrics = args.metric or default_metrics(selected)
    if not args.no_totals:
        metrics = [*metrics, *RUN_TOTALS]
    summaries = summarize(selected, metrics, args.allow_missing)
    if args.json:
        print(json.dumps(as_dict(summaries, selected, skipped), indent=2))
    else:
        print(markdown(summaries, selected, skipped))


if __name__ == "__main__":
    cli.run(main)
