"""The run's report (`make report`, python -m stages.report): the pure page builder, and the command on the
tests' DAG, where every plot of `dvc plots show` must land in one self-contained HTML file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from stages.core.report import (
    OTHER_SECTION,
    Page,
    Plot,
    Table,
    cost_table,
    dice_table,
    grouped,
    modes_table,
    parse_plots,
    render_page,
    rules_table,
)
from tests.dvc_repo import REPO, environment, run

SCORES = {"mean_dice": 0.9, "per_class": {"1": 0.95, "2": 0.85}}
EVALUATION = {
    "gating": "image",
    "threshold": 0.7,
    "test_images": 10,
    "rules": {"1": {"threshold": 0.4, "min_area_px": 500}, "2": {"threshold": 0.1, "min_area_px": 2**31 - 1}},
    "holdout": {
        "images": 8,
        "empty": {"mean_dice": 0.5, "per_class": {"1": 0.5, "2": 0.5}},
        "segmentation": {"mean_dice": 0.8, "per_class": {"1": 0.7, "2": 0.9}},
        "gated": SCORES,
    },
    "gating_modes": {"none": {"holdout": {"mean_dice": 0.8}}, "image": {"holdout": SCORES, "test": SCORES}},
}


def test_dice_table_rows_are_the_three_submissions() -> None:
    table = dice_table(EVALUATION, "holdout")
    assert table is not None
    assert table.title == "Dice on the holdout images (8)"
    assert table.header == ["submission", "mean", "class 1", "class 2"]
    assert table.rows == [
        ["all empty", "0.5000", "0.500", "0.500"],
        ["U-Net alone", "0.8000", "0.700", "0.900"],
        ["gated (image)", "0.9000", "0.950", "0.850"],
    ]


def test_no_test_truth_no_test_table() -> None:
    assert dice_table(EVALUATION, "test") is None


def test_modes_mark_the_chosen_one_and_dash_what_is_missing() -> None:
    table = modes_table(EVALUATION)
    assert table is not None
    assert table.rows == [["none", "0.8000", "\u2014"], ["image (chosen)", "0.9000", "0.9000"]]


def test_a_switched_off_class_reads_off() -> None:
    table = rules_table(EVALUATION, 2**31 - 1)
    assert table is not None
    assert table.rows == [["class 1", "0.40", "500"], ["class 2", "0.10", "off"]]


def test_cost_table_sums_time_and_takes_the_largest_peak() -> None:
    table = cost_table(
        {
            "classifier": {
                "val_auc": 0.9,
                "train_images_per_s": 2.5,
                "wall_time_s": 100.0,
                "peak_memory_mb": 900,
            },
            "threshold": {"auc": 0.9},
            "segment": {"wall_time_s": 50.5, "peak_memory_mb": 1200.4, "test_images_per_s": 3.0},
        }
    )
    assert table is not None
    assert [row[0] for row in table.rows] == ["classifier", "segment", "whole run"]
    assert table.rows[0][3] == "train 2.50"
    assert table.rows[-1][1:3] == ["150.5", "1200"]
    assert cost_table({"threshold": {"auc": 0.9}}) is None


def test_plots_are_grouped_in_section_order_and_none_is_dropped() -> None:
    plots = [
        Plot("data/live/segment/plots/metrics/fold_0/dice.tsv", spec={}),
        Plot("something new", spec={}),
        Plot("data/live/classifier/plots/metrics/fold_0/loss.tsv", spec={}),
        Plot("ROC of detecting defective images (out-of-fold)", spec={}),
    ]
    sections = grouped(plots)
    titles = [title for title, _ in sections]
    assert titles[0] == "allMissing classifier: training curves"
    assert titles[-1] == OTHER_SECTION
    assert sorted(plot.plot_id for _, found in sections for plot in found) == sorted(p.plot_id for p in plots)


def test_parse_plots_rejects_other_json() -> None:
    with pytest.raises(ValueError, match="dvc plots show --json"):
        parse_plots({"plots": []})
    shown = {
        "data": {
            "a.tsv": [{"type": "vega", "revisions": ["workspace"], "content": {"mark": "line"}}],
            "b.png": [{"type": "image", "revisions": ["workspace"], "url": "/x/b.png"}],
        }
    }
    assert parse_plots(shown) == [Plot("a.tsv", spec={"mark": "line"}), Plot("b.png", image_path="/x/b.png")]


def test_page_is_self_contained_and_a_title_cannot_end_its_script() -> None:
    read: list[str] = []

    def read_image(path: str) -> bytes:
        read.append(path)
        return b"\x89PNG fake"

    page = Page(
        "run",
        [("commit", "abc <b>")],
        [Table("t", ["a"], [["1"]])],
        [
            Plot("x.tsv", spec={"title": "</script><b>"}),
            Plot("data/plots/segment/holdout_1.png", image_path="/p.png"),
        ],
    )
    text = render_page(page, "window.vegaEmbed = function () {};", read_image)
    assert read == ["/p.png"]
    assert 'src="data:image/png;base64,' in text
    assert "</script><b>" not in text  # escaped inside the spec
    assert "abc &lt;b&gt;" in text
    assert text.count("vegaEmbed(") == 1
    assert not re.search(r'src="(?!data:)', text)


def test_each_gallery_gets_its_heading_and_images_keep_rank_order() -> None:
    plots = [
        Plot("data/plots/inspect/gate/wiped_defective/02_b.png", image_path="/b.png"),
        Plot("Gate on the holdout images (actual vs the gate's verdict)", spec={}),
        Plot("data/plots/inspect/gate/kept_clean/01_c.png", image_path="/c.png"),
        Plot("data/plots/inspect/gate/wiped_defective/01_a.png", image_path="/a.png"),
    ]
    text = render_page(Page("run", [], [], plots), "", lambda path: b"")
    order = [text.index(name) for name in ("gate/kept_clean/01_c", "gate/wiped_defective/01_a", "02_b")]
    assert order == sorted(order)
    assert (
        text.count("<h4>inspect/gate/wiped_defective</h4>") == 1
        and text.count("<h4>inspect/gate/kept_clean</h4>") == 1
    )
    assert text.index("vegaEmbed(") < order[0]  # the confusion matrix heads its section


@pytest.fixture(scope="module")
def report(dag_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    out = tmp_path_factory.mktemp("report")
    command = [
        sys.executable,
        "-m",
        "stages.report",
        "--out",
        str(out / "index.html"),
        "--docs",
        str(out / "docs"),
    ]
    done = subprocess.run(command, cwd=dag_repo, env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out / "index.html", out / "docs", done.stdout


def test_report_holds_every_plot_of_dvc_plots_show(dag_repo: Path, report: tuple[Path, Path, str]) -> None:
    page, _, _ = report
    text = page.read_text(encoding="utf-8")
    shown = json.loads(
        run(dag_repo, "dvc", "plots", "show", "--json", "-o", str(page.parent / "shown")).stdout
    )
    plots = parse_plots(shown)
    vega = [plot for plot in plots if plot.spec is not None]
    images = [plot for plot in plots if plot.image_path is not None]
    assert vega and images
    assert text.count('vegaEmbed("#plot') == len(vega)
    assert text.count("<figure>") == len(images)
    # One file: no image, script or style fetched from anywhere (the inlined Vega bundle's own code has
    # src= and href= strings, so look at the page outside its scripts; no script element has a src).
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert not re.search(r'(src|href)="(?!data:)', markup)
    assert "<script src" not in text and "https://cdn" not in text
    for heading in (
        "Dice on the holdout images",
        "Dice on the test images",
        "Per-class rules",
        "Time and memory",
    ):
        assert heading in text


def test_report_docs_pictures(report: tuple[Path, Path, str]) -> None:
    _, docs, stdout = report
    pictures = sorted(docs.glob("*.png"))
    assert pictures
    assert all(str(path) in stdout for path in pictures)
    for path in pictures:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[1] <= 1000, path


def test_report_without_a_run_is_one_line(tmp_path: Path) -> None:
    env = {**environment(), "PYTHONPATH": str(REPO)}  # the code, run in a folder without a run
    done = subprocess.run(
        [sys.executable, "-m", "stages.report"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: data/eval.json: not found; run `dvc repro` first"
    assert not (tmp_path / "report").exists()
