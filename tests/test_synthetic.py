"""Tests for the synthetic Severstal-like image generator."""

import dataclasses
import itertools
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.core.synthetic import (
    LOOKS,
    NUM_CLASSES,
    SyntheticSpec,
    generate,
    plan_split,
    render,
    validate_spec,
)

SMALL = SyntheticSpec(height=64, width=400)
ALL_CLASS_SETS = [
    combo for n in range(NUM_CLASSES + 1) for combo in itertools.combinations(range(1, NUM_CLASSES + 1), n)
]


def check_invariants(
    spec: SyntheticSpec, classes: tuple[int, ...], image: np.ndarray, masks: np.ndarray
) -> None:
    """Shape/dtype/value invariants every rendered sample must satisfy."""
    assert image.shape == (spec.height, spec.width, 3) and image.dtype == np.uint8
    assert masks.shape == (NUM_CLASSES, spec.height, spec.width) and masks.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    assert set(np.unique(masks).tolist()) <= {0, 1}
    assert masks.sum(axis=0, dtype=np.int64).max() <= 1, "masks of different classes overlap"
    present = tuple(k + 1 for k in range(NUM_CLASSES) if masks[k].any())
    assert present == tuple(sorted(classes))


def ring_around(mask: np.ndarray, width: int) -> np.ndarray:
    """Boolean band of `width` px just outside the mask."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask, kernel).astype(bool) & ~mask.astype(bool)


def dark_columns(image: np.ndarray) -> np.ndarray:
    """Columns that are near-black over their full height: the strip-edge margin."""
    return image[..., 0].max(axis=0) < 30


# ----------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("look", LOOKS)
def test_generate_is_deterministic_and_order_independent(look: str) -> None:
    spec = dataclasses.replace(SMALL, look=look)
    later = generate(3, "train", 7, spec, (1, 3))
    generate(3, "train", 2, spec, (2,))  # another call in between must not change anything
    again = generate(3, "train", 7, spec, (1, 3))
    assert np.array_equal(later[0], again[0]) and np.array_equal(later[1], again[1])


@pytest.mark.parametrize(
    "other", [(3, "train", 8), (3, "test", 7), (4, "train", 7)], ids=["index", "split", "seed"]
)
def test_generate_differs_across_index_split_and_seed(other: tuple[int, str, int]) -> None:
    image, _ = generate(3, "train", 7, SMALL, (3,))
    other_image, _ = generate(*other, SMALL, (3,))
    assert not np.array_equal(image, other_image)


def test_generate_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        generate(0, "val", 0, SMALL, ())
    with pytest.raises(ValueError, match="split"):
        plan_split(0, "val", 10, SMALL)


def test_generate_validates_spec() -> None:
    with pytest.raises(ValueError, match=r"synthesize\.clean_fraction"):
        generate(0, "train", 0, dataclasses.replace(SMALL, clean_fraction=2.0), ())
    with pytest.raises(ValueError, match=r"synthesize\.look"):
        plan_split(0, "train", 10, dataclasses.replace(SMALL, look="matte"))


# ----------------------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("look", LOOKS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_generated_samples_satisfy_invariants(split: str, look: str) -> None:
    spec = SyntheticSpec(
        height=128, width=800, clean_fraction=0.2, two_class_fraction=0.5, margin_fraction=0.3, look=look
    )
    plan = plan_split(11, split, 30, spec)
    for index, classes in enumerate(plan):
        image, masks = generate(11, split, index, spec, classes)
        check_invariants(spec, classes, image, masks)
    assert () in plan and any(len(c) == 2 for c in plan)


@pytest.mark.parametrize("look", LOOKS)
@pytest.mark.parametrize("size", [(256, 1600), (64, 400), (32, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("classes", ALL_CLASS_SETS, ids=str)
def test_render_draws_exactly_the_requested_classes(
    size: tuple[int, int], classes: tuple[int, ...], look: str
) -> None:
    spec = SyntheticSpec(height=size[0], width=size[1], margin_fraction=0.5, look=look)
    for trial in range(3):
        image, masks = render(np.random.default_rng([5, trial, len(classes)]), spec, classes)
        check_invariants(spec, classes, image, masks)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(32, 320),
    width=st.integers(32, 2000),
    classes=st.sampled_from(ALL_CLASS_SETS),
    seed=st.integers(0, 2**32 - 1),
    margin=st.booleans(),
    look=st.sampled_from(LOOKS),
)
def test_render_invariants_hold_for_any_size(
    height: int, width: int, classes: tuple[int, ...], seed: int, margin: bool, look: str
) -> None:
    spec = SyntheticSpec(height=height, width=width, margin_fraction=float(margin), look=look)
    image, masks = render(np.random.default_rng(seed), spec, classes)
    check_invariants(spec, classes, image, masks)


@pytest.mark.parametrize("classes", [(0,), (5,), (1, 1)])
def test_render_rejects_bad_classes(classes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="classes"):
        render(np.random.default_rng(0), SMALL, classes)


# ----------------------------------------------------------------------------------------- class mix


def class_counts(plan: list[tuple[int, ...]]) -> list[int]:
    """Images holding each class 1..4."""
    return [sum(k in classes for classes in plan) for k in range(1, NUM_CLASSES + 1)]


@pytest.mark.parametrize(
    ("count", "clean", "firsts", "pairs"),
    [(400, 200, [26, 8, 144, 22], 12), (100, 50, [7, 2, 36, 5], 3)],  # the default train and test splits
)
def test_plan_meets_the_quotas_exactly(count: int, clean: int, firsts: list[int], pairs: int) -> None:
    plan = plan_split(2019, "test", count, SyntheticSpec())
    assert len(plan) == count
    assert sum(not classes for classes in plan) == clean
    assert sum(len(classes) == 2 for classes in plan) == pairs
    assert all(len(classes) <= 2 and list(classes) == sorted(set(classes)) for classes in plan)
    counts = class_counts(plan)
    # Each pair adds one class on top of the first-class quotas.
    assert all(f <= c for f, c in zip(firsts, counts, strict=True)) and sum(counts) == sum(firsts) + pairs
    assert counts[1] >= 2, "class 2 must be present in the default test split"


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (10, [1, 1, 7, 1]),  # quotas 1.3 / 0.4 / 7.2 / 1.1: the leftover seat goes to the largest remainder
        (5, [1, 0, 3, 1]),  # quotas 0.65 / 0.2 / 3.6 / 0.55: every quota >= 0.5 gets an image first
        (2, [0, 0, 2, 0]),
    ],
)
def test_plan_rounds_class_quotas_by_largest_remainder(count: int, expected: list[int]) -> None:
    spec = SyntheticSpec(clean_fraction=0.0, two_class_fraction=0.0)
    assert class_counts(plan_split(0, "train", count, spec)) == expected


def test_plan_is_deterministic_and_differs_across_seed_and_split() -> None:
    spec = SyntheticSpec()
    plan = plan_split(5, "train", 60, spec)
    assert plan_split(5, "train", 60, spec) == plan
    assert plan_split(6, "train", 60, spec) != plan
    assert plan_split(5, "test", 60, spec) != plan
    assert plan_split(5, "train", 60, dataclasses.replace(spec, look="brushed")) == plan  # mix only


def test_plan_obeys_extreme_specs() -> None:
    assert plan_split(0, "train", 50, SyntheticSpec(clean_fraction=1.0)) == [()] * 50
    only3 = SyntheticSpec(clean_fraction=0.0, class_weights=(0.0, 0.0, 1.0, 0.0), two_class_fraction=1.0)
    assert plan_split(0, "train", 50, only3) == [(3,)] * 50  # no second class is possible
    pairs = plan_split(0, "train", 50, SyntheticSpec(clean_fraction=0.0, two_class_fraction=1.0))
    assert all(len(classes) == 2 for classes in pairs)
    single = plan_split(0, "train", 40, SyntheticSpec(clean_fraction=0.0, two_class_fraction=0.0))
    assert all(len(classes) == 1 for classes in single)


def test_plan_handles_tiny_splits() -> None:
    spec = SyntheticSpec()
    assert plan_split(0, "train", 0, spec) == []
    assert plan_split(0, "train", 1, spec) == [()]  # half an image rounds up to one clean image
    two = plan_split(0, "train", 2, spec)
    assert sorted(two) == [(), (3,)]  # one clean, one of the most frequent class
    assert plan_split(0, "train", 1, dataclasses.replace(spec, clean_fraction=0.0)) == [(3,)]
    with pytest.raises(ValueError, match="count"):
        plan_split(0, "train", -1, spec)


# ----------------------------------------------------------------------------------- masks follow defects

# Minimum mean(inside mask) - mean(ring around it), signed where the class has a fixed polarity.
CONTRAST = {1: -8.0, 2: 10.0, 3: 8.0, 4: -20.0}


@pytest.mark.parametrize("size", [(256, 1600), (64, 400)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("cls", [1, 2, 3, 4])
def test_mask_covers_the_visible_defect(size: tuple[int, int], cls: int) -> None:
    """Rolled look; tests/test_synthetic_looks.py has the brushed counterpart."""
    spec = SyntheticSpec(height=size[0], width=size[1], margin_fraction=0.0)
    ring_width = max(2, round(12 * size[0] / 256))
    for trial in range(8):
        image, masks = render(np.random.default_rng([cls, trial]), spec, (cls,))
        gray = image[..., 0].astype(np.float64)
        mask = masks[cls - 1]
        diff = gray[mask.astype(bool)].mean() - gray[ring_around(mask, ring_width)].mean()
        if cls == 2:  # marks are lighter or darker than the steel
            assert abs(diff) > CONTRAST[cls], f"trial {trial}: contrast {diff:.1f}"
        elif CONTRAST[cls] < 0:
            assert diff < CONTRAST[cls], f"trial {trial}: contrast {diff:.1f}"
        else:
            assert diff > CONTRAST[cls], f"trial {trial}: contrast {diff:.1f}"


def test_clean_images_have_no_defect_like_contrast() -> None:
    """A clean image's background is smooth: no small region is as dark as the pit/blotch defects."""
    spec = SyntheticSpec(margin_fraction=0.0)
    for trial in range(5):
        image, masks = render(np.random.default_rng([99, trial]), spec, ())
        assert not masks.any()
        gray = cv2.blur(image[..., 0].astype(np.float32), (9, 9))
        assert gray.min() > 35


# ----------------------------------------------------------------------------------------- margin


@pytest.mark.parametrize("look", LOOKS)
def test_margin_is_black_edge_and_free_of_defects(look: str) -> None:
    spec = SyntheticSpec(margin_fraction=1.0, look=look)
    for trial in range(10):
        image, masks = render(np.random.default_rng([21, trial]), spec, (1, 2, 3, 4))
        dark = dark_columns(image)
        assert dark[0] or dark[-1], "margin must sit on the left or right edge"
        assert 0.03 * spec.width <= dark.sum() <= 0.35 * spec.width
        assert not masks[:, :, dark].any(), "defect drawn inside the margin"


@pytest.mark.parametrize("look", LOOKS)
def test_no_margin_when_disabled(look: str) -> None:
    spec = SyntheticSpec(margin_fraction=0.0, look=look)
    for trial in range(10):
        image, _ = render(np.random.default_rng([22, trial]), spec, (4,))  # dark defects are not margins
        assert not dark_columns(image).any()


# ----------------------------------------------------------------------------------------- validation


def test_default_spec_is_valid() -> None:
    validate_spec(SyntheticSpec())
    validate_spec(SMALL)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("height", 31),
        ("width", 8),
        ("height", 64.0),
        ("clean_fraction", 1.5),
        ("two_class_fraction", -0.1),
        ("margin_fraction", math.nan),
        ("class_weights", (0.5, 0.5, 0.5)),
        ("class_weights", (0.1, -0.1, 0.5, 0.5)),
        ("class_weights", (0.0, 0.0, 0.0, 0.0)),
        ("class_weights", (1.0, 1.0, math.inf, 1.0)),
        ("look", "matte"),
    ],
)
def test_validate_spec_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^synthesize\.{field} ") as info:
        validate_spec(dataclasses.replace(SyntheticSpec(), **{field: value}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("look", LOOKS)
def test_benign_marks_change_clean_images_only_and_carry_no_mask(look: str) -> None:
    plain = SyntheticSpec(height=64, width=400, look=look)
    stained = dataclasses.replace(plain, benign_mark_fraction=1.0)
    for index in range(4):
        image, masks = generate(3, "train", index, stained, ())
        plain_image, _ = generate(3, "train", index, plain, ())
        assert not masks.any()
        assert np.abs(image.astype(int) - plain_image.astype(int)).max() > 10  # a visible stain
    for index in range(4):
        with_marks = generate(3, "train", index, stained, (index % NUM_CLASSES + 1,))
        without = generate(3, "train", index, plain, (index % NUM_CLASSES + 1,))
        np.testing.assert_array_equal(with_marks[0], without[0])  # defective images never get a stain
        np.testing.assert_array_equal(with_marks[1], without[1])
