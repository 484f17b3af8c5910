"""The run's report, one static HTML file (not a DVC stage: a command to run after `dvc repro`).

    python -m stages.report [--out report/index.html] [--docs DIR]

`make report` runs it. The page holds the run's facts (commit, data, models), the Dice tables of the
all-empty, U-Net-alone and gated submissions (holdout, and test where the data has test truth), the
gating modes, the per-class rules, every stage's time and memory and the headline metrics, then every plot
of dvc.yaml as `dvc plots show` fills it: training curves, ROC / precision-recall, the threshold sweep,
the gate's confusion matrix and error galleries, the PCA of the classifier's features, the U-Net's worst
holdout images. Images are inlined and so are the Vega libraries (vl-convert-python's bundle): the file
opens offline and can be sent as it is.

--docs DIR also writes the README's pictures (small PNGs) from the same plots.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import yaml

from stages.core import cli
from stages.core.dvc_command import dvc_output
from stages.core.errors import PipelineError
from stages.core.io import atomic_path, read_json
from stages.core.postprocess import OFF_MIN_AREA_PX
from stages.core.report import (
    Page,
    Plot,
    cost_table,
    dice_table,
    headline_table,
    modes_table,
    parse_plots,
    render_page,
    rules_table,
)

EVAL = Path("data/eval.json")
DVC_YAML = Path("dvc.yaml")
PARAMS = Path("params.yaml")
# README pictures: file name -> the first plot whose id contains this text.
DOCS_PICTURES: dict[str, str] = {
    "gate_confusion.png": "Gate on the holdout images",
    "gate_error.png": "data/plots/inspect/gate/",
    "lowest_dice_class_3.png": "data/plots/inspect/dice/class_3/",
    "embeddings_pca.png": "PCA",
    "segment_dice.png": "data/live/segment/plots/metrics/fold_0/dice.tsv",
}
DOCS_WIDTH_PX = 800


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def stage_metrics() -> dict[str, dict[str, Any]]:
    """Each stage's DVC metrics (its headline figures), in dvc.yaml's stage order; a file not written yet
    (a stage that has not run) is left out."""
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    found: dict[str, dict[str, Any]] = {}
    for name, stage in stages.items():
        for entry in stage.get("metrics", []):
            path = Path(entry if isinstance(entry, str) else next(iter(entry)))
            if path.is_file():
                values = read_json(path, f"run `dvc repro {name}`")
                if isinstance(values, dict):
                    found[name] = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    return found


def model_fact(section: dict[str, Any]) -> str:
    size = f"{section.get('input_height')} x {section.get('input_width')}"
    return f"{section.get('backbone')} at {size}, {section.get('folds')} fold(s)"


def facts(params: dict[str, Any], evaluation: dict[str, Any]) -> list[tuple[str, str]]:
    commit = git("rev-parse", "--short", "HEAD") or "not a git repository"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    classifier, segment = params.get("classifier", {}), params.get("segment", {})
    return [
        ("commit", commit),
        ("written", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("data", str(params.get("data", {}).get("root"))),
        ("classifier", f"{model_fact(classifier)}, {classifier.get('head')} head"),
        ("U-Net", model_fact(segment)),
        ("gating", f"{evaluation.get('gating')} (threshold {evaluation.get('threshold')})"),
    ]


def build_page(plots: list[Plot], evaluation: dict[str, Any]) -> Page:
    params = yaml.safe_load(PARAMS.read_text()) or {}
    metrics = stage_metrics()
    tables = [
        dice_table(evaluation, "holdout"),
        dice_table(evaluation, "test"),
        modes_table(evaluation),
        rules_table(evaluation, OFF_MIN_AREA_PX),
        cost_table(metrics),
        headline_table(metrics) if metrics else None,
    ]
    return Page(
        "Severstal steel defect pipeline: run report",
        facts(params, evaluation),
        [table for table in tables if table is not None],
        plots,
    )


def vega_bundle() -> str:
    try:
        import vl_convert
    except ImportError:
        raise PipelineError("vl-convert-python is not installed: `pip install -r requirements.txt`") from None
    return vl_convert.javascript_bundle()


def write_docs(plots: list[Plot], folder: Path) -> list[Path]:
    """The README's pictures: vega plots rendered to PNG, gallery images scaled to DOCS_WIDTH_PX wide."""
    import vl_convert

    written = []
    for name, pattern in DOCS_PICTURES.items():
        plot = next((plot for plot in plots if pattern in plot.plot_id), None)
        if plot is None:
            print(f"docs: no plot matches {pattern!r}, {name} not written", file=sys.stderr)
            continue
        with atomic_path(folder / name) as tmp:
            if plot.spec is not None:
                tmp.write_bytes(vl_convert.vegalite_to_png(plot.spec, scale=1.0))
            else:
                assert plot.image_path is not None
                image = cv2.imread(plot.image_path)
                if image is None:
                    raise PipelineError(f"{plot.image_path}: not a readable image")
                scale = min(1.0, DOCS_WIDTH_PX / image.shape[1])
                size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
                ok, encoded = cv2.imencode(".png", cv2.resize(image, size, interpolation=cv2.INTER_AREA))
                if not ok:
                    raise PipelineError(f"{folder / name}: cannot encode as PNG")
                tmp.write_bytes(encoded.tobytes())
        written.append(folder / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("report/index.html"), help="the HTML file to write")
    parser.add_argument("--docs", type=Path, help="also write the README's pictures into this folder")
    args = parser.parse_args()
    evaluation = read_json(EVAL, "run `dvc repro` first")  # before the slow part: a run must exist
    with tempfile.TemporaryDirectory() as folder:
        # -o: DVC copies the image plots there (the JSON names them by absolute path).
        try:
            plots = parse_plots(json.loads(dvc_output("plots", "show", "--json", "-o", folder)))
        except ValueError as error:  # not JSON, or not the shape DVC 3 prints
            raise PipelineError(f"`dvc plots show --json`: unexpected output ({error})") from None
        page = build_page(plots, evaluation)
        text = render_page(page, vega_bundle(), lambda path: Path(path).read_bytes())
        with atomic_path(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written = write_docs(plots, args.docs) if args.docs else []
    print(f"{args.out}: {len(plots)} plots, {len(page.tables)} tables, {len(text) / 1e6:.1f} MB")
    for path in written:
        print(f"{path}")


if __name__ == "__main__":
    cli.run(main)
