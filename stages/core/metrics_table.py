"""`dvc metrics show --json` as a long table: one row per metric (stage, metric, value), so that it fits a
terminal however many metrics there are (`dvc metrics show` gives each metric key a column of its own).

The JSON of DVC 3.x is {revision: {"data": {path: {"data": {key: value, ...}}}}}, with {"error": {...}} in
place of a "data" where a revision or a file could not be read; revision "" is the workspace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

HEADLINE_DIR = PurePosixPath("data/metrics")
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class MetricsTable:
    headers: list[str]  # stage, metric, then one column per revision
    rows: list[list[str]]
    problems: list[str]  # "<revision or path>: <DVC's message>", for what DVC could not read


def stage_name(path: str) -> str:
    """data/metrics/<stage>.json -> <stage>; any other metrics file keeps its path."""
    parsed = PurePosixPath(path)
    return parsed.stem if parsed.parent == HEADLINE_DIR and parsed.suffix == ".json" else path


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys joined with dots, as `dvc metrics show` names them; lists are left out, as DVC does."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def revision_name(revision: str) -> str:
    """The column header of a revision: "" is the workspace, a full commit hash is cut to 7 digits as git
    does (`dvc metrics show -A` names commits by their hash)."""
    if not revision:
        return "workspace"
    return revision[:7] if _SHA.fullmatch(revision) else revision


def format_value(value: Any, precision: int) -> str:
    """Numbers rounded to `precision` decimals (DVC's default is 5); missing values as DVC shows them."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return repr(round(value, precision))
    return str(value)


def _error(entry: Mapping[str, Any]) -> str:
    error = entry.get("error") or {}
    return " ".join(str(error.get("msg") or error.get("type") or "unreadable").split())


def metrics_table(shown: Mapping[str, Any], precision: int = 5) -> MetricsTable:
    """The long table of `dvc metrics show --json`'s output: rows in the order of the files and their keys
    (the order of dvc.yaml and of each file), one value column per revision."""
    revisions = list(shown)
    # (path, key) -> revision -> value, the rows in the order first seen
    values: dict[tuple[str, str], dict[str, Any]] = {}
    problems: list[str] = []
    for revision in revisions:
        name = revision_name(revision)
        entry = shown[revision]
        if "data" not in entry:
            problems.append(f"{name}: {_error(entry)}")
            continue
        for path, file_entry in entry["data"].items():
            if "data" not in file_entry:
                problems.append(f"{path}{f' ({name})' if revision else ''}: {_error(file_entry)}")
                continue
            for key, value in flatten(file_entry["data"]).items():
                values.setdefault((path, key), {})[revision] = value
    headers = ["stage", "metric", *map(revision_name, revisions)]
    rows = [
        [
            stage_name(path),
            key,
            *(format_value(by_revision.get(revision), precision) for revision in revisions),
        ]
        for (path, key), by_revision in values.items()
    ]
    return MetricsTable(headers, rows, problems)


def render(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table: columns separated by two spaces, stage and metric left-aligned, the values
    right-aligned, each stage named on its first row only."""
    shown_rows: list[list[str]] = []
    previous = None
    for row in rows:
        shown_rows.append(["" if row[0] == previous else row[0], *row[1:]])
        previous = row[0]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *shown_rows, strict=True)]
    lines = []
    for row in [headers, *shown_rows]:
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
