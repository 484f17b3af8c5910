"""Repeated seeds (README "Repeated seeds"): `stages.seeds` aggregates finished DVC experiments from
`dvc exp show --json`. The pure functions on JSON built in DVC 3.67's exp-show shape with the headline
metrics files; the command on saved JSON; and a tiny queue of two seeds on the session's DAG."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from stages import seeds
from stages.core import cli
from stages.core.errors import PipelineError
from stages.core.experiments import (
    RUN_TOTALS,
    Metric,
    default_metrics,
    experiments,
    lookup,
    markdown,
    parse_metric,
    select,
    summarize,
)
from tests.dvc_repo import REPO, run

POSTPROCESS = "data/metrics/postprocess.json"
CLASSIFIER = "data/metrics/classifier.json"
THRESHOLD = "data/metrics/threshold.json"
SEGMENT = "data/metrics/segment.json"
SCORE_TRAIN = "data/metrics/score_train.json"
BASELINE = "b" * 40
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


# --- JSON in the shape of DVC 3.67 `dvc exp show --json` -----------------------------------------------


def revision(rev: str, name: str | None, metrics: dict[str, Any], error: Any = None) -> dict[str, Any]:
    files = {path: content if "error" in content else {"data": content} for path, content in metrics.items()}
    data = {
        "rev": rev,
        "timestamp": "2026-11-26T08:51:17",
        "params": {"params.yaml": {"data": {"segment": {"seed": 1}}}},
        "metrics": files,
        "deps": {},
        "outs": {},
        "meta": {},
    }
    return {"rev": rev, "name": name, "data": data, "error": error, "experiments": None}


def experiment(name: str, metrics: dict[str, Any], state: str | None = "success") -> dict[str, Any]:
    """One experiment range; state None: no executor (an experiment run in the workspace)."""
    rev = (name.encode().hex() * 40)[:40]
    error = {"msg": "Experiment run failed", "type": ""} if state == "failed" else None
    executor = None
    if state is not None:
        executor = {
            "state": state,
            "name": "dvc-task" if state != "failed" else None,
            "local": {"root": None, "log": f"/repo/.dvc/tmp/exps/run/{rev}.out", "pid": 1, "returncode": 0},
        }
    return {"revs": [revision(rev, name, metrics, error)], "executor": executor, "name": name}


def exp_show(*ranges: dict[str, Any], baseline: str = BASELINE) -> list[dict[str, Any]]:
    base = schema_metrics(42)
    return [
        revision("workspace", None, base),
        {**revision(baseline, "main", base), "experiments": list(ranges)},
    ]


def schema_metrics(seed: int, test_truth: bool = True) -> dict[str, dict[str, float]]:
    """The headline metrics files of one run (docs: notes/metrics_schema.md), values derived from `seed`."""
    dice = 0.90 + seed / 100
    post = {
        "threshold": 0.7,
        "holdout_dice_empty": 0.86,
        "holdout_dice_unet": dice - 0.01,
        "holdout_dice_gated": dice,
        **{f"holdout_dice_gated_{k}": dice + k / 1000 for k in range(1, 5)},
    }
    if test_truth:
        post |= {
            "test_dice_empty": 0.85,
            "test_dice_unet": dice - 0.02,
            "test_dice_gated": dice - 0.005,
            **{f"test_dice_gated_{k}": dice - k / 1000 for k in range(1, 5)},
        }
    return {
        CLASSIFIER: {
            "val_auc": 0.95 + seed / 1000,
            "val_loss": 0.3,
            "val_accuracy": 0.9,
            "train_images_per_s": 1.0,
            "wall_time_s": 100.0 * seed,
            "peak_memory_mb": 2000.0 + seed,
        },
        SCORE_TRAIN: {"images_per_s": 3.0, "wall_time_s": 10.0, "peak_memory_mb": 1500.0},
        THRESHOLD: {"threshold": 0.8, "auc": 0.96 + seed / 1000, "gating_dice": 1.0, "all_empty_dice": 0.87},
        SEGMENT: {
            "holdout_dice": dice,
            "val_loss": 0.4,
            "wall_time_s": 50.0,
            "peak_memory_mb": 2100.0 + 100 * seed,
        },
        POSTPROCESS: post,
    }


def by_label(summaries: list[Any]) -> dict[str, Any]:
    return {summary.metric.label: summary for summary in summaries}


# --- the pure functions ----------------------------------------------------------------------------------


def test_default_metrics_follow_the_schema_and_aggregate_over_the_seeds() -> None:
    shown = exp_show(*(experiment(f"seed-{seed}", schema_metrics(seed)) for seed in (3, 1, 2)))
    selected, skipped = select(experiments(shown))
    assert [exp.name for exp in selected] == ["seed-1", "seed-2", "seed-3"]
    assert skipped == []
    metrics = default_metrics(selected)
    assert [m.label for m in metrics] == [
        f"{POSTPROCESS}:holdout_dice_gated",
        *(f"{POSTPROCESS}:holdout_dice_gated_{k}" for k in range(1, 5)),
        f"{POSTPROCESS}:test_dice_gated",
        *(f"{POSTPROCESS}:test_dice_gated_{k}" for k in range(1, 5)),
        f"{CLASSIFIER}:val_auc",
        f"{THRESHOLD}:auc",
    ]
    found = by_label(summarize(selected, [*metrics, *RUN_TOTALS], allow_missing=False))
    gated = found[f"{POSTPROCESS}:holdout_dice_gated"]
    assert gated.n == 3
    assert gated.stats() == pytest.approx({"mean": 0.92, "std": 0.01, "min": 0.91, "max": 0.93})
    assert found[f"{POSTPROCESS}:test_dice_gated_4"].stats()["mean"] == pytest.approx(0.916)
    assert found[f"{THRESHOLD}:auc"].stats()["max"] == pytest.approx(0.963)
    # Wall time: classifier 100 x seed + score_train 10 + segment 50; peak memory: the segment stage's.
    wall = found["sum of wall_time_s over metrics files"]
    assert wall.values == pytest.approx({"seed-1": 160.0, "seed-2": 260.0, "seed-3": 360.0})
    assert wall.stats() == pytest.approx({"mean": 260.0, "std": 100.0, "min": 160.0, "max": 360.0})
    peak = found["max of peak_memory_mb over metrics files"]
    assert peak.values == pytest.approx({"seed-1": 2200.0, "seed-2": 2300.0, "seed-3": 2400.0})


def test_test_dice_only_when_the_dataset_has_test_truth() -> None:
    shown = exp_show(*(experiment(f"seed-{s}", schema_metrics(s, test_truth=False)) for s in (1, 2)))
    labels = [m.label for m in default_metrics(select(experiments(shown))[0])]
    assert not [label for label in labels if ":test_" in label]
    assert f"{POSTPROCESS}:holdout_dice_gated_4" in labels


def test_failed_queued_and_running_experiments_are_skipped_and_reported() -> None:
    shown = exp_show(
        experiment("seed-1", schema_metrics(1)),
        experiment("seed-2", schema_metrics(2), state=None),  # run in the workspace: finished
        experiment("seed-3", schema_metrics(42), state="failed"),  # shows the baseline's metrics
        experiment("seed-4", schema_metrics(42), state="queued"),
        experiment("seed-5", schema_metrics(5), state="running"),
    )
    found = experiments(shown)
    assert [exp.baseline for exp in found] == [BASELINE] * 5  # not the workspace nor the baseline itself
    selected, skipped = select(found, ["seed-*"])
    assert [exp.name for exp in selected] == ["seed-1", "seed-2"]
    assert [(exp.name, exp.state) for exp in skipped] == [
        ("seed-3", "failed"),
        ("seed-4", "queued"),
        ("seed-5", "running"),
    ]
    summaries = summarize(selected, [Metric(POSTPROCESS, "holdout_dice_gated")], allow_missing=False)
    text = markdown(summaries, selected, skipped)
    assert "2 experiments: seed-1, seed-2" in text
    assert "skipped 3 not finished: 1 failed (seed-3); 1 queued (seed-4); 1 running (seed-5)" in text
    assert f"| {POSTPROCESS}:holdout_dice_gated | 2 | 0.9150 | 0.0071 | 0.9100 | 0.9200 |" in text


def test_a_failed_run_without_executor_info_counts_as_failed() -> None:
    failed = experiment("seed-1", schema_metrics(1), state=None)
    failed["revs"][0]["error"] = {"msg": "Experiment run failed", "type": ""}
    assert [exp.state for exp in experiments(exp_show(failed))] == ["failed"]


def test_names_select_by_pattern_in_natural_order() -> None:
    shown = exp_show(
        *(experiment(name, schema_metrics(1)) for name in ("seed-10", "seed-2", "lr-high", "seed-1"))
    )
    selected, _ = select(experiments(shown), ["seed-*"])
    assert [exp.name for exp in selected] == ["seed-1", "seed-2", "seed-10"]
    assert [exp.name for exp in select(experiments(shown), ["lr-*", "seed-1"])[0]] == ["lr-high", "seed-1"]
    assert len(select(experiments(shown))[0]) == 4


def test_a_name_repeated_under_two_baselines_is_told_apart() -> None:
    shown = [
        *exp_show(experiment("seed-1", schema_metrics(1))),
        *exp_show(experiment("seed-1", schema_metrics(2)), baseline="c" * 40)[1:],
    ]
    assert sorted(exp.name for exp in experiments(shown)) == ["seed-1@bbbbbbb", "seed-1@ccccccc"]
    # On one commit: a failed task still queued beside the experiment rerun under its name.
    rerun = exp_show(
        experiment("seed-1", schema_metrics(1)), experiment("seed-1", schema_metrics(42), "failed")
    )
    assert [(exp.name, exp.state) for exp in experiments(rerun)] == [
        ("seed-1", "success"),
        ("seed-1", "failed"),
    ]


def test_a_missing_metric_names_the_experiment_unless_allowed() -> None:
    partial = schema_metrics(2)
    del partial[POSTPROCESS]["holdout_dice_gated_4"]
    unreadable = schema_metrics(3)
    unreadable[THRESHOLD] = {"error": {"type": "JSONDecodeError", "msg": "Expecting value"}}
    selected, _ = select(
        experiments(
            exp_show(
                experiment("seed-1", schema_metrics(1)),
                experiment("seed-2", partial),
                experiment("seed-3", unreadable),
            )
        )
    )
    metrics = default_metrics(selected)
    with pytest.raises(PipelineError, match=rf"^experiment seed-2: no {POSTPROCESS}:holdout_dice_gated_4 "):
        summarize(selected, metrics, allow_missing=False)
    found = by_label(summarize(selected, metrics, allow_missing=True))
    class_4 = found[f"{POSTPROCESS}:holdout_dice_gated_4"]
    assert (class_4.n, class_4.missing) == (2, ["seed-2"])
    assert class_4.stats()["mean"] == pytest.approx((0.914 + 0.934) / 2)
    assert found[f"{THRESHOLD}:auc"].missing == ["seed-3"]
    assert "missing in seed-2" in markdown(list(found.values()), selected, [])
    # A metric no experiment has is a typo, even with allow_missing.
    with pytest.raises(PipelineError, match=r"^data/metrics/segment.json:val_dice: in none of the 3 "):
        summarize(selected, [Metric(SEGMENT, "val_dice")], allow_missing=True)


def test_a_value_that_is_not_a_number_is_an_error() -> None:
    odd = schema_metrics(1)
    odd[CLASSIFIER]["val_auc"] = "n/a"  # type: ignore[assignment]
    selected, _ = select(experiments(exp_show(experiment("seed-1", odd))))
    with pytest.raises(
        PipelineError, match=r"^experiment seed-1: data/metrics/classifier.json:val_auc is 'n/a'"
    ):
        summarize(selected, default_metrics(selected), allow_missing=True)


def test_one_experiment_has_no_standard_deviation() -> None:
    selected, _ = select(experiments(exp_show(experiment("seed-1", schema_metrics(1)))))
    (summary,) = summarize(selected, [Metric(CLASSIFIER, "val_auc")], allow_missing=False)
    assert summary.stats() == pytest.approx({"mean": 0.951, "std": None, "min": 0.951, "max": 0.951})
    assert "| 1 | 0.9510 | - | 0.9510 | 0.9510 |" in markdown([summary], selected, [])


def test_dotted_keys_walk_nested_metrics() -> None:
    data = {"holdout": {"gated": {"mean_dice": 0.9, "per_class": {"3": 0.8}}}, "a.b": 1, "a": {"c": 2}}
    assert lookup(data, "holdout.gated.mean_dice") == 0.9
    assert lookup(data, "holdout.gated.per_class.3") == 0.8
    assert lookup(data, "a.b") == 1  # a key holding a dot, matched whole
    assert lookup(data, "a.c") == 2
    for absent in ("holdout.gated.mean_dice.x", "holdout.ungated", "nope", "a.d"):
        with pytest.raises(KeyError):
            lookup(data, absent)


def test_metric_options_parse_file_and_key() -> None:
    assert parse_metric("data/eval.json:holdout.gated.mean_dice") == Metric(
        "data/eval.json", "holdout.gated.mean_dice"
    )
    for bad in ("holdout_dice_gated", ":auc", "data/eval.json:"):
        with pytest.raises(ValueError, match="expected FILE:KEY"):
            parse_metric(bad)


@pytest.mark.parametrize(
    ("shown", "problem"),
    [
        ({"rev": "workspace"}, "expected a list of revisions"),
        (["workspace"], "revision 1 is not an object"),
        ([{"name": "main"}], "revision 1 has no rev"),
        ([{"rev": BASELINE, "experiments": {"seed-1": {}}}], "bad experiments"),
        ([{"rev": BASELINE, "experiments": [{"name": "seed-1", "revs": []}]}], "has no revs"),
        ([{"rev": BASELINE, "experiments": [{"revs": [{"name": "x"}]}]}], "has no rev"),
    ],
)
def test_input_that_is_not_exp_show_json_is_an_error(shown: Any, problem: str) -> None:
    with pytest.raises(PipelineError, match=r"^not the JSON of `dvc exp show --json`: .*" + problem):
        experiments(shown)


# --- the command on saved JSON ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


Command = Callable[..., Result]


@pytest.fixture
def seeds_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Command:
    """`python -m stages.seeds ARGS` in this process (a new interpreter per case is slow on a busy CPU)."""

    def call(*args: str, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "argv", ["stages.seeds", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            cli.run(seeds.main)
            code: Any = 0
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def test_command_on_saved_json_file_and_stdin(seeds_command: Command, tmp_path: Path) -> None:
    shown = exp_show(
        experiment("seed-1", schema_metrics(1)),
        experiment("seed-2", schema_metrics(2)),
        experiment("other", schema_metrics(9)),
        experiment("seed-3", schema_metrics(3), state="failed"),
    )
    saved = tmp_path / "exp_show.json"
    saved.write_text(json.dumps(shown))
    result = seeds_command("--input", str(saved), "--name", "seed-*")
    assert result.returncode == 0, result.stderr
    assert f"| {POSTPROCESS}:holdout_dice_gated | 2 | 0.9150 | 0.0071 | 0.9100 | 0.9200 |" in result.stdout
    assert "| sum of wall_time_s over metrics files | 2 | 210.0 | 70.7 | 160.0 | 260.0 |" in result.stdout
    assert "skipped 1 not finished: 1 failed (seed-3)" in result.stdout

    piped = seeds_command(
        "--input", "-", "--name", "seed-*", "--metric", f"{SEGMENT}:holdout_dice", "--no-totals", "--json",
        stdin=json.dumps(shown),
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    report = json.loads(piped.stdout)
    assert [exp["name"] for exp in report["experiments"]] == ["seed-1", "seed-2"]
    assert [(exp["name"], exp["state"]) for exp in report["skipped"]] == [("seed-3", "failed")]
    (metric,) = report["metrics"]
    assert metric["metric"] == f"{SEGMENT}:holdout_dice"
    assert metric["n"] == 2
    assert metric["values"] == pytest.approx({"seed-1": 0.91, "seed-2": 0.92})
    assert metric["std"] == pytest.approx(math.sqrt(2) * 0.005)


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("not json", (), "error: stdin: not JSON (Expecting value at line 1)"),
        (
            '{"rev": "workspace"}',
            (),
            "error: stdin: not the JSON of `dvc exp show --json`: expected a list of revisions",
        ),
        (json.dumps(exp_show()), (), "error: no finished experiment in stdin (0 not finished, 0 in all)"),
        (
            json.dumps(exp_show(experiment("seed-1", schema_metrics(1), state="queued"))),
            ("--name", "seed-*"),
            "error: no finished experiment named seed-* in stdin (1 not finished, 1 in all)",
        ),
        (
            json.dumps(exp_show(experiment("seed-1", {CLASSIFIER: {"val_auc": 0.9}}))),
            ("--metric", f"{CLASSIFIER}:val_auc"),
            "error: sum of wall_time_s over metrics files: in none of the 1 experiments",
        ),
    ],
)
def test_bad_input_is_one_line(
    seeds_command: Command, stdin: str, args: tuple[str, ...], message: str
) -> None:
    result = seeds_command("--input", "-", *args, stdin=stdin)
    assert result.returncode == 1
    assert result.stderr.strip() == message


def test_unreadable_input_file_and_bad_metric_option(seeds_command: Command, tmp_path: Path) -> None:
    result = seeds_command("--input", str(tmp_path / "absent.json"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'absent.json'}: cannot read")
    assert len(result.stderr.strip().splitlines()) == 1
    result = seeds_command("--metric", "holdout_dice_gated")
    assert result.returncode == 2
    assert "expected FILE:KEY" in result.stderr


def test_the_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stages.seeds", "--input", "-"],
        cwd=REPO,
        input="[{]",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert (
        result.stderr
        == "error: stdin: not JSON (Expecting property name enclosed in double quotes at line 1)\n"
    )


# --- a tiny queue of two seeds on the session's DAG ----------------------------------------------------

SEEDS = (1, 2)
NAMES = [f"seed-{seed}" for seed in SEEDS]


def schema_merged(repo: Path) -> bool:
    return (repo / POSTPROCESS).exists()


def explicit_metrics(repo: Path) -> list[tuple[str, str]]:
    """(file, key) of metrics the DAG writes, the segment's validation loss first, a classifier's last.
    Before the headline metrics files, nested ones through dotted keys."""
    if schema_merged(repo):
        return [
            (SEGMENT, "val_loss"),
            (SEGMENT, "holdout_dice"),
            (POSTPROCESS, "holdout_dice_unet"),
            (CLASSIFIER, "val_loss"),
        ]
    return [
        ("data/segment_metrics.json", "val_loss"),
        ("data/segment_metrics.json", "holdout_dice"),
        ("data/eval.json", "holdout.gated.mean_dice"),
        ("data/eval.json", "holdout.gated.per_class.3"),
        ("data/classifier_metrics.json", "val_auc"),
    ]


def metric_options(metrics: list[tuple[str, str]]) -> list[str]:
    return [option for path, key in metrics for option in ("--metric", f"{path}:{key}")]


@pytest.fixture(scope="module")
def queued(dag_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the session's DAG, committed, and `make seeds N=2` varying segment.seed only, up to
    postprocess (segment and postprocess rerun, both experiments at once): (the repo, make's output)."""
    started = time.monotonic()
    repo = tmp_path_factory.mktemp("seeds") / "repo"
    shutil.copytree(dag_repo, repo, symlinks=True)
    run(repo, "git", "add", "-A")
    run(repo, *GIT, "commit", "-qm", "the tiny DAG, reproduced")
    # The Makefile's recipe with this interpreter's venv (-o: never install into it); its table shows the
    # default metrics once the headline metrics files exist.
    venv = Path(sys.prefix)
    table_args = "" if schema_merged(repo) else " ".join(metric_options(explicit_metrics(repo)))
    made = run(
        repo, "make", "-o", str(venv / ".installed"), "seeds", f"VENV={venv}", "N=2", "FROM=1", "JOBS=2",
        "SEED_PARAMS=segment.seed", "TARGETS=postprocess", f"SEEDS_ARGS={table_args}",
    )  # fmt: skip
    print(f"make seeds N=2 on the tiny DAG: {time.monotonic() - started:.0f} s")
    return repo, made.stdout


def exp_show_csv(repo: Path) -> pd.DataFrame:
    """The experiments' metrics as DVC's CSV lists them (read apart from the JSON stages.seeds parses)."""
    table = pd.read_csv(io.StringIO(run(repo, "dvc", "exp", "show", "--csv").stdout))
    return table[table["Experiment"].isin(NAMES)].set_index("Experiment")


def column(table: pd.DataFrame, path: str, key: str) -> dict[str, float]:
    """A metric's column: the key alone, or FILE:KEY when two files share the key."""
    name = f"{path}:{key}" if f"{path}:{key}" in table.columns else key
    return {exp: float(table.loc[exp, name]) for exp in NAMES}


def totals(table: pd.DataFrame, key: str) -> list[list[float]]:
    """Per experiment, every metrics file's top-level `key`."""
    names = [name for name in table.columns if name == key or name.endswith(f":{key}")]
    assert names, f"no metrics file has {key}"
    return [
        [float(table.loc[exp, name]) for name in names if pd.notna(table.loc[exp, name])] for exp in NAMES
    ]


def check(row: dict[str, Any], values: list[float]) -> None:
    assert row["n"] == len(values) == 2, row
    assert row["mean"] == pytest.approx(sum(values) / 2, rel=1e-12), row
    assert row["min"] == pytest.approx(min(values), rel=1e-12), row
    assert row["max"] == pytest.approx(max(values), rel=1e-12), row
    assert row["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), rel=1e-9, abs=1e-12), row


def seeds_report(repo: Path, *args: str) -> dict[str, Any]:
    return json.loads(run(repo, "python", "-m", "stages.seeds", "--name", "seed-*", "--json", *args).stdout)


def test_tiny_queue_aggregates_both_seeds(queued: tuple[Path, str]) -> None:
    repo, made = queued
    assert "2 experiments: seed-1, seed-2\n" in made  # make's table
    table = exp_show_csv(repo)
    assert sorted(table.index) == NAMES
    assert (table["State"] == "Success").all(), table["State"]
    metrics = explicit_metrics(repo)
    # The seed reached the U-Net: its validation loss differs between the two runs.
    losses = column(table, *metrics[0])
    assert losses["seed-1"] != losses["seed-2"], losses

    report = seeds_report(repo, *metric_options(metrics))
    assert [exp["name"] for exp in report["experiments"]] == NAMES
    assert report["skipped"] == []
    rows = {row["metric"]: row for row in report["metrics"]}
    assert list(rows) == [
        *(f"{path}:{key}" for path, key in metrics),
        "sum of wall_time_s over metrics files",
        "max of peak_memory_mb over metrics files",
    ]
    for path, key in metrics:
        values = column(table, path, key)
        assert rows[f"{path}:{key}"]["values"] == pytest.approx(values)
        check(rows[f"{path}:{key}"], list(values.values()))
    check(rows["sum of wall_time_s over metrics files"], [sum(v) for v in totals(table, "wall_time_s")])
    check(rows["max of peak_memory_mb over metrics files"], [max(v) for v in totals(table, "peak_memory_mb")])
    # The classifier did not rerun: both experiments restored its one run.
    assert rows[":".join(metrics[-1])]["std"] == 0


def test_tiny_queue_default_metrics(queued: tuple[Path, str]) -> None:
    repo, made = queued
    if not (repo / POSTPROCESS).exists():
        pytest.skip(f"{POSTPROCESS} does not exist here: the headline metrics schema is not merged yet")
    assert f"| {POSTPROCESS}:holdout_dice_gated | 2 |" in made  # make's table: the default metrics
    table = exp_show_csv(repo)
    report = seeds_report(repo)
    rows = {row["metric"]: row for row in report["metrics"]}
    expected = [
        f"{POSTPROCESS}:holdout_dice_gated",
        *(f"{POSTPROCESS}:holdout_dice_gated_{k}" for k in range(1, 5)),
        f"{CLASSIFIER}:val_auc",
        f"{THRESHOLD}:auc",
    ]
    if any(name.endswith("test_dice_gated") for name in table.columns):  # the synthetic data has test truth
        expected[5:5] = [
            f"{POSTPROCESS}:test_dice_gated",
            *(f"{POSTPROCESS}:test_dice_gated_{k}" for k in range(1, 5)),
        ]
    assert list(rows)[: len(expected)] == expected
    for label in expected:
        path, _, key = label.rpartition(":")
        check(rows[label], list(column(table, path, key).values()))
    check(rows["sum of wall_time_s over metrics files"], [sum(v) for v in totals(table, "wall_time_s")])
    check(rows["max of peak_memory_mb over metrics files"], [max(v) for v in totals(table, "peak_memory_mb")])
