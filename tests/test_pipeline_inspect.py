"""Stage inspect through `dvc repro` (the session's `dag_repo`): the galleries, the confusion and scatter
CSVs, the metrics and detail, their consistency with each other and with postprocess, every gating mode's gate
errors (none: empty galleries), and `dvc plots show` rendering the new plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import DAG_PARAMS
from tests.dvc_repo import params_overridden, run

GALLERY = DAG_PARAMS["inspect"]["gallery_images"]
PLOTS = Path("data/plots/inspect")
METRIC_KEYS = {"classifier_auc", "gmm_auc", "gate_wiped_defective", "gate_kept_clean", "wall_time_s"}
PLOT_IDS = (
    "Gate on the holdout images (actual vs the gate's verdict)",
    "Classifier features of its validation images, PCA (colour = defect class)",
)


def read(repo: Path, name: str) -> dict:
    return json.loads((repo / name).read_text())


def holdout_ids(repo: Path) -> list[str]:
    frame = pd.read_csv(repo / "data/holdout_candidates.csv", dtype={"ImageId": str})
    return list(dict.fromkeys(frame["ImageId"]))


def pictures(repo: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (repo / PLOTS / folder).glob("*.png"))


def off_diagonal(frame: pd.DataFrame) -> tuple[int, int]:
    wiped = int(((frame["actual"] == "defective") & (frame["predicted"] == "clean")).sum())
    kept = int(((frame["actual"] == "clean") & (frame["predicted"] == "defective")).sum())
    return wiped, kept


def check_gate_outputs(repo: Path) -> dict:
    """What every gating mode's outputs must agree on; returns the metrics."""
    metrics = read(repo, "data/metrics/inspect.json")
    detail = read(repo, "data/inspect.json")
    assert set(metrics) == METRIC_KEYS and all(isinstance(v, (int, float)) for v in metrics.values())
    wiped, kept = metrics["gate_wiped_defective"], metrics["gate_kept_clean"]
    assert (detail["gate"]["wiped_defective"], detail["gate"]["kept_clean"]) == (wiped, kept)
    # The folders hold the first `gallery_images` errors, the metrics count them all.
    assert len(pictures(repo, "gate/wiped_defective")) == min(wiped, GALLERY)
    assert len(pictures(repo, "gate/kept_clean")) == min(kept, GALLERY)
    listed = [entry["file"] for entry in detail["gate"]["wiped_defective_gallery"]]
    assert listed == [f"gate/wiped_defective/{name}" for name in pictures(repo, "gate/wiped_defective")]
    confusion = pd.read_csv(repo / PLOTS / "gate_confusion.csv", dtype=str, keep_default_na=False)
    assert list(confusion.columns) == ["ImageId", "actual", "predicted"]
    if detail["gate"]["unit"] is None:  # no gate: no verdict, no error
        assert confusion.empty and (wiped, kept) == (0, 0)
    else:
        assert confusion["ImageId"].tolist() == holdout_ids(repo)  # every holdout image once
        assert set(confusion["actual"]) | set(confusion["predicted"]) <= {"defective", "clean"}
        assert off_diagonal(confusion) == (wiped, kept)
        truth = pd.read_csv(repo / "data/prepared/train.csv", dtype=str, keep_default_na=False)
        defective = truth.set_index("ImageId").loc[confusion["ImageId"], "has_defect"] == "True"
        assert ((confusion["actual"] == "defective").to_numpy() == defective.to_numpy()).all()
    return metrics


def test_outputs_and_their_consistency(dag_repo: Path) -> None:
    metrics = check_gate_outputs(dag_repo)
    detail = read(dag_repo, "data/inspect.json")
    rules = read(dag_repo, "data/rules.json")
    assert detail["gating"] == rules["gating"] == "image"
    # The image gate's verdict: wiped exactly where allMissing >= the threshold postprocess chose.
    scores = pd.read_csv(dag_repo / "data/train_missing_count.csv", dtype={"ImageId": str}).set_index(
        "ImageId"
    )
    confusion = pd.read_csv(dag_repo / PLOTS / "gate_confusion.csv", dtype=str)
    wiped = scores.loc[confusion["ImageId"], "allMissing"].to_numpy() >= rules["image_threshold"]
    assert ((confusion["predicted"] == "clean").to_numpy() == wiped).all()
    # Worst first: the wiped defective images by decreasing allMissing, the kept clean ones increasing.
    shown = [entry["allMissing"] for entry in detail["gate"]["wiped_defective_gallery"]]
    assert shown == sorted(shown, reverse=True)
    shown = [entry["allMissing"] for entry in detail["gate"]["kept_clean_gallery"]]
    assert shown == sorted(shown)
    # Without class gating the per-class confusion files exist but are empty (nothing for DVC to draw).
    for k in range(1, 5):
        frame = pd.read_csv(dag_repo / PLOTS / f"class_gate_confusion/class_{k}.csv")
        assert frame.empty and list(frame.columns) == ["ImageId", "actual", "predicted"]
    assert metrics["wall_time_s"] > 0
    print(f"inspect on the tiny DAG: {metrics['wall_time_s']} s")
    assert "up to date" in run(dag_repo, "dvc", "status").stdout


def test_lowest_dice_galleries_match_postprocess(dag_repo: Path) -> None:
    detail = read(dag_repo, "data/inspect.json")
    evaluation = read(dag_repo, "data/eval.json")
    holdout = set(holdout_ids(dag_repo))
    for k in range(1, 5):
        report = detail["segmentation"][str(k)]
        # The Dice inspect ranks is the one postprocess scored for the chosen mode.
        assert report["mean_dice"] == pytest.approx(evaluation["holdout"]["gated"]["per_class"][str(k)])
        gallery = report["gallery"]
        assert len(gallery) == min(report["pairs_considered"], GALLERY)
        assert [entry["file"] for entry in gallery] == [
            f"dice/class_{k}/{n}" for n in pictures(dag_repo, f"dice/class_{k}")
        ]
        dice = [entry["dice"] for entry in gallery]
        assert dice == sorted(dice) and all(0 <= d < 1 for d in dice)  # a perfect pair is not an error
        for entry in gallery:
            assert entry["ImageId"] in holdout
            assert entry["truth_area"] > 0 or entry["submitted_area"] > 0
            # The picture's mask, predicted again by the fold U-Net, is the scored one (to a pixel or two:
            # another batch can move a probability across the threshold by float noise).
            assert abs(entry["drawn_area"] - entry["submitted_area"]) <= 2 + 0.001 * entry["submitted_area"]


def test_embeddings(dag_repo: Path) -> None:
    scatter = pd.read_csv(dag_repo / PLOTS / "embeddings.csv", dtype={"ImageId": str, "label": str})
    assert list(scatter.columns) == ["ImageId", "label", "pc1", "pc2", "allMissing", "gmm_nll"]
    truth = pd.read_csv(dag_repo / "data/prepared/train.csv", dtype=str, keep_default_na=False).set_index(
        "ImageId"
    )
    detail = read(dag_repo, "data/inspect.json")["embeddings"]
    # The first fold model's validation images, each once: images it never trained on.
    assert detail["fold_model"] == "models/classifier/fold_0.pt" and detail["val_fold"] == 0
    assert sorted(scatter["ImageId"]) == sorted(truth.index[truth["fold"] == "0"])
    assert 0 not in detail["train_folds"]
    expected = truth.loc[scatter["ImageId"], "classes"].map(
        lambda c: "clean" if c == "" else c if "_" not in c else "multi"
    )
    assert (scatter["label"].to_numpy() == expected.to_numpy()).all()
    ratio = detail["pca_explained_variance_ratio"]
    assert ratio[0] >= ratio[1] >= 0 and sum(ratio) <= 1 + 1e-9
    # The scores beside the features are the fold model's own out-of-fold scores (score_train's).
    scores = pd.read_csv(dag_repo / "data/train_missing_count.csv", dtype={"ImageId": str}).set_index(
        "ImageId"
    )
    np.testing.assert_allclose(scatter["allMissing"], scores.loc[scatter["ImageId"], "allMissing"], atol=1e-6)
    defective = (truth.loc[scatter["ImageId"], "has_defect"] == "True").to_numpy()
    metrics = read(dag_repo, "data/metrics/inspect.json")
    assert metrics["classifier_auc"] == pytest.approx(
        roc_auc_score(defective, 1 - scatter["allMissing"]), abs=1e-6
    )
    assert metrics["gmm_auc"] == pytest.approx(roc_auc_score(defective, scatter["gmm_nll"]))
    assert detail["gmm"]["clean_train_images"] == int(
        ((truth["fold"] != "0") & (truth["has_defect"] == "False")).sum()
    )


def plots_json(repo: Path, out: Path) -> dict:
    """`dvc plots show --json`, its rendered files (images copied) in `out`, not in the repository."""
    return json.loads(run(repo, "dvc", "plots", "show", "--json", "-o", str(out)).stdout)


def test_dvc_plots_show_renders_the_new_plots(dag_repo: Path, tmp_path: Path) -> None:
    shown = plots_json(dag_repo, tmp_path / "json")
    errors = [error for error in shown.get("errors", []) if "inspect" in json.dumps(error)]
    assert errors == []
    data = shown["data"]
    for plot_id in PLOT_IDS:
        assert data[plot_id] and data[plot_id][0]["type"] == "vega", plot_id
    scatter = data[PLOT_IDS[1]][0]["content"]
    assert scatter["encoding"]["color"]["field"] == "label"  # the custom template colours by defect class
    assert len(scatter["data"]["values"]) == len(pd.read_csv(dag_repo / PLOTS / "embeddings.csv"))
    images = [key for key in data if key.startswith(f"{PLOTS}/")]
    on_disk = sorted(str(p.relative_to(dag_repo)) for p in (dag_repo / PLOTS).rglob("*.png"))
    assert sorted(images) == on_disk and on_disk
    assert all(data[key][0]["type"] == "image" for key in images)
    run(dag_repo, "dvc", "plots", "show", "-o", str(tmp_path / "html"))  # the HTML page too
    assert (tmp_path / "html/index.html").is_file()


@pytest.mark.parametrize("gating", ["none", "soft"])
def test_gate_errors_of_the_other_modes(dag_repo: Path, gating: str, tmp_path: Path) -> None:
    with params_overridden(dag_repo, {"postprocess": {"gating": gating}}, restore=()):
        run(dag_repo, "dvc", "repro")
        metrics = check_gate_outputs(dag_repo)
        detail = read(dag_repo, "data/inspect.json")
        assert detail["gating"] == gating
        if gating == "none":
            # No gate: empty galleries, and DVC draws nothing for them without an error.
            assert (metrics["gate_wiped_defective"], metrics["gate_kept_clean"]) == (0, 0)
            assert (dag_repo / PLOTS / "gate/wiped_defective").is_dir()
            assert pictures(dag_repo, "gate/wiped_defective") == pictures(dag_repo, "gate/kept_clean") == []
            shown = plots_json(dag_repo, tmp_path)
            assert [e for e in shown.get("errors", []) if "inspect" in json.dumps(e)] == []
            assert not shown["data"][PLOT_IDS[0]]  # an empty confusion matrix: no plot, no error
        else:
            # The soft gate's verdict is the submission's: defective when a mask of the image is submitted,
            # i.e. its candidate at the class's rule threshold has (1 - allMissing) x area >= the min area.
            assert detail["gate"]["unit"] == "image"
            rules = read(dag_repo, "data/rules.json")["rules"]
            scores = pd.read_csv(dag_repo / "data/train_missing_count.csv", dtype={"ImageId": str})
            all_missing = scores.set_index("ImageId")["allMissing"]
            candidates = pd.read_csv(dag_repo / "data/holdout_candidates.csv", dtype={"ImageId": str})
            submitted = {
                row.ImageId
                for row in candidates.itertuples()
                if np.isclose(row.threshold, rules[str(row.ClassId)]["threshold"])
                and row.pred_area > 0
                and (1 - all_missing[row.ImageId]) * row.pred_area >= rules[str(row.ClassId)]["min_area_px"]
            }
            confusion = pd.read_csv(dag_repo / PLOTS / "gate_confusion.csv", dtype=str)
            assert set(confusion.loc[confusion["predicted"] == "defective", "ImageId"]) == submitted


def test_bad_params_and_inputs_fail_with_one_line(dag_repo: Path) -> None:
    with params_overridden(dag_repo, {"inspect": {"gallery_images": -1}}):
        result = run(dag_repo, "python", "-m", "stages.inspect", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params: inspect.gallery_images must be >= 0, got -1"
    ]
    rules = dag_repo / "data/rules.json"
    original = rules.read_text()
    try:
        rules.write_text(json.dumps({**json.loads(original), "gating": "often"}))
        result = run(dag_repo, "python", "-m", "stages.inspect", check=False)
    finally:
        rules.write_text(original)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: data/rules.json: gating 'often' is not one of none, image, class, soft; "
        "rerun `dvc repro postprocess`"
    ]
    assert "up to date" in run(dag_repo, "dvc", "status").stdout  # nothing was replaced
