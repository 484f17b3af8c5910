"""The bundle's self-contained predict.py: its pure pieces, its sample reader and its error handling.
(Its whole run on the default DAG's models is in test_pipeline_bundle.py.)"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from stages.bundle import (
    BundleParams,
    build_predict_script,
    dataset_metadata,
    kernel_metadata,
    notebook,
    slug,
)
from stages.core import inference_ops, kaggle_predict, rle
from stages.core.errors import PipelineError
from stages.core.images import read_image
from stages.core.inference_ops import class_mask, decode_flag, encode_rle, gate_for, submitted_masks
from stages.core.kaggle_predict import BundleError, read_sample
from tests.helpers import OLD_FIXTURE, read_fixture_rows


def test_encode_matches_the_pipeline_codec_on_random_masks() -> None:
    generator = np.random.default_rng(0)
    for _ in range(50):
        mask = generator.random((17, 23)) < generator.random()
        assert encode_rle(mask) == rle.encode(mask)
        assert (rle.decode(encode_rle(mask), mask.shape) == mask).all()


def test_encode_round_trips_real_competition_strings() -> None:
    if not OLD_FIXTURE.is_file():
        pytest.skip(f"real fixture {OLD_FIXTURE} is absent")
    strings = [text for _, _, text in read_fixture_rows() if text]
    assert strings
    for text in strings:
        assert encode_rle(rle.decode(text, (256, 1600))) == " ".join(text.split())


def test_reduced_jpeg_decoding_only_when_the_model_input_is_small_enough() -> None:
    assert decode_flag(".jpg", (256, 1600), (128, 800)) == cv2.IMREAD_REDUCED_COLOR_2
    assert decode_flag(".JPEG", (256, 1600), (32, 200)) == cv2.IMREAD_REDUCED_COLOR_8
    assert decode_flag(".jpg", (256, 1600), (256, 800)) == cv2.IMREAD_COLOR
    assert decode_flag(".png", (256, 1600), (32, 200)) == cv2.IMREAD_COLOR


def test_pipeline_and_bundle_decode_an_image_alike(tmp_path: Path) -> None:
    generator = np.random.default_rng(1)
    image = generator.integers(0, 255, (64, 400, 3), dtype=np.uint8)
    for suffix in (".jpg", ".png"):
        path = tmp_path / f"image{suffix}"
        cv2.imwrite(str(path), image)
        decoded = kaggle_predict.DecodedImage(path)
        for size in ((32, 200), (64, 400), (48, 300)):
            assert np.array_equal(decoded.at(size), read_image(path, (64, 400), size))


def test_class_mask_compares_in_float64() -> None:
    # 0.1 rounds up in float32: a float32 comparison would drop this pixel, the pipeline keeps it.
    probability = np.array([[np.float32(0.1)]], dtype=np.float32)
    assert float(np.float32(0.1)) > 0.1
    assert class_mask(probability, 0.1).all()
    assert not class_mask(np.array([[np.nextafter(np.float32(0.1), np.float32(0))]]), 0.1).any()


@pytest.mark.parametrize(
    "threshold", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1 / 3, 0.0, 1.0, -0.25, 1e-45, 1e-300]
)
def test_class_mask_float32_bound_is_exact(threshold: float) -> None:
    # Every float32 near the threshold (and its float32 rounding) is compared as float64 would compare it.
    bound = np.float32(threshold)
    near = [bound]
    for direction in (np.float32(-np.inf), np.float32(np.inf)):
        value = bound
        for _ in range(3):
            value = np.nextafter(value, direction)
            near.append(value)
    probability = np.array([near], dtype=np.float32)
    expected = probability.astype(np.float64) >= np.float64(threshold)
    np.testing.assert_array_equal(class_mask(probability, threshold), expected)
    assert expected.any() and not expected.all()


@pytest.mark.parametrize("threshold", [1e39, -1e39, float("inf"), float("nan")])
def test_class_mask_thresholds_past_float32(threshold: float) -> None:
    probability = np.array([[0.0, 0.5, np.float32(3e38), np.inf]], dtype=np.float32)
    expected = probability.astype(np.float64) >= np.float64(threshold)
    np.testing.assert_array_equal(class_mask(probability, threshold), expected)


def test_submitted_masks_follow_the_gate_and_the_min_area() -> None:
    probabilities = np.zeros((3, 4, 5), np.float32)
    probabilities[0, :2] = 0.9  # 10 pixels
    probabilities[1, 0, 0] = 0.6  # 1 pixel
    probabilities[2, :, :] = 0.55  # 20 pixels
    thresholds, min_areas = [0.5, 0.5, 0.5], [5, 0, 10]
    keep, weight = np.ones(3, bool), np.ones(3)
    masks = submitted_masks(probabilities, thresholds, min_areas, keep, weight)
    assert [m is not None and int(m.sum()) for m in masks] == [10, 1, 20]
    # Soft gating: weight 0.4 takes class 3 to 8 weighted pixels, under its min area 10.
    masks = submitted_masks(probabilities, thresholds, min_areas, keep, np.array([0.6, 1.0, 0.4]))
    assert [m is not None for m in masks] == [True, True, False]
    masks = submitted_masks(probabilities, thresholds, min_areas, np.array([True, False, True]), weight)
    assert [m is not None for m in masks] == [True, False, True]


def test_gate_of_each_mode() -> None:
    all_missing = np.array([0.2, 0.8])
    presence = np.array([[0.9, 0.1], [0.2, 0.7]])
    assert gate_for("none", all_missing, None, 2, None).keep.all()
    assert gate_for("image", all_missing, None, 2, 0.5).keep.tolist() == [[True, True], [False, False]]
    kept = gate_for("class", all_missing, presence, 2, None, [0.5, 0.5]).keep
    assert kept.tolist() == [[True, False], [False, True]]
    assert np.allclose(gate_for("soft", all_missing, None, 2, None).weight, [[0.8, 0.8], [0.2, 0.2]])
    with pytest.raises(ValueError, match="image gating needs a threshold"):
        gate_for("image", all_missing, None, 2, None)


@pytest.mark.parametrize("layout", ["old", "new"])
def test_read_sample_in_either_format(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "sample.csv"
    if layout == "old":
        frame = pd.DataFrame({"ImageId_ClassId": ["b_c.jpg_1", "b_c.jpg_2", "a.jpg_1"], "EncodedPixels": ""})
    else:
        frame = pd.DataFrame({"ImageId": ["b_c.jpg", "b_c.jpg", "a.jpg"], "EncodedPixels": "", "ClassId": 1})
    frame.to_csv(path, index=False)
    columns, image_ids = read_sample(path)
    assert columns == list(frame.columns) and image_ids == ["b_c.jpg", "a.jpg"]


def test_read_sample_rejects_unknown_columns(tmp_path: Path) -> None:
    path = tmp_path / "sample.csv"
    path.write_text("Image,Pixels\na.jpg,\n")
    with pytest.raises(BundleError, match="expected columns"):
        read_sample(path)


def test_predict_script_fails_with_one_line_without_a_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId_ClassId,EncodedPixels\na.jpg_1,\n")
    out = tmp_path / "submission.csv"
    code = kaggle_predict.main(
        ["--images", str(tmp_path), "--sample", str(sample), "--out", str(out), "--bundle", str(tmp_path)]
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and "bundle.json: not found" in error[0]
    assert not out.exists()


def test_kaggle_metadata_and_notebook() -> None:
    params = BundleParams(
        kaggle_user="someone", dataset_title="My Steel Bundle", notebook_title="My Steel Run"
    )
    assert slug("My Steel Bundle!") == "my-steel-bundle"
    assert dataset_metadata(params)["id"] == "someone/my-steel-bundle"
    kernel = kernel_metadata(params)
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["dataset_sources"] == ["someone/my-steel-bundle"]
    assert kernel["competition_sources"] == ["severstal-steel-defect-detection"]
    book = json.loads(json.dumps(notebook(params)))
    assert book["nbformat"] == 4
    code = "".join(book["cells"][1]["source"])
    assert (
        "/kaggle/input/my-steel-bundle" in code and "/kaggle/input/severstal-steel-defect-detection" in code
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"kaggle_user": "Not A User"}, "bundle.kaggle_user must be a Kaggle user name"),
        ({"dataset_title": "tiny"}, "bundle.dataset_title must have 6 to 50 characters"),
        ({"batch_size": 0}, "bundle.batch_size must be at least 1"),
    ],
)
def test_bad_bundle_params(override: dict[str, object], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        BundleParams(**override).validate("bundle")  # type: ignore[arg-type]


def test_built_script_inlines_the_shared_pieces_and_imports_nothing_of_the_repository() -> None:
    script = build_predict_script(
        Path(kaggle_predict.__file__).read_text(), Path(inference_ops.__file__).read_text()
    )
    tree = ast.parse(script)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}  # fmt: skip
    assert imported <= {
        "__future__",
        "argparse",
        "csv",
        "json",
        "math",
        "os",
        "sys",
        "tempfile",
        "time",
        "warnings",
        "collections",
        "dataclasses",
        "pathlib",
        "cv2",
        "numpy",
        "pandas",
        "torch",
    }
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert {"submitted_masks", "gate_for", "flip_tta_probabilities", "Predictor", "main"} <= defined
    assert script.startswith('"""predict.py of the Kaggle bundle')
    compile(script, "predict.py", "exec")
