"""Inference with stand-in models: predict_masks streams masks at each image's original size with the rules
applied, in table order and in flat memory; flip TTA averages the flipped-back predictions; upsampling;
the truth-vs-prediction overlay."""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from stages.core.device import Runtime
from stages.core.inference import flip_tta_probabilities, predict_probabilities, upsample
from stages.core.overlay import CLASS_COLOURS, truth_vs_prediction
from stages.core.postprocess import ClassRule, apply_rules

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False)
MODEL_SIZE = (32, 64)  # (height, width) at the model's input
ORIGINAL = (40, 96)
BRIGHT, DARK = 255, 0
# Class 1: the left half of bright images; class 2: never over its threshold; class 3: a small patch
# in the top-left corner that min area removes; class 4: everywhere on every image.
RULES = [ClassRule(0.5, 0), ClassRule(0.5, 0), ClassRule(0.5, 200), ClassRule(0.5, 0)]


class StandIn(nn.Module):
    """Logits = mean of the normalised RGB (about +2.4 for white, -2 for black) plus a fixed per-class map."""

    def __init__(self, size: tuple[int, int] = MODEL_SIZE) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3)
            self.conv.bias.zero_()
        height, width = size
        offset = torch.zeros(1, 4, height, width)
        offset[0, 0, :, width // 2 :] = -20.0  # class 1: right half off
        offset[0, 1] = -3.0  # class 2: at most sigmoid(-0.6) < 0.5
        offset[0, 2] = -20.0
        offset[0, 2, :2, :2] = 20.0  # class 3: a 2x2 patch, about 15 original pixels
        offset[0, 3] = 6.0  # class 4: over 0.5 everywhere
        self.register_buffer("offset", offset)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images) + self.offset


def write_table(
    folder: Path, names: list[str], values: list[int], sizes: list[tuple[int, int]]
) -> pd.DataFrame:
    """Constant-valued PNG images and their table (ImageId, height, width) in the given order."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value, (height, width) in zip(names, values, sizes, strict=True):
        assert cv2.imwrite(str(folder / name), np.full((height, width, 3), value, np.uint8))
    return pd.DataFrame({"ImageId": names, "height": [s[0] for s in sizes], "width": [s[1] for s in sizes]})


# ---------------------------------------------------------------------------------------------- prediction


def predict_masks(
    models: list[nn.Module],
    table: pd.DataFrame,
    folder: Path,
    size: tuple[int, int],
    runtime: Runtime,
    batch_size: int,
    rules: list[ClassRule],
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """predict_probabilities() with the rules applied, as the segment stage and a predict command use it."""
    for image_id, probabilities in predict_probabilities(models, table, folder, size, runtime, batch_size):
        yield image_id, apply_rules(probabilities, rules), probabilities


def test_prediction_yields_original_size_probabilities_in_table_order(tmp_path: Path) -> None:
    names = [f"img_{i}.png" for i in (5, 0, 3, 6, 1, 4, 2)]  # not sorted: the table's order must win
    values = [BRIGHT, DARK, BRIGHT, DARK, DARK, BRIGHT, BRIGHT]
    sizes = [ORIGINAL] * 6 + [(48, 80)]  # the last image has its own size
    table = write_table(tmp_path / "images", names, values, sizes)
    results = list(predict_masks([StandIn()], table, tmp_path / "images", MODEL_SIZE, CPU, 3, RULES))

    assert [image_id for image_id, _, _ in results] == names
    for (image_id, masks, probability), value, size in zip(results, values, sizes, strict=True):
        assert masks.shape == (4, *size) and masks.dtype == np.uint8, image_id
        assert probability.shape == (4, *size) and probability.dtype == np.float32
        half = size[1] // 2
        if value == BRIGHT:
            assert masks[0, :, : half - 4].all() and not masks[0, :, half + 4 :].any(), image_id
        else:
            assert not masks[0].any(), image_id
        assert not masks[1].any()  # under its threshold
        assert not masks[2].any()  # under its min area
        assert masks[3].all()
        assert probability[2, 0, 0] > 0.99  # the patch was predicted, and removed by the rule


def test_min_area_counts_original_pixels(tmp_path: Path) -> None:
    table = write_table(tmp_path / "images", ["a.png"], [BRIGHT], [ORIGINAL])
    # The 2x2 model-size patch is 4 pixels at the model's size but more at the original 40x96 (8 once
    # upsampled and thresholded): min area 6 keeps it, min area 200 does not.
    for min_area, kept in ((0, True), (6, True), (200, False)):
        rules = [*RULES[:2], ClassRule(0.5, min_area), RULES[3]]
        ((_, masks, _),) = predict_masks([StandIn()], table, tmp_path / "images", MODEL_SIZE, CPU, 1, rules)
        assert bool(masks[2].any()) is kept, min_area
        if kept:
            rows, cols = np.nonzero(masks[2])
            assert 6 <= len(rows) < 20 and rows.max() < 5 and cols.max() < 8


def test_prediction_averages_models(tmp_path: Path) -> None:
    table = write_table(tmp_path / "images", ["a.png"], [BRIGHT], [ORIGINAL])
    strong, weak = StandIn(), StandIn()
    with torch.no_grad():
        weak.offset[0, 1] = -2.0  # class 2: sigmoid(0.44) = 0.61 alone ...
        strong.offset[0, 1] = 2.0  # ... averaged with sigmoid(4.44) = 0.99
    folder = tmp_path / "images"
    ((_, alone, p_alone),) = predict_masks([weak], table, folder, MODEL_SIZE, CPU, 1, RULES)
    ((_, both, p_both),) = predict_masks([weak, strong], table, folder, MODEL_SIZE, CPU, 1, RULES)
    rules = [RULES[0], ClassRule(0.7, 0), *RULES[2:]]
    ((_, strict, _),) = predict_masks([weak], table, folder, MODEL_SIZE, CPU, 1, rules)
    ((_, strict_both, _),) = predict_masks([weak, strong], table, folder, MODEL_SIZE, CPU, 1, rules)
    assert alone[1].all() and both[1].all()
    assert not strict[1].any() and strict_both[1].all()
    np.testing.assert_allclose(p_both[1], (p_alone[1] + 1 / (1 + np.exp(-4.44))) / 2, atol=0.02)


def test_prediction_keeps_no_yielded_item(tmp_path: Path) -> None:
    names = [f"{i:02d}.png" for i in range(10)]
    table = write_table(tmp_path / "images", names, [BRIGHT] * 10, [ORIGINAL] * 10)
    refs: list[weakref.ref] = []
    for _, masks, probability in predict_masks(
        [StandIn()], table, tmp_path / "images", MODEL_SIZE, CPU, 2, RULES
    ):
        refs += [weakref.ref(masks), weakref.ref(probability)]
        del masks, probability
        # Only the current batch (2 images) may still be referenced by the generator.
        assert sum(ref() is not None for ref in refs[:-4]) == 0
    gc.collect()
    assert all(ref() is None for ref in refs)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("many")
    names = [f"{i:03d}.png" for i in range(80)]
    table = write_table(folder, names, [BRIGHT, DARK] * 40, [ORIGINAL] * 80)
    return folder, table


def traced_peak(run: Iterator[object], keep: bool = False) -> int:
    """Peak traced allocation (bytes) above the level at the start, while consuming `run`."""
    kept = []
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    for item in run:
        if keep:
            kept.append(item)
    peak = tracemalloc.get_traced_memory()[1] - start
    del kept
    return peak


def test_prediction_memory_does_not_grow_with_the_number_of_images(
    many_images: tuple[Path, pd.DataFrame],
) -> None:
    folder, table = many_images
    model = StandIn()

    def run(rows: int) -> Iterator[object]:
        return predict_masks([model], table.iloc[:rows], folder, MODEL_SIZE, CPU, 4, RULES)

    for _ in run(20):  # warm-up: lazy imports, caches, allocator pools
        pass
    tracemalloc.start()
    try:
        peak_20 = min(traced_peak(run(20)) for _ in range(2))
        peak_80 = traced_peak(run(80))
        # The measurement is sensitive: a consumer keeping every item does grow with the count.
        leaking_20, leaking_80 = traced_peak(run(20), keep=True), traced_peak(run(80), keep=True)
    finally:
        tracemalloc.stop()
    slack = 256 * 1024
    assert peak_80 < peak_20 * 1.5 + slack, (peak_20, peak_80)
    assert leaking_80 > leaking_20 * 1.5 + slack, (leaking_20, leaking_80)


def test_segment_test_candidates_match_a_plain_recomputation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # predict_test compares each class's probabilities column-major, against the thresholds' float32
    # bounds: the same candidates as `p >= t` in float64 on the (K, H, W) probabilities, encoded plainly.
    from stages import segment
    from stages.core import rle
    from stages.core.prepared import Prepared
    from tests.helpers import write_labels_csv

    names = [f"{i}.png" for i in range(5)]
    sizes = [ORIGINAL] * 4 + [(48, 80)]
    rng = np.random.default_rng(0)
    folder = tmp_path / "root" / "test_images"
    folder.mkdir(parents=True)
    for name, (height, width) in zip(names, sizes, strict=True):
        assert cv2.imwrite(str(folder / name), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    table = pd.DataFrame({"ImageId": names, "height": [s[0] for s in sizes], "width": [s[1] for s in sizes]})
    write_labels_csv(
        tmp_path / "root/sample_submission.csv", [(n, k, "1 1") for n in names for k in range(1, 5)], "old"
    )
    prepared = Prepared(tmp_path / "root", pd.DataFrame(), table, num_classes=4, n_folds=5)
    params = segment.SegmentParams(input_height=32, input_width=64, thresholds=(0.3, 0.5, 0.7), tta="hflip")
    rules = [ClassRule(0.5, 0), ClassRule(0.3, 100), ClassRule(0.7, 0), ClassRule(0.5, 2**31 - 1)]
    model = Lopsided(3)
    monkeypatch.chdir(tmp_path)
    segment.predict_test(params, prepared, CPU, [model], rules)

    expected, submitted = [], []
    for image_id, probabilities in predict_probabilities(
        [model], table, folder, params.input_size, CPU, params.predict_batch_size, params.tta
    ):
        for k, rule in enumerate(rules):
            chosen = ""
            for threshold in params.thresholds:
                mask = probabilities[k] >= np.float64(threshold)
                if mask.any():
                    text = rle.encode(np.ascontiguousarray(mask))
                    expected.append([image_id, k + 1, threshold, int(mask.sum()), text])
                    if threshold == rule.threshold and mask.sum() >= rule.min_area_px:
                        chosen = text
            submitted.append([f"{image_id}_{k + 1}", chosen])
    candidates = pd.read_csv(tmp_path / segment.TEST_CANDIDATES, dtype=str, keep_default_na=False)
    assert len(expected) > 20 and len({row[3] for row in expected}) > 10  # masks of many sizes
    assert candidates.to_numpy().tolist() == [[str(value) for value in row] for row in expected]
    submission = pd.read_csv(tmp_path / segment.SUBMISSION_RAW, dtype=str, keep_default_na=False)
    assert submission.to_numpy().tolist() == submitted


# ---------------------------------------------------------------------------------------------- flip TTA


class Lopsided(nn.Module):
    """Not flip-equivariant: an asymmetric 3x3 convolution plus a horizontal and a vertical ramp."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        ramp = torch.linspace(-2, 2, width)[None, :] + torch.linspace(0, 1, height)[:, None]
        return self.conv(images) + ramp


def flipped_back(model: nn.Module, images: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.sigmoid(model(images.flip(dims))).flip(dims)


@torch.no_grad()
def test_flip_tta_by_hand() -> None:
    images = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    first, second = Lopsided(1), Lopsided(2)
    plain = torch.sigmoid(first(images))
    hflip = flipped_back(first, images, (-1,))
    vflip = flipped_back(first, images, (-2,))
    assert (plain - hflip).abs().max() > 0.05 and (plain - vflip).abs().max() > 0.05  # not equivariant

    torch.testing.assert_close(flip_tta_probabilities([first], images, "none"), plain)
    torch.testing.assert_close(flip_tta_probabilities([first], images, "hflip"), (plain + hflip) / 2)
    torch.testing.assert_close(flip_tta_probabilities([first], images, "hvflip"), (plain + hflip + vflip) / 3)
    other = (torch.sigmoid(second(images)) + flipped_back(second, images, (-1,))) / 2
    torch.testing.assert_close(
        flip_tta_probabilities([first, second], images, "hflip"), ((plain + hflip) / 2 + other) / 2
    )


@torch.no_grad()
def test_flip_tta_is_float32_probabilities() -> None:
    images = torch.randn(1, 3, 4, 6, dtype=torch.float64)
    model = Lopsided(3).double()
    result = flip_tta_probabilities([model], images, "hflip")
    assert result.dtype == torch.float32 and result.shape == (1, 4, 4, 6)
    assert ((result > 0) & (result < 1)).all()


# ---------------------------------------------------------------------------------------------- upsample


@pytest.mark.parametrize("classes", [1, 4])
def test_upsample_shape_and_constant_map(classes: int) -> None:
    constant = np.full((classes, 8, 16), 0.37, np.float32)
    result = upsample(constant, (40, 96))
    assert result.shape == (classes, 40, 96)
    np.testing.assert_allclose(result, 0.37, atol=1e-6)
    assert upsample(constant, (8, 16)).shape == constant.shape


def test_upsample_keeps_each_class_in_place() -> None:
    probabilities = np.zeros((3, 4, 8), np.float32)
    probabilities[0, :, :4] = 1.0  # left half
    probabilities[1, 2:] = 1.0  # bottom half
    probabilities[2] = np.linspace(0, 1, 8)[None, :]  # a ramp
    result = upsample(probabilities, (40, 96))
    assert result[0, :, :40].min() > 0.99 and result[0, :, 56:].max() < 0.01
    assert result[1, 26:].min() > 0.99 and result[1, :14].max() < 0.01
    assert np.all(np.diff(result[2], axis=1) >= -1e-6) and result[2, :, 0].max() < 0.05
    assert result.min() >= 0 and result.max() <= 1


# ---------------------------------------------------------------------------------------------- overlay


def close_to(pixels: np.ndarray, colour: np.ndarray, tolerance: float) -> np.ndarray:
    return np.abs(pixels.astype(np.float32) - colour).max(axis=-1) <= tolerance


def test_overlay_draws_truth_above_prediction_in_class_colours() -> None:
    grey = 90
    image = np.full((100, 200, 3), grey, np.uint8)
    truth = np.zeros((4, 100, 200), np.uint8)
    prediction = np.zeros_like(truth)
    truth[0, 30:70, 20:80] = 1  # class 1 (red) in the truth only
    truth[2, 75:95, 150:190] = 1  # class 3 (blue) in the truth only
    prediction[1, 30:70, 110:170] = 1  # class 2 (green) in the prediction only
    prediction[3, 75:95, 20:60] = 1  # class 4 (yellow) in the prediction only

    result = truth_vs_prediction(image, truth, prediction)
    scale = 4  # 200 -> 800 pixels wide
    assert result.dtype == np.uint8 and result.shape == (100 * scale * 2 + 4, 800, 3)
    top, bottom = result[: 100 * scale], result[100 * scale + 4 :]
    assert (result[100 * scale : 100 * scale + 4] == 255).all()  # the separator

    def region(panel: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """A mask's interior at the panel's scale, away from its outline."""
        return panel[
            (rows.start + 3) * scale : (rows.stop - 3) * scale,
            (cols.start + 3) * scale : (cols.stop - 3) * scale,
        ]

    boxes = {
        0: (truth, slice(30, 70), slice(20, 80)),
        2: (truth, slice(75, 95), slice(150, 190)),
        1: (prediction, slice(30, 70), slice(110, 170)),
        3: (prediction, slice(75, 95), slice(20, 60)),
    }
    for k, (source, rows, cols) in boxes.items():
        colour = np.asarray(CLASS_COLOURS[k], np.float32)
        tinted = 0.65 * grey + 0.35 * colour
        drawn, other = (top, bottom) if source is truth else (bottom, top)
        assert close_to(region(drawn, rows, cols), tinted, 2).all(), k
        assert close_to(region(other, rows, cols), np.full(3, grey), 0).all(), k
        # The outline in the class's exact colour, in its own panel only.
        assert close_to(drawn, colour, 3).sum() > 100, k
        assert close_to(other, colour, 3).sum() == 0, k
    untouched = np.s_[5 * scale : 25 * scale, 90 * scale : 100 * scale]  # no mask, no label
    assert (top[untouched] == grey).all() and (bottom[untouched] == grey).all()
    assert (top[2:20, 2:80] == 255).any() and (bottom[2:20, 2:110] == 255).any()  # the labels


@pytest.mark.parametrize("size", [(256, 1600), (50, 1600), (30, 100)])
def test_overlay_is_800_wide_for_any_image(size: tuple[int, int]) -> None:
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((4, height, width), np.uint8)
    masks[0, : height // 2, : width // 2] = 1
    result = truth_vs_prediction(image, masks, masks)
    panel = max(1, round(height * 800 / width))
    assert result.shape == (2 * panel + 4, 800, 3)
    red = np.asarray(CLASS_COLOURS[0], np.float32)
    assert close_to(result[:panel], red, 40).any() and close_to(result[panel + 4 :], red, 40).any()
