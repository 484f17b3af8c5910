"""Stage bundle: models/kaggle/, a folder to upload as a Kaggle dataset, and the notebook that submits.

Severstal takes submissions only from a Kaggle notebook with the internet off. This stage packs what such a
notebook needs and nothing of this repository:
  classifier_fold_*.pt, unet_fold_*.pt   TorchScript: the trained models, loadable with torch alone
                                         (no smp, no project code)
  bundle.json              input sizes, normalisation, TTA, gating mode and thresholds, per-class rules
  predict.py               the self-contained inference script (stages/core/kaggle_predict.py)
  dataset-metadata.json    for `kaggle datasets create -p models/kaggle`
  notebook/submission.ipynb, notebook/kernel-metadata.json
                           for `kaggle kernels push -p models/kaggle/notebook` (GPU on, internet off,
                           the bundle dataset and the competition as sources)
With `verify` the stage then runs predict.py in a separate process on the test images and records in
data/bundle_metrics.json its images/s and whether its submission equals data/submission.csv; the headline
figures (the DVC metrics) go to data/metrics/bundle.json.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.core import cli, inference_ops, kaggle_predict
from stages.core.dataset import parse_labels, read_csv
from stages.core.errors import PipelineError
from stages.core.headline import write_headline
from stages.core.io import atomic_path, read_json, write_json
from stages.core.models import IMAGENET_MEAN, IMAGENET_STD, load_classifier, load_unet, torch_write
from stages.core.params import load_section, require
from stages.core.prepared import Prepared, load_prepared

CLASSIFIER_DIR = Path("models/classifier")
UNET_DIR = Path("models/unet")
RULES_FILE = Path("data/rules.json")
SUBMISSION = Path("data/submission.csv")
BUNDLE_DIR = Path("models/kaggle")
METRICS_FILE = Path("data/bundle_metrics.json")
HEADLINE_FILE = Path("data/metrics/bundle.json")
COMPETITION_TEST_IMAGES = 5506
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]")


@dataclass(frozen=True)
class BundleParams:
    kaggle_user: str = "your-kaggle-username"
    dataset_title: str = "Severstal steel pipeline bundle"
    notebook_title: str = "Severstal steel pipeline submission"
    competition: str = "severstal-steel-defect-detection"
    batch_size: int = 16  # predict.py's default images per batch
    verify: bool = True  # run predict.py on the test images: images/s, equal to data/submission.csv?
    device: str = "cpu"  # predict.py's device for that run

    def validate(self, section: str) -> None:
        require(
            bool(_SLUG.fullmatch(self.kaggle_user)),
            f"{section}.kaggle_user",
            "must be a Kaggle user name (lower-case letters, digits and dashes)",
            self.kaggle_user,
        )
        for name in ("dataset_title", "notebook_title"):
            title = getattr(self, name)
            # Kaggle derives the slug from the title and wants 6 to 50 characters.
            require(6 <= len(title) <= 50, f"{section}.{name}", "must have 6 to 50 characters", title)
            require(bool(_SLUG.fullmatch(slug(title))), f"{section}.{name}", "needs letters or digits", title)
        require(
            bool(_SLUG.fullmatch(self.competition)),
            f"{section}.competition",
            "must be a slug",
            self.competition,
        )
        require(self.batch_size >= 1, f"{section}.batch_size", "must be at least 1", self.batch_size)
        require(
            self.device in ("auto", "cpu", "cuda"),
            f"{section}.device",
            "must be auto, cpu or cuda",
            self.device,
        )

    @property
    def dataset_id(self) -> str:
        return f"{self.kaggle_user}/{slug(self.dataset_title)}"

    @property
    def notebook_id(self) -> str:
        return f"{self.kaggle_user}/{slug(self.notebook_title)}"


def slug(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def fold_paths(folder: Path) -> list[Path]:
    paths = sorted(folder.glob("fold_*.pt"))
    if not paths:
        raise PipelineError(f"{folder}: no fold_*.pt checkpoints; run `dvc repro` first")
    return paths


def trace(model: torch.nn.Module, input_size: tuple[int, int], path: Path) -> None:
    """Save `model` as TorchScript traced at its input size, after checking the traced module gives the
    eager model's exact output."""
    example = torch.rand(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates TorchScript; it still works
        traced = torch.jit.trace(model, example[:1])
        if not torch.equal(traced(example), model(example)):
            raise PipelineError(f"{path.name}: the traced model's output differs from the eager model's")
        torch_write(lambda: torch.jit.save(traced, str(path)), path)


def read_rules(path: Path, num_classes: int) -> dict[str, Any]:
    rules = read_json(path, "run `dvc repro postprocess` first")
    if not isinstance(rules, dict) or sorted(rules.get("rules", {}), key=int) != [
        str(k) for k in range(1, num_classes + 1)
    ]:
        raise PipelineError(f"{path}: expected rules for classes 1..{num_classes}")
    return rules


INLINE_BEGIN = "# inline-begin: stages/core/inference_ops.py\n"
INLINE_END = "# inline-end\n"


def build_predict_script(script: str, ops: str) -> str:
    """predict.py: the script (stages/core/kaggle_predict.py) with its marked import of the shared inference
    pieces replaced by their source (stages/core/inference_ops.py, less its docstring and its __future__
    import, which the script has at its top)."""
    if script.count(INLINE_BEGIN) != 1 or script.count(INLINE_END) != 1:
        raise PipelineError("kaggle_predict.py: expected one inline-begin / inline-end block")
    before, rest = script.split(INLINE_BEGIN)
    _, after = rest.split(INLINE_END)
    body = _without_docstring(ops)
    body = body.replace("from __future__ import annotations\n", "", 1).strip("\n")
    inlined = (
        f"# ---- stages/core/inference_ops.py, inlined by the bundle stage ----\n{body}\n# ---- end ----\n"
    )
    return before + inlined + after


def _without_docstring(source: str) -> str:
    tree = ast.parse(source)
    first = tree.body[0] if tree.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines = source.splitlines(keepends=True)
        return "".join(lines[first.end_lineno :])
    return source


def bundle_config(
    params: BundleParams,
    classifier: list[tuple[str, dict[str, Any]]],
    unets: list[tuple[str, dict[str, Any]]],
    rules: dict[str, Any],
) -> dict[str, Any]:
    """bundle.json: what predict.py needs, from the checkpoints' configs and postprocess's rules."""
    classifier_config, unet_checkpoint = classifier[0][1]["config"], unets[0][1]
    unet_config = unet_checkpoint["config"]
    num_classes = int(unet_config["num_classes"])
    return {
        "bundle_version": kaggle_predict.BUNDLE_VERSION,
        "format": "torchscript",
        "num_classes": num_classes,
        "batch_size": params.batch_size,
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "classifier": {
            "models": [name for name, _ in classifier],
            "backbone": classifier_config["backbone"],
            "head": classifier_config.get("head", "binary"),
            "input_size": list(classifier_config["input_size"]),
        },
        "segmentation": {
            "models": [name for name, _ in unets],
            "encoder": unet_config["encoder"],
            "input_size": list(unet_config["input_size"]),
            "tta": unet_checkpoint["params"]["tta"],
        },
        "gating": {
            "mode": rules["gating"],
            "image_threshold": rules.get("image_threshold"),
            "class_thresholds": rules.get("class_thresholds"),
        },
        "rules": [rules["rules"][str(k)] for k in range(1, num_classes + 1)],
    }


def notebook(params: BundleParams) -> dict[str, Any]:
    """submission.ipynb (nbformat 4): runs the bundle's predict.py on the competition's test images."""
    bundle = f"/kaggle/input/{slug(params.dataset_title)}"
    data = f"/kaggle/input/{params.competition}"
    code = (
        "import subprocess, sys\n"
        f'BUNDLE = "{bundle}"\n'
        f'DATA = "{data}"\n'
        "subprocess.run(\n"
        '    [sys.executable, f"{BUNDLE}/predict.py", "--images", f"{DATA}/test_images",\n'
        '     "--sample", f"{DATA}/sample_submission.csv", "--out", "/kaggle/working/submission.csv",\n'
        '     "--device", "auto"],\n'
        "    check=True,\n"
        ")"
    )
    check = 'import pandas as pd\npd.read_csv("/kaggle/working/submission.csv").head()'
    intro = (
        "# Severstal: classifier-gated U-Net submission\n"
        f"Runs `predict.py` of the dataset `{params.dataset_id}` (built by the pipeline's `bundle` stage) "
        "on the test images, offline. Everything it needs (TorchScript models, `bundle.json`) is in that "
        "dataset."
    )

    def cell(kind: str, source: str) -> dict[str, Any]:
        lines = source.splitlines(keepends=True)
        if kind == "markdown":
            return {"cell_type": "markdown", "metadata": {}, "source": lines}
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": lines}

    return {
        "cells": [cell("markdown", intro), cell("code", code), cell("code", check)],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def dataset_metadata(params: BundleParams) -> dict[str, Any]:
    return {"title": params.dataset_title, "id": params.dataset_id, "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(params: BundleParams) -> dict[str, Any]:
    return {
        "id": params.notebook_id,
        "title": params.notebook_title,
        "code_file": "submission.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,  # the competition's rule
        "dataset_sources": [params.dataset_id],
        "competition_sources": [params.competition],
        "kernel_sources": [],
        "model_sources": [],
    }


def write_bundle(folder: Path, params: BundleParams, num_classes: int) -> dict[str, Any]:
    classifier, unets = [], []
    for prefix, paths, load, models in (
        ("classifier", fold_paths(CLASSIFIER_DIR), load_classifier, classifier),
        ("unet", fold_paths(UNET_DIR), load_unet, unets),
    ):
        for path in paths:
            model, checkpoint = load(path)
            name = f"{prefix}_{path.stem}.pt"
            trace(model, tuple(checkpoint["config"]["input_size"]), folder / name)
            models.append((name, checkpoint))
    config = bundle_config(params, classifier, unets, read_rules(RULES_FILE, num_classes))
    (folder / kaggle_predict.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    script = Path(kaggle_predict.__file__).read_text(encoding="utf-8")
    ops = Path(inference_ops.__file__).read_text(encoding="utf-8")
    (folder / "predict.py").write_text(build_predict_script(script, ops), encoding="utf-8")
    (folder / "dataset-metadata.json").write_text(json.dumps(dataset_metadata(params), indent=2) + "\n")
    (folder / "notebook").mkdir()
    (folder / "notebook/submission.ipynb").write_text(json.dumps(notebook(params), indent=1) + "\n")
    (folder / "notebook/kernel-metadata.json").write_text(
        json.dumps(kernel_metadata(params), indent=2) + "\n"
    )
    return config


def differing_pairs(a: Path, b: Path) -> int:
    """(image, class) pairs whose RLE differs between two submissions of the same images."""
    first = parse_labels(read_csv(a), str(a)).pairs.set_index(["ImageId", "ClassId"])["EncodedPixels"]
    second = parse_labels(read_csv(b), str(b)).pairs.set_index(["ImageId", "ClassId"])["EncodedPixels"]
    first, second = first.align(second, fill_value=None)
    return int((first != second).sum())


def verify(folder: Path, params: BundleParams, prepared: Prepared) -> dict[str, Any]:
    """Run the bundle's predict.py as a Kaggle notebook would (a separate process, from another
    directory) on the test images; its timing and how its submission compares with data/submission.csv."""
    with tempfile.TemporaryDirectory() as scratch:
        out, timing = Path(scratch) / "submission.csv", Path(scratch) / "timing.json"
        command = [
            sys.executable,
            str((folder / "predict.py").resolve()),
            "--images", str(prepared.test_images.resolve()),
            "--sample", str((prepared.root / "sample_submission.csv").resolve()),
            "--out", str(out),
            "--device", params.device,
            "--metrics", str(timing),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PipelineError(f"{folder}/predict.py failed on the test images: {last}")
        metrics = json.loads(timing.read_text())
        differing = differing_pairs(out, SUBMISSION)
    metrics.update(
        matches_submission=differing == 0,
        differing_pairs=differing,
        competition_estimate_s=round(COMPETITION_TEST_IMAGES / metrics["images_per_s"], 1)
        if metrics["images_per_s"]
        else None,
    )
    return metrics


def bundle_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of data/bundle_metrics.json; without `verify`, the bundle's size only."""
    headline: dict[str, Any] = {"bundle_mb": metrics["bundle_mb"]}
    if "predict" in metrics:
        run = metrics["predict"]
        headline.update(
            predict_images_per_s=run["images_per_s"],
            matches_submission=run["matches_submission"],  # 0/1 in the headline file
            competition_estimate_s=run["competition_estimate_s"],
        )
    return headline


def main() -> None:
    params = load_section(BundleParams, "bundle")
    prepared = load_prepared()
    # Checked before it replaces the previous bundle: a failing predict.py leaves the old one in place.
    with atomic_path(BUNDLE_DIR, directory=True) as folder:
        config = write_bundle(folder, params, prepared.num_classes)
        size_mb = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20
        metrics: dict[str, Any] = {
            "bundle_mb": round(size_mb, 1),
            "classifier_models": len(config["classifier"]["models"]),
            "unet_models": len(config["segmentation"]["models"]),
            "gating": config["gating"]["mode"],
        }
        if params.verify:
            metrics["predict"] = verify(folder, params, prepared)
    write_json(metrics, METRICS_FILE)
    write_headline(bundle_headline(metrics), HEADLINE_FILE)
    check = ""
    if params.verify:
        run = metrics["predict"]
        same = "equals" if run["matches_submission"] else f"differs in {run['differing_pairs']} pairs from"
        check = (
            f"; predict.py {run['images_per_s']} images/s on {run['device']}, "
            f"its submission {same} {SUBMISSION}"
        )
    print(f"bundle: {BUNDLE_DIR} ({metrics['bundle_mb']} MB, dataset {params.dataset_id}){check}")


if __name__ == "__main__":
    cli.run(main)
