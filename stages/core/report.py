"""The run's report as one HTML page: pure functions from the pipeline's JSON outputs and the plots DVC filled
(`dvc plots show --json`) to HTML text. No I/O: images arrive as bytes, the Vega libraries as a string.

DVC is the plot engine: every vega plot is the spec DVC filled from dvc.yaml's `plots:` (its templates,
its data), drawn in the page by vega-embed; image plots are inlined as data URIs, so the page is one file.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Report sections, in page order: (title, regular expression a plot id matches). A plot goes to the first
# section it matches; a plot no section claims lands in "Other plots", so none is ever dropped.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("allMissing classifier: training curves", r"^data/live/classifier/"),
    ("allMissing classifier and threshold (out-of-fold)", r"allMissing|ROC|Precision-recall|[Tt]hreshold"),
    ("Gate on the holdout images: confusion, errors worst first", r"^data/plots/inspect/gate/|[Gg]ate on"),
    ("Embeddings: the classifier's features", r"PCA"),
    ("U-Net: training curves", r"^data/live/segment/"),
    ("U-Net: lowest Dice per class on the holdout images, truth vs prediction", r"^data/plots/inspect/dice/"),
    ("U-Net: a few holdout images, truth vs prediction", r"^data/plots/segment/"),
)
OTHER_SECTION = "Other plots"


@dataclass
class Plot:
    """One plot of `dvc plots show --json`: a filled vega-lite spec, or an image file."""

    plot_id: str
    spec: dict[str, Any] | None = None
    image_path: str | None = None


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Page:
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def parse_plots(shown: Mapping[str, Any]) -> list[Plot]:
    """The plots of `dvc plots show --json` (DVC 3: {"data": {plot id: [{"type", "content" | "url"}]}}),
    in DVC's order. Raises ValueError on another shape."""
    data = shown.get("data") if isinstance(shown, Mapping) else None
    if not isinstance(data, Mapping):
        raise ValueError('not the output of `dvc plots show --json`: no "data" object')
    plots = []
    for plot_id, entries in data.items():
        for entry in entries or []:
            if entry.get("type") == "vega" and isinstance(entry.get("content"), dict):
                plots.append(Plot(plot_id, spec=entry["content"]))
            elif entry.get("type") == "image" and isinstance(entry.get("url"), str):
                plots.append(Plot(plot_id, image_path=entry["url"]))
    return plots


def section_of(plot_id: str) -> str:
    for title, pattern in SECTIONS:
        if re.search(pattern, plot_id):
            return title
    return OTHER_SECTION


def grouped(plots: Sequence[Plot]) -> list[tuple[str, list[Plot]]]:
    """Plots by section in SECTIONS order (then Other plots): in each, the vega plots in DVC's order, then
    the images by path (a gallery's files are named by rank, worst first)."""
    order = [title for title, _ in SECTIONS] + [OTHER_SECTION]
    sections: dict[str, list[Plot]] = {title: [] for title in order}
    for plot in plots:
        sections[section_of(plot.plot_id)].append(plot)
    for found in sections.values():
        found.sort(key=lambda plot: (plot.image_path is not None, plot.plot_id if plot.image_path else ""))
    return [(title, found) for title, found in sections.items() if found]


def number(value: object, digits: int = 4) -> str:
    """A table cell: numbers rounded, None and missing as an em dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def dice_table(evaluation: Mapping[str, Any], split: str) -> Table | None:
    """Mean and per-class Dice of the all-empty, U-Net-alone and gated submissions on `split`
    ("holdout" or "test") from data/eval.json; None when eval.json has no such split (no test truth)."""
    scores = evaluation.get(split)
    if not isinstance(scores, Mapping) or "gated" not in scores:
        return None
    classes = list(scores["gated"]["per_class"])
    labels = {
        "empty": "all empty",
        "segmentation": "U-Net alone",
        "gated": f"gated ({evaluation.get('gating', '?')})",
    }
    rows = [
        [label, number(scores[key]["mean_dice"]), *(number(scores[key]["per_class"][k], 3) for k in classes)]
        for key, label in labels.items()
        if key in scores
    ]
    images = scores.get("images") if split == "holdout" else evaluation.get("test_images")
    title = f"Dice on the {split} images" + (f" ({images})" if images else "")
    return Table(title, ["submission", "mean", *(f"class {k}" for k in classes)], rows)


def modes_table(evaluation: Mapping[str, Any]) -> Table | None:
    """Mean Dice of every gating mode the classifier supports (data/eval.json gating_modes)."""
    modes = evaluation.get("gating_modes")
    if not isinstance(modes, Mapping) or not modes:
        return None
    rows = [
        [
            mode + (" (chosen)" if mode == evaluation.get("gating") else ""),
            number(scores.get("holdout", {}).get("mean_dice")),
            number(scores.get("test", {}).get("mean_dice")),
        ]
        for mode, scores in modes.items()
    ]
    return Table("Gating modes (each with its own rules)", ["gating", "holdout Dice", "test Dice"], rows)


def rules_table(evaluation: Mapping[str, Any], off_min_area_px: int) -> Table | None:
    """The submitted per-class rules: probability threshold and min area, or "off"."""
    rules = evaluation.get("rules")
    if not isinstance(rules, Mapping) or not rules:
        return None
    rows = []
    for class_id, rule in rules.items():
        off = rule["min_area_px"] >= off_min_area_px
        area = "off" if off else number(rule["min_area_px"])
        rows.append([f"class {class_id}", number(rule["threshold"], 2), area])
    return Table(
        "Per-class rules of the submission",
        ["class", "mask threshold", "min area (px)"],
        rows,
        note="off: on the holdout every rule scored below submitting no mask of that class.",
    )


def cost_table(metrics: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Wall time, peak memory and throughput of each stage that records them (its DVC metrics file),
    and the run's total time and peak."""
    rows, total_s, peak_mb = [], 0.0, 0.0
    for stage, values in metrics.items():
        if "wall_time_s" not in values and "peak_memory_mb" not in values:
            continue
        # train_images_per_s -> "train 1.29"; a bare images_per_s -> "1.29"
        rates = [
            f"{key.removesuffix('images_per_s').rstrip('_')} {number(value, 2)}".strip()
            for key, value in values.items()
            if key.endswith("images_per_s")
        ]
        wall_s, memory_mb = values.get("wall_time_s"), values.get("peak_memory_mb")
        rows.append([stage, number(wall_s, 1), number(memory_mb, 0), ", ".join(rates)])
        total_s += float(values.get("wall_time_s") or 0.0)
        peak_mb = max(peak_mb, float(values.get("peak_memory_mb") or 0.0))
    if not rows:
        return None
    rows.append(["whole run", number(total_s, 1), number(peak_mb, 0), ""])
    return Table(
        "Time and memory",
        ["stage", "wall time (s)", "peak memory (MB)", "images/s"],
        rows,
        note="Stages not listed take seconds. The whole run's time is the sum of the stages', its memory the "
        "largest peak (stages run one after another).",
    )


def headline_table(metrics: Mapping[str, Mapping[str, Any]]) -> Table:
    """Every DVC metric of the run (data/metrics/*.json), one row each."""
    rows = [[stage, key, number(value)] for stage, values in metrics.items() for key, value in values.items()]
    return Table("Headline metrics (dvc metrics show)", ["stage", "metric", "value"], rows)


def data_uri(content: bytes, suffix: str) -> str:
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    mime = kind.get(suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def image_caption(plot_id: str) -> str:
    """An image plot's path without the folder every plot shares: gate/wiped_defective/01_x.png."""
    return plot_id.removeprefix("data/plots/")


def gallery(plot: Plot) -> str | None:
    """The folder an image plot belongs to (its gallery), None for a vega plot."""
    return image_caption(plot.plot_id).rsplit("/", 1)[0] if plot.image_path is not None else None


def render_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return f"<h3>{html.escape(table.title)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def render_plot(plot: Plot, index: int, read_image: Callable[[str], bytes]) -> str:
    if plot.spec is not None:
        # "</" would end the script element early; the JSON escape keeps the spec intact.
        spec = json.dumps(plot.spec).replace("</", "<\\/")
        return (
            f'<div class="plot" id="plot{index}"></div>'
            f'<script>vegaEmbed("#plot{index}", {spec}, {{"actions": false}});</script>'
        )
    assert plot.image_path is not None
    suffix = "." + plot.image_path.rsplit(".", 1)[-1] if "." in plot.image_path else ""
    source = data_uri(read_image(plot.image_path), suffix)
    caption = html.escape(image_caption(plot.plot_id))
    return f'<figure><img src="{source}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1700px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #666; font-size: 0.9em; margin-top: -0.5em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; }
"""


def render_page(page: Page, vega_bundle: str, read_image: Callable[[str], bytes]) -> str:
    """The whole page: facts, tables, then the plots by section; `vega_bundle` is the JavaScript of
    vega, vega-lite and vega-embed, inlined so that the page needs no network."""
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in page.facts)
    parts = [f"<h1>{html.escape(page.title)}</h1>", f"<dl>{facts}</dl>"]
    parts += [render_table(table) for table in page.tables]
    index = 0
    for title, plots in grouped(page.plots):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        # One flex row per gallery (image folder), headed by its folder; vega plots share the first row.
        rows: list[tuple[str | None, list[str]]] = []
        for plot in plots:
            if not rows or gallery(plot) != rows[-1][0]:
                rows.append((gallery(plot), []))
            rows[-1][1].append(render_plot(plot, index, read_image))
            index += 1
        for folder, rendered in rows:
            heading = f"<h4>{html.escape(folder)}</h4>" if folder else ""
            parts.append(f'{heading}<div class="plots">{"".join(rendered)}</div>')
    # The bundle defines window.vegaEmbed; "</script" inside it would end the element.
    script = vega_bundle.replace("</script", "<\\/script")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(page.title)}</title><style>{STYLE}</style>"
        f"<script>{script}</script></head><body>{''.join(parts)}</body></html>\n"
    )
