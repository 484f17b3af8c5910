"""DVC experiments as `dvc exp show --json` lists them, and the spread of their metrics over repeated runs
(the same pipeline under other seeds): n, mean, sample standard deviation, min and max per metric.

The JSON of DVC 3 `exp show --json` is a list of revisions: "workspace", then each baseline commit, whose
"experiments" is a list of ranges `{"name", "executor", "revs": [experiment commit]}`. The executor's
"state" is queued, running, success or failed (no executor: an experiment run in the workspace, finished).
A revision's metrics are `data.metrics[file] = {"data": {...}}` (or `{"error": ...}` when DVC could not
read the file). A failed experiment shows its baseline's metrics: only finished ones are aggregated.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from stages.core.errors import PipelineError

FINISHED = "success"

# The headline metrics files (one per stage, flat objects of numbers) the default table reads.
POSTPROCESS_METRICS = "data/metrics/postprocess.json"
CLASSIFIER_METRICS = "data/metrics/classifier.json"
THRESHOLD_METRICS = "data/metrics/threshold.json"
# Run totals over every metrics file of an experiment.
WALL_TIME_KEY = "wall_time_s"
PEAK_MEMORY_KEY = "peak_memory_mb"


@dataclass(frozen=True)
class Experiment:
    name: str  # name@baseline when experiments of two baselines share the name
    rev: str
    baseline: str  # the commit the experiment ran on
    state: str  # success | failed | queued | running
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics file -> its content


@dataclass(frozen=True)
class Metric:
    """One row of the table: `key` of metrics file `file` (a dotted key walks nested objects), or with
    `total` set ("sum" or "max"), the sum or max of top-level `key` over every metrics file."""

    file: str
    key: str
    total: str | None = None

    @property
    def label(self) -> str:
        if self.total:
            return f"{self.total} of {self.key} over metrics files"
        return f"{self.file}:{self.key}"


RUN_TOTALS = (Metric("", WALL_TIME_KEY, "sum"), Metric("", PEAK_MEMORY_KEY, "max"))


@dataclass(frozen=True)
class Summary:
    metric: Metric
    values: dict[str, float]  # experiment name -> value, for the experiments that have the metric
    missing: list[str]  # experiments without it (only with allow_missing)

    @property
    def n(self) -> int:
        return len(self.values)

    def stats(self) -> dict[str, float | None]:
        """mean, std (sample: ddof=1; None for a single value), min and max."""
        array = np.array(list(self.values.values()), dtype=float)
        return {
            "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if array.size > 1 else None,
            "min": float(array.min()),
            "max": float(array.max()),
        }


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PipelineError(f"not the JSON of `dvc exp show --json`: {where} is not an object")
    return value


def experiments(shown: Any) -> list[Experiment]:
    """Every experiment of every baseline in `dvc exp show --json` output, whatever its state."""
    if not isinstance(shown, list):
        raise PipelineError("not the JSON of `dvc exp show --json`: expected a list of revisions")
    found: list[Experiment] = []
    for index, entry in enumerate(shown):
        baseline = _object(entry, f"revision {index + 1}")
        if not isinstance(baseline.get("rev"), str):
            raise PipelineError(f"not the JSON of `dvc exp show --json`: revision {index + 1} has no rev")
        ranges = baseline.get("experiments") or []
        if not isinstance(ranges, list):
            raise PipelineError(f"not the JSON of `dvc exp show --json`: {baseline['rev']}: bad experiments")
        for exp_range in ranges:
            found.append(
                _experiment(_object(exp_range, f"an experiment of {baseline['rev']}"), baseline["rev"])
            )
    # A name is unique on its commit (DVC refuses another), not across commits (`exp show -A`).
    commits = Counter(name for name, _ in {(exp.name, exp.baseline) for exp in found})
    return [
        Experiment(f"{exp.name}@{exp.baseline[:7]}", exp.rev, exp.baseline, exp.state, exp.metrics)
        if commits[exp.name] > 1
        else exp
        for exp in found
    ]


def _experiment(exp_range: dict[str, Any], baseline: str) -> Experiment:
    revs = exp_range.get("revs")
    if not isinstance(revs, list) or not revs:
        raise PipelineError(f"not the JSON of `dvc exp show --json`: an experiment of {baseline} has no revs")
    # DVC 3 has no checkpoints: a range holds the experiment's one commit.
    head = _object(revs[0], f"an experiment of {baseline}")
    rev = head.get("rev")
    if not isinstance(rev, str):
        raise PipelineError(f"not the JSON of `dvc exp show --json`: an experiment of {baseline} has no rev")
    executor = exp_range.get("executor")
    state = executor.get("state", FINISHED) if isinstance(executor, dict) else FINISHED
    if head.get("error") and state == FINISHED:
        state = "failed"
    name = exp_range.get("name") or head.get("name") or rev[:7]
    data = head.get("data") if isinstance(head.get("data"), dict) else {}
    files = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    metrics = {
        path: content["data"]
        for path, content in files.items()
        if isinstance(content, dict) and isinstance(content.get("data"), dict)
    }
    return Experiment(str(name), rev, baseline, str(state), metrics)


def select(
    found: Iterable[Experiment], patterns: Sequence[str] = ()
) -> tuple[list[Experiment], list[Experiment]]:
    """(finished, not finished) experiments whose name matches any of the shell patterns (all: none given)."""
    matching = sorted(
        (exp for exp in found if not patterns or any(fnmatchcase(exp.name, p) for p in patterns)),
        key=lambda exp: natural_key(exp.name),
    )
    return (
        [exp for exp in matching if exp.state == FINISHED],
        [exp for exp in matching if exp.state != FINISHED],
    )


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sorts seed-2 before seed-10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


def parse_metric(text: str) -> Metric:
    """FILE:KEY as given on the command line."""
    path, _, key = text.rpartition(":")
    if not path or not key:
        raise ValueError(f"expected FILE:KEY such as data/eval.json:holdout.gated.mean_dice, got {text!r}")
    return Metric(path, key)


def lookup(data: Any, key: str) -> Any:
    """data[key] where a dotted key walks nested objects ("holdout.gated.mean_dice"); a key that holds a
    dot itself is matched whole first. KeyError when there is no such value."""
    if not isinstance(data, dict):
        raise KeyError(key)
    if key in data:
        return data[key]
    parts = key.split(".")
    for cut in range(1, len(parts)):
        head = ".".join(parts[:cut])
        if head in data:
            try:
                return lookup(data[head], ".".join(parts[cut:]))
            except KeyError:
                continue
    raise KeyError(key)


def _number(value: Any, experiment: str, metric: Metric) -> float:
    # A 0/1 flag logged as a JSON boolean averages to a share.
    if isinstance(value, bool | int | float):
        return float(value)
    raise PipelineError(f"experiment {experiment}: {metric.label} is {value!r}, not a number")


def value(exp: Experiment, metric: Metric) -> float | None:
    """The experiment's value of the metric, None when it has none."""
    if metric.total:
        found = [
            _number(content[metric.key], exp.name, metric)
            for content in exp.metrics.values()
            if metric.key in content
        ]
        if not found:
            return None
        return sum(found) if metric.total == "sum" else max(found)
    try:
        return _number(lookup(exp.metrics.get(metric.file), metric.key), exp.name, metric)
    except KeyError:
        return None


def _class_keys(base: str, keys: set[str]) -> list[str]:
    """base_1, base_2, ... present in `keys`, in class order."""
    pattern = re.compile(rf"{re.escape(base)}_(\d+)")
    return sorted((k for k in keys if pattern.fullmatch(k)), key=lambda k: int(k.rsplit("_", 1)[1]))


def default_metrics(selected: Iterable[Experiment]) -> list[Metric]:
    """The headline metrics: gated Dice on the holdout (overall and per class), on the test images when the
    dataset has their ground truth (any experiment reports it), the classifier's validation AUC and the
    out-of-fold AUC of the threshold stage."""
    keys: set[str] = set()
    for exp in selected:
        keys |= set(exp.metrics.get(POSTPROCESS_METRICS, {}))
    names = ["holdout_dice_gated", *_class_keys("holdout_dice_gated", keys)]
    test = _class_keys("test_dice_gated", keys)
    if "test_dice_gated" in keys or test:
        names += ["test_dice_gated", *test]
    return [
        *(Metric(POSTPROCESS_METRICS, name) for name in names),
        Metric(CLASSIFIER_METRICS, "val_auc"),
        Metric(THRESHOLD_METRICS, "auc"),
    ]


def summarize(
    selected: Sequence[Experiment], metrics: Iterable[Metric], allow_missing: bool
) -> list[Summary]:
    """One summary per metric over the experiments. A metric an experiment lacks is an error naming both,
    unless allow_missing (then it is aggregated over the others); one that none has is always an error."""
    summaries = []
    for metric in metrics:
        values: dict[str, float] = {}
        missing: list[str] = []
        for exp in selected:
            found = value(exp, metric)
            if found is None:
                missing.append(exp.name)
            else:
                values[exp.name] = found
        if not values:
            raise PipelineError(f"{metric.label}: in none of the {len(selected)} experiments")
        if missing and not allow_missing:
            raise PipelineError(
                f"experiment {', '.join(missing)}: no {metric.label} (--allow-missing aggregates the others)"
            )
        summaries.append(Summary(metric, values, missing))
    return summaries


def _cells(stats: dict[str, float | None]) -> list[str]:
    """mean, std, min and max, one precision per row: 4 decimals, 1 from 100 up (seconds, megabytes)."""
    finite = [abs(v) for v in stats.values() if v is not None and math.isfinite(v)]
    digits = 1 if finite and max(finite) >= 100 else 4
    return [
        "-" if stats[name] is None else f"{stats[name]:.{digits}f}" for name in ("mean", "std", "min", "max")
    ]


def _names(found: Sequence[Experiment]) -> str:
    return ", ".join(exp.name for exp in found)


def markdown(
    summaries: Sequence[Summary], selected: Sequence[Experiment], skipped: Sequence[Experiment]
) -> str:
    lines = [f"{len(selected)} experiments: {_names(selected)}"]
    if skipped:
        by_state = Counter(exp.state for exp in skipped)
        parts = [
            f"{count} {state} ({_names([exp for exp in skipped if exp.state == state])})"
            for state, count in sorted(by_state.items())
        ]
        lines.append(f"skipped {len(skipped)} not finished: {'; '.join(parts)}")
    lines += ["", "| metric | n | mean | std | min | max |", "|---|---:|---:|---:|---:|---:|"]
    for summary in summaries:
        cells = _cells(summary.stats())
        lines.append(f"| {summary.metric.label} | {summary.n} | {' | '.join(cells)} |")
    lines.append("")
    lines.append("std: sample standard deviation (ddof=1), - for a single experiment.")
    for summary in summaries:
        if summary.missing:
            lines.append(f"{summary.metric.label}: missing in {', '.join(summary.missing)}")
    return "\n".join(lines)


def as_dict(
    summaries: Sequence[Summary], selected: Sequence[Experiment], skipped: Sequence[Experiment]
) -> dict[str, Any]:
    def about(exp: Experiment) -> dict[str, str]:
        return {"name": exp.name, "rev": exp.rev, "baseline": exp.baseline, "state": exp.state}

    return {
        "std": "sample standard deviation (ddof=1), null for a single experiment",
        "experiments": [about(exp) for exp in selected],
        "skipped": [about(exp) for exp in skipped],
        "metrics": [
            {
                "metric": summary.metric.label,
                "file": summary.metric.file or None,
                "key": summary.metric.key,
                "total": summary.metric.total,
                "n": summary.n,
                **summary.stats(),
                "values": summary.values,
                "missing": summary.missing,
            }
            for summary in summaries
        ],
    }
