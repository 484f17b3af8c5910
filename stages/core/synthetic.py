"""Synthetic Severstal-like steel images with per-class defect masks.

Pure generator: numpy for noise and arithmetic, cv2 for drawing, resizing and blurring; no file I/O.
Sizes below are given in pixels of a real 256-px-tall image and scale with the image height, so that
64x400 or 128x800 images look like downscaled 256x1600 ones.

Two looks share one contract (four classes, disjoint masks, three equal uint8 channels). "rolled" is the
default dataset, "brushed" a second one the pipeline was not tuned on, to check that it generalises.
The four defect classes are drawn in deliberately different styles so that a small CNN can separate them:
  rolled: 1 clusters of small dark pits, 2 a few short, narrow, mostly vertical marks, 3 long light
          scratches and/or large light, rough scuffed areas, 4 large, very dark irregular blotches;
  brushed: 1 loose groups of small comet-shaped inclusions, 2 thin (1-3 px) scratches at any angle,
          3 long dark mottled bands of rolled-in scale along the strip, 4 large round dents with a rim.
Each class is drawn inside its own horizontal segment of the strip, which keeps the masks of different
classes disjoint without having to erase a defect that has already been drawn.

Which classes each image holds is planned per split (plan_split) with exact quotas, then every image is
rendered from its own random stream (generate), so rendering is independent of call order.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import cv2
import numpy as np

NUM_CLASSES = 4
Look = Literal["rolled", "brushed"]
LOOKS: tuple[str, ...] = get_args(Look)
_SPLIT_IDS: dict[str, int] = {"train": 0, "test": 1}  # stable, unlike hash() which is salted per process
_REF_HEIGHT = 256
# Seed entropy is zero-padded, so [seed, split] would give the same stream as image 0's [seed, split, 0];
# the split plan's stream is told apart by a spawn key instead.
_PLAN_SPAWN_KEY = 1


@dataclass(frozen=True)
class SyntheticSpec:
    height: int = 256
    width: int = 1600
    clean_fraction: float = 0.5  # share of images without any defect
    class_weights: tuple[float, ...] = (0.13, 0.04, 0.72, 0.11)  # relative frequency of classes 1..4
    two_class_fraction: float = 0.06  # share of defective images with a second (different) class
    margin_fraction: float = 0.12  # probability of a black side margin
    # Probability that a clean image carries a faded, defect-like stain (no mask): real clean strips have
    # such marks, and a segmenter trained on defective images only mistakes them for defects.
    benign_mark_fraction: float = 0.0
    look: Look = "rolled"  # texture and defect styles, see the module docstring

    NUM_CLASSES: ClassVar[int] = NUM_CLASSES


def validate_spec(spec: SyntheticSpec) -> None:
    """Raise ValueError with a one-line message naming the first invalid field."""
    for name in ("height", "width"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 32:
            raise ValueError(f"synthesize.{name} must be an integer >= 32, got {value!r}")
    for name in ("clean_fraction", "two_class_fraction", "margin_fraction", "benign_mark_fraction"):
        value = getattr(spec, name)
        # Written as a negated range check so that NaN is rejected too.
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"synthesize.{name} must be in [0, 1], got {value!r}")
    weights = spec.class_weights
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"synthesize.class_weights must be {NUM_CLASSES} numbers, got {weights!r}") from None
    if len(values) != NUM_CLASSES:
        raise ValueError(f"synthesize.class_weights must have exactly {NUM_CLASSES} entries, got {weights!r}")
    if not all(0.0 <= v < np.inf for v in values) or sum(values) <= 0.0:
        raise ValueError(
            f"synthesize.class_weights must be finite, non-negative and have a positive sum, got {weights!r}"
        )
    if spec.look not in LOOKS:
        raise ValueError(f"synthesize.look must be one of {', '.join(LOOKS)}, got {spec.look!r}")


def plan_split(seed: int, split: str, count: int, spec: SyntheticSpec) -> list[tuple[int, ...]]:
    """Sorted 1-based class ids of each image of a split (empty tuple = clean), deterministic for the args.

    Quotas rather than independent draws per image: an independent draw left the 100-image default test
    split without a single class-2 image, so class 2 could not be evaluated. round(count * clean_fraction)
    images are clean (half rounds up); the first classes of the defective ones follow class_weights by
    largest-remainder rounding; round(defective * two_class_fraction) of them get a second class drawn
    with the weights; the order is shuffled with a stream seeded from (seed, split) only.
    """
    _check_split(split)
    validate_spec(spec)
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, _SPLIT_IDS[split]], spawn_key=(_PLAN_SPAWN_KEY,))
    )
    n_clean = _round_half_up(count * spec.clean_fraction)
    n_defective = count - n_clean
    weights = np.asarray(spec.class_weights, dtype=np.float64)
    firsts = np.repeat(np.arange(NUM_CLASSES), _largest_remainder(weights, n_defective))
    # Only images whose first class leaves another class with a positive weight can get a second one.
    pairable = np.flatnonzero([weights.sum() - weights[first] > 0.0 for first in firsts])
    n_two = min(_round_half_up(n_defective * spec.two_class_fraction), len(pairable))
    plan: list[tuple[int, ...]] = [(int(first) + 1,) for first in firsts]
    for i in np.sort(rng.choice(pairable, n_two, replace=False)):
        rest = weights.copy()
        rest[firsts[i]] = 0.0
        second = int(rng.choice(NUM_CLASSES, p=rest / rest.sum()))
        plan[i] = tuple(sorted((int(firsts[i]) + 1, second + 1)))
    plan += [()] * n_clean
    return [plan[i] for i in rng.permutation(count)]


def render(
    rng: np.random.Generator, spec: SyntheticSpec, classes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of spec.look containing exactly the given classes.

    Returns image uint8 (height, width, 3) with three equal channels, and masks uint8 (4, height, width)
    of 0/1 where mask k-1 covers the drawn class-k defect (dilated a little, like loose annotations).
    """
    if len(set(classes)) != len(classes) or not all(1 <= c <= NUM_CLASSES for c in classes):
        raise ValueError(f"classes must be distinct ids in 1..{NUM_CLASSES}, got {classes!r}")
    if spec.look not in _LOOK_STYLES:
        raise ValueError(f"look must be one of {', '.join(LOOKS)}, got {spec.look!r}")
    style = _LOOK_STYLES[spec.look]
    h, w = spec.height, spec.width
    scale = h / _REF_HEIGHT
    img = style.background(rng, h, w, scale)
    masks = np.zeros((NUM_CLASSES, h, w), dtype=np.uint8)

    margin = _sample_margin(rng, h, w, scale, spec.margin_fraction)
    valid_lo, valid_hi = (0, w) if margin is None else margin.valid
    order = rng.permutation(np.asarray(classes, dtype=np.int64))  # which class gets which segment
    for cls, (x0, x1) in zip(order, _segments(rng, valid_lo, valid_hi, len(order), scale), strict=True):
        view = img[:, x0:x1]  # a view: drawers modify the image in place
        shape = style.drawers[int(cls)](rng, view, scale)
        grow = max(1, round(style.mask_grow[int(cls)] * scale))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        masks[int(cls) - 1, :, x0:x1] = cv2.dilate(shape, kernel)

    # Drawn only when enabled, so the random stream of specs without benign marks is unchanged.
    if not classes and spec.benign_mark_fraction > 0 and rng.random() < spec.benign_mark_fraction:
        style.benign(rng, img[:, valid_lo:valid_hi], scale)

    if margin is not None:
        margin.apply(rng, img)
    gray = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    return cv2.merge([gray, gray, gray]), masks


def generate(
    seed: int, split: str, index: int, spec: SyntheticSpec, classes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (image, masks) of image `index` of a split holding `classes` (from plan_split),
    rendered from its own random stream, so images can be rendered in any order or in parallel."""
    _check_split(split)
    validate_spec(spec)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    # Skip the draws the former per-image class sampling took from this stream (1 for a clean image,
    # 2 + one per class otherwise): an image planned with the same classes renders exactly as before.
    rng.random(1 if not classes else 2 + len(classes))
    return render(rng, spec, classes)


def _check_split(split: str) -> None:
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")


def _round_half_up(value: float) -> int:
    """Round .5 up, not to even as round() does, so that 0.5 of an image counts as one."""
    return math.floor(value + 0.5)


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to weights that sum to total (Hamilton's largest-remainder method).

    A class expecting half an image or more but floored to none goes first for the leftover seats, so it
    is present whenever there are enough seats: plain largest remainder can leave it out (weights
    0.13/0.04/0.72/0.11 and 5 images: quotas 0.65/0.2/3.6/0.55 seat class 3 before class 4).
    """
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    remainders = quotas - counts + 2.0 * ((counts == 0) & (quotas >= 0.5))
    remainders[weights <= 0.0] = -1.0  # a zero weight never gets a seat
    # The stable sort gives tied remainders to the lower class id, which keeps the plan deterministic.
    extra = np.argsort(-remainders, kind="stable")[: total - int(counts.sum())]
    counts[extra] += 1
    return counts


# --------------------------------------------------------------------------------------------- helpers


def _smooth_noise(
    rng: np.random.Generator,
    low_shape: tuple[int, int],
    out_shape: tuple[int, int],
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Upsampled white noise: a cheap band-limited field whose features are out/low pixels across."""
    low = rng.standard_normal((max(2, low_shape[0]), max(2, low_shape[1])), dtype=np.float32)
    return cv2.resize(low, (out_shape[1], out_shape[0]), interpolation=interpolation)


def _soft(shape: np.ndarray, sigma: float) -> np.ndarray:
    """Blurred float alpha of a 0/1 shape, so that defects blend into the steel instead of being cut out."""
    alpha = shape.astype(np.float32)
    return cv2.GaussianBlur(alpha, (0, 0), sigma) if sigma >= 0.5 else alpha


def _place(rng: np.random.Generator, size: int, extent: int, pad: int) -> int:
    """Start offset of an object of `size` inside [0, extent), keeping `pad` from both ends when possible."""
    lo, hi = min(pad, max(0, extent - size)), max(0, extent - size - pad)
    return int(rng.integers(lo, max(lo, hi) + 1))


def _rolled_background(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Clean rolled steel: uneven illumination, horizontal rolling streaks and fine grain (float32)."""
    # Illumination: a few brighter/darker zones along the strip plus gentle ramps, built on a coarse grid.
    grid_w = int(rng.integers(4, 12))
    zones = rng.standard_normal((3, grid_w)) * rng.uniform(6.0, 14.0)
    ramps = np.linspace(-1.0, 1.0, grid_w)[None, :] * rng.uniform(-15.0, 15.0)
    ramps = ramps + np.linspace(-1.0, 1.0, 3)[:, None] * rng.uniform(-8.0, 8.0)
    # Soft-limit the swing so no clean area gets as dark as a class-4 blotch or the black margin.
    light = (22.0 * np.tanh((zones + ramps) / 22.0)).astype(np.float32)
    img = cv2.resize(light, (w, h), interpolation=cv2.INTER_CUBIC)
    img += np.float32(rng.uniform(80.0, 135.0))
    # Rolling streaks: noise stretched ~40x (fine lines) and ~150x (broad bands) along the strip.
    fine = (round(h / max(1.0, 2.0 * scale)), round(w / (40.0 * scale)))
    img += _smooth_noise(rng, fine, (h, w), cv2.INTER_LINEAR) * np.float32(rng.uniform(3.0, 7.0))
    broad = (round(h / (12.0 * scale)), round(w / (150.0 * scale)))
    img += _smooth_noise(rng, broad, (h, w)) * np.float32(rng.uniform(3.0, 7.0))
    img += rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(2.0, 5.0))
    return img


class _Margin:
    """Black strip-edge margin on one side; `valid` is the x range where defects may be drawn."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, scale: float) -> None:
        self.left = bool(rng.random() < 0.5)
        self.edge = rng.uniform(0.04, 0.3) * w  # margin width at mid-height
        # The strip edge is rarely exactly vertical; cap the lean so narrow images keep room for defects.
        self.slope = rng.uniform(-1.0, 1.0) * min(0.05, 0.06 * w / h)
        self.soft = max(1.0, min(2.0 * scale, 0.02 * w))
        buffer = max(1, min(round(8 * scale), w // 20))  # keep defects off the edge itself
        self.extent = min(w, int(np.ceil(self.edge + abs(self.slope) * h / 2 + self.soft)) + 1)
        reach = self.extent + buffer
        self.valid = (reach, w) if self.left else (0, w - reach)
        self.h, self.w = h, w

    def apply(self, rng: np.random.Generator, img: np.ndarray) -> None:
        """Blend the near-black margin over the outer columns of the image (in place)."""
        cols = slice(0, self.extent) if self.left else slice(self.w - self.extent, self.w)
        xs = np.arange(self.w, dtype=np.float32)[cols][None, :]
        edge_y = self.edge + self.slope * (np.arange(self.h, dtype=np.float32)[:, None] - self.h / 2)
        depth = edge_y - xs if self.left else xs - (self.w - edge_y)
        alpha = np.clip(depth / self.soft + 0.5, 0.0, 1.0)
        region = img[:, cols]
        noise = rng.standard_normal(region.shape, dtype=np.float32) * np.float32(1.5)
        black = np.abs(noise + np.float32(rng.uniform(1.0, 6.0)))
        region *= 1.0 - alpha
        region += alpha * black


def _sample_margin(rng: np.random.Generator, h: int, w: int, scale: float, fraction: float) -> _Margin | None:
    return _Margin(rng, h, w, scale) if rng.random() < fraction else None


def _segments(rng: np.random.Generator, lo: int, hi: int, n: int, scale: float) -> list[tuple[int, int]]:
    """Split [lo, hi) into n disjoint random-width segments separated by gaps, one per defect class."""
    if n == 0:
        return []
    gap = min(round(16 * scale), (hi - lo - n) // (2 * n)) if n > 1 else 0
    shares = rng.uniform(0.6, 1.4, n)
    bounds = np.concatenate([[0.0], np.cumsum(shares / shares.sum())]) * (hi - lo - gap * (n - 1))
    edges = np.round(bounds).astype(int)
    return [(lo + int(edges[i]) + i * gap, lo + int(edges[i + 1]) + i * gap) for i in range(n)]


def _blob(rng: np.random.Generator, bh: int, bw: int, roughness: float, pad: int) -> np.ndarray:
    """Irregular filled region in a (bh, bw) box: a noisy ellipse that keeps `pad` px clear of the box
    sides (so blurring it inside the box leaves no straight cut edges) and always contains its core."""
    ry, rx = max(1.0, bh / 2 - pad), max(1.0, bw / 2 - pad)
    yy = (np.arange(bh, dtype=np.float32)[:, None] - (bh - 1) / 2) / np.float32(ry)
    xx = (np.arange(bw, dtype=np.float32)[None, :] - (bw - 1) / 2) / np.float32(rx)
    r2 = yy * yy + xx * xx
    wobble = _smooth_noise(rng, (5, max(5, round(5 * bw / max(bh, 1)))), (bh, bw))
    # The noise only carves into the ellipse (r2 < 1), never past it.
    return (((1.0 - r2 + roughness * wobble > 0.0) & (r2 < 1.0)) | (r2 < 0.15)).astype(np.uint8)


# ----------------------------------------------------------------------------- rolled defect drawers
_Drawer = Callable[[np.random.Generator, np.ndarray, float], np.ndarray]
# Each drawer darkens/lightens `view` (the class's segment of the float image) in place and returns the
# 0/1 uint8 shape it drew; render() dilates that shape into the mask.


def _draw_pits(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 1: clusters of small dark pits and spots, 6-20 px across."""
    h, w = view.shape
    shape = np.zeros((h, w), dtype=np.uint8)
    pad = round(8 * scale)
    for _ in range(int(rng.integers(1, 4))):
        spread = rng.uniform(8.0, 35.0) * scale
        cy = _place(rng, 1, h, pad + round(spread))
        cx = _place(rng, 1, w, pad + round(spread))
        n = int(rng.integers(3, 14))
        ys = np.clip(rng.normal(cy, spread, n), 0, h - 1).astype(int)
        xs = np.clip(rng.normal(cx, spread * 1.5, n), 0, w - 1).astype(int)  # clusters lie along the strip
        radii = np.maximum(1, np.round(rng.uniform(3.0, 10.0, (n, 2)) * scale)).astype(int)
        angles = rng.uniform(0.0, 180.0, n)
        for y, x, (ra, rb), angle in zip(ys, xs, radii, angles, strict=True):
            cv2.ellipse(shape, (int(x), int(y)), (int(ra), int(rb)), float(angle), 0, 360, 1, -1)
    view *= 1.0 - np.float32(rng.uniform(0.5, 0.75)) * _soft(shape, 1.0 * scale)
    return shape


def _draw_vertical_marks(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 2: a few short, narrow, near-vertical marks (6-10 px wide, 30-150 px tall)."""
    h, w = view.shape
    shape = np.zeros((h, w), dtype=np.uint8)
    pad = round(6 * scale)
    group = min(w, max(1, round(rng.uniform(40.0, 260.0) * scale)))  # marks come in a loose group
    gx = _place(rng, group, w, pad)
    for _ in range(int(rng.integers(1, 6))):
        thick = max(1, round(rng.uniform(6.0, 10.0) * scale))
        tall = min(h - 1, max(2, round(rng.uniform(30.0, 150.0) * scale)))
        lean = np.tan(np.radians(rng.uniform(-12.0, 12.0))) * tall
        x = gx + _place(rng, 1, group, thick // 2)
        y = _place(rng, tall + 1, h, pad + thick // 2)
        x_end = int(np.clip(x + lean, 0, w - 1))
        cv2.line(shape, (x, y), (x_end, y + tall), 1, thick)
    # All marks of an image share one polarity, so the mark/background contrast has a consistent sign.
    delta = rng.uniform(40.0, 65.0) * (1.0 if rng.random() < 0.5 else -1.0)
    view += np.float32(delta) * _soft(shape, 0.8 * scale)
    return shape


def _draw_scratches(rng: np.random.Generator, view: np.ndarray, scale: float, shape: np.ndarray) -> None:
    """Class 3 scratches: 1-3 long, slightly bent, light lines running along or diagonally to the strip."""
    h, w = view.shape
    lines = np.zeros((h, w), dtype=np.uint8)
    pad = round(10 * scale)
    for _ in range(int(rng.integers(1, 4))):
        thick = max(1, round(rng.uniform(6.0, 12.0) * scale))
        length = max(2, round(rng.uniform(0.4, 0.95) * (w - 2 * pad)))
        x0 = _place(rng, length, w, pad)
        # Both ends inside the image and at most ~30 degrees off the strip direction.
        top, bottom = pad, max(pad, h - 1 - pad)
        y0 = rng.uniform(top, bottom)
        rise = np.tan(np.radians(30.0)) * length
        y1 = rng.uniform(max(top, y0 - rise), min(bottom, y0 + rise))
        xs = np.linspace(x0, x0 + length - 1, 6)
        bend = rng.normal(0.0, 5.0 * scale, 6) * np.array([0, 1, 1, 1, 1, 0])  # ends stay put
        ys = np.clip(np.linspace(y0, y1, 6) + bend, 0, h - 1)
        points = np.stack([xs, ys], axis=1).round().astype(np.int32)
        cv2.polylines(lines, [points], False, 1, thick)
    view += np.float32(rng.uniform(35.0, 60.0)) * _soft(lines, 1.0 * scale)
    shape |= lines


def _draw_scuff(rng: np.random.Generator, view: np.ndarray, scale: float, shape: np.ndarray) -> None:
    """Class 3 scuff: a large irregular area that is lighter and rougher, hatched with fine scratches."""
    h, w = view.shape
    bw = min(w, max(2, round(rng.uniform(120.0, 700.0) * scale)))
    bh = min(h, max(2, round(rng.uniform(0.35, 0.95) * h)))
    x0, y0 = _place(rng, bw, w, round(6 * scale)), _place(rng, bh, h, round(4 * scale))
    sigma = 5.0 * scale
    blob = _blob(rng, bh, bw, 0.5, round(2 * sigma))
    # Parallel hatching at one angle: the "rough" texture that distinguishes scuffs from mere brightening.
    hatch = np.zeros((bh, bw), dtype=np.uint8)
    slope = np.tan(np.radians(rng.uniform(-40.0, 40.0)))
    n = int(rng.integers(8, 25))
    ys = rng.uniform(-abs(slope) * bw, bh + abs(slope) * bw, n)
    xs = rng.uniform(0.0, bw, (n, 2))
    thick = max(1, round(2 * scale))
    for y, (xa, xb) in zip(ys, xs, strict=True):
        cv2.line(hatch, (int(xa), int(y + slope * xa)), (int(xb), int(y + slope * xb)), 1, thick)
    alpha = _soft(blob, sigma)
    rough = _smooth_noise(rng, (bh // 2, bw // 12), (bh, bw), cv2.INTER_LINEAR) * np.float32(
        rng.uniform(8.0, 14.0)
    )
    lift = np.float32(rng.uniform(20.0, 40.0))
    view[y0 : y0 + bh, x0 : x0 + bw] += alpha * (lift + rough + np.float32(25.0) * hatch)
    shape[y0 : y0 + bh, x0 : x0 + bw] |= blob


def _draw_class3(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 3: scratches, a scuffed area, or both."""
    shape = np.zeros(view.shape, dtype=np.uint8)
    style = rng.random()
    if style < 0.65:
        _draw_scuff(rng, view, scale, shape)
    if style >= 0.4:
        _draw_scratches(rng, view, scale, shape)
    return shape


def _draw_blotches(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 4: one or two large, very dark irregular blotches with a mottled inside."""
    h, w = view.shape
    shape = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        bw = min(w, max(2, round(rng.uniform(100.0, 450.0) * scale)))
        bh = min(h, max(2, round(rng.uniform(0.4, 0.85) * h)))
        x0, y0 = _place(rng, bw, w, round(8 * scale)), _place(rng, bh, h, round(4 * scale))
        shape[y0 : y0 + bh, x0 : x0 + bw] |= _blob(rng, bh, bw, 0.6, 0)
    mottle = 0.85 + 0.15 * _smooth_noise(rng, (h // 40, w // 40), (h, w))
    darkness = np.float32(rng.uniform(0.65, 0.85)) * mottle
    view *= 1.0 - np.clip(darkness, 0.0, 0.95) * _soft(shape, 3.0 * scale)
    return shape


_ROLLED_DRAWERS: dict[int, _Drawer] = {
    1: _draw_pits,
    2: _draw_vertical_marks,
    3: _draw_class3,
    4: _draw_blotches,
}


def _draw_rolled_benign_mark(rng: np.random.Generator, view: np.ndarray, scale: float) -> None:
    """A stain that is not a defect: a class-4 blotch or class-3 scuff at 50-70% of its contrast."""
    original = view.copy()
    _ROLLED_DRAWERS[4 if rng.random() < 0.5 else 3](rng, view, scale)
    view[...] = original + rng.uniform(0.5, 0.7) * (view - original)


_ROLLED_MASK_GROW = {1: 3.0, 2: 3.0, 3: 6.0, 4: 8.0}


# ------------------------------------------------------------------------------------------- brushed look


def _noise_1d(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """Smooth 1-D noise of n samples (float32, about unit scale) with `knots` independent values along it."""
    low = rng.standard_normal((1, max(2, knots)), dtype=np.float32)
    return cv2.resize(low, (n, 1), interpolation=cv2.INTER_CUBIC)[0]


def _stroke(canvas: np.ndarray, points: np.ndarray, width: int) -> None:
    """Polyline exactly `width` px wide (0/1 on a uint8 canvas, in place).

    cv2 draws thickness t about 2t-1 px wide, so odd widths use t = width - 1 (1 px for width 1) and even
    widths add a copy shifted by one pixel across the line.
    """
    odd = width if width % 2 else width - 1
    cv2.polylines(canvas, [points], False, 1, 1 if odd == 1 else odd - 1)
    if width % 2 == 0:
        span = points[-1] - points[0]
        step = np.array([0, 1] if abs(int(span[0])) >= abs(int(span[1])) else [1, 0], dtype=np.int32)
        cv2.polylines(canvas, [points + step], False, 1, 1 if odd == 1 else odd - 1)


def _brushed_background(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Clean brushed (cold-rolled) steel: bright, with fine brushing grain across the strip at a slight
    slant, faint periodic roll marks, and illumination that varies across the strip instead of along it."""
    # Illumination: smooth zones plus a ramp from the top edge to the bottom one, soft-limited like rolled's.
    across = _noise_1d(rng, h, int(rng.integers(3, 7))) * np.float32(rng.uniform(5.0, 10.0))
    across += np.linspace(-1.0, 1.0, h, dtype=np.float32) * np.float32(rng.uniform(-14.0, 14.0))
    level = np.float32(18.0) * np.tanh(across / np.float32(18.0)) + np.float32(rng.uniform(145.0, 175.0))
    # Roll marks: soft bands across the strip, repeating along it once per turn of the work roll.
    period = rng.uniform(180.0, 420.0) * scale
    xs = np.arange(w, dtype=np.float32)
    dist = np.abs((xs - np.float32(rng.uniform(0.0, period) - period / 2)) % np.float32(period) - period / 2)
    sigma = np.float32(rng.uniform(6.0, 18.0) * scale)
    amplitude = np.float32(rng.uniform(3.0, 7.0) * (1.0 if rng.random() < 0.5 else -1.0))
    marks = amplitude * np.exp(-0.5 * (dist / sigma) ** 2)
    img = level[:, None] + marks[None, :]
    # Grain: one random profile swept across the strip at a slant, so that every line shares one direction.
    slant = np.tan(np.radians(rng.uniform(-25.0, 25.0)))
    offsets = np.round(np.arange(h) * slant).astype(np.int32)
    offsets -= offsets.min()
    n = w + int(offsets.max())
    profile = np.zeros(n, dtype=np.float32)
    for sigma_ref, low, high in ((0.6, 3.0, 6.0), (4.0, 2.0, 4.0)):  # fine lines and broader bands
        line = cv2.GaussianBlur(rng.standard_normal((1, n), dtype=np.float32), (0, 0), sigma_ref * scale)[0]
        profile += line * np.float32(rng.uniform(low, high) / (line.std() + 1e-6))
    grain = profile[np.arange(w, dtype=np.int32)[None, :] + offsets[:, None]]
    # Brushing is uneven: the grain fades in and out over a few tens of pixels.
    fade = _smooth_noise(
        rng, (round(h / (40.0 * scale)), round(w / (40.0 * scale))), (h, w), cv2.INTER_LINEAR
    )
    img += grain * np.clip(np.float32(0.6) + np.float32(0.4) * fade, 0.2, 1.0)
    img += rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(2.0, 4.0))
    return img


def _stamp_comet(
    dark: np.ndarray,
    rim: np.ndarray,
    y: float,
    x: float,
    r: float,
    length: float,
    direction: int,
    ring: float,
) -> None:
    """Add one comet's darkening alpha to `dark` (and its head's rim alpha to `rim`), in place."""
    h, w = dark.shape
    reach = r + ring + 1.0
    y0, y1 = max(0, math.floor(y - reach)), min(h, math.ceil(y + reach) + 1)
    back, ahead = (reach, length + 1.0) if direction > 0 else (length + 1.0, reach)
    x0, x1 = max(0, math.floor(x - back)), min(w, math.ceil(x + ahead) + 1)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)) * np.float32(direction)
    dist = np.sqrt(dy * dy + dx * dx)
    head = np.clip(r + 0.5 - dist, 0.0, 1.0)
    t = dx / np.float32(length)  # 0 at the head, 1 at the tail's end
    across = np.clip(r * (1.0 - 0.75 * t) + 0.5 - np.abs(dy), 0.0, 1.0)  # the tail narrows as it fades
    tail = np.where((t >= 0.0) & (t <= 1.0), across * 0.8 * np.clip(1.0 - t, 0.0, 1.0) ** 1.5, 0.0)
    alpha = np.maximum(head, tail)
    np.maximum(dark[y0:y1, x0:x1], alpha, out=dark[y0:y1, x0:x1])
    halo = np.clip(1.0 - np.abs(dist - (r + 0.5 + ring / 2)) / (ring / 2 + 0.5), 0.0, 1.0) * (alpha < 0.1)
    np.maximum(rim[y0:y1, x0:x1], halo, out=rim[y0:y1, x0:x1])


def _draw_comets(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 1: loose groups of small comet-shaped inclusions: a dark head 3-8 px across with a fading tail
    10-30 px long trailing along the strip (the same way across the image); in some images a bright rim."""
    h, w = view.shape
    dark = np.zeros((h, w), dtype=np.float32)
    rim = np.zeros((h, w), dtype=np.float32)
    direction = 1 if rng.random() < 0.5 else -1
    rimmed = bool(rng.random() < 0.35)
    ring = max(1.0, 1.5 * scale)
    pad = round(8 * scale)
    for _ in range(int(rng.integers(1, 4))):
        spread = rng.uniform(10.0, 40.0) * scale
        cy = _place(rng, 1, h, pad + round(spread))
        cx = _place(rng, 1, w, pad + round(spread))
        n = int(rng.integers(2, 9))
        ys = np.clip(rng.normal(cy, spread, n), 0, h - 1)
        xs = np.clip(rng.normal(cx, spread * 2.0, n), 0, w - 1)  # groups spread along the strip
        radii = np.maximum(1.0, rng.uniform(1.5, 4.0, n) * scale)  # a dot even when downscaled
        lengths = np.maximum(2.0, rng.uniform(10.0, 30.0, n) * scale)
        for y, x, r, length in zip(ys, xs, radii, lengths, strict=True):
            _stamp_comet(dark, rim, float(y), float(x), float(r), float(length), direction, ring)
    view *= 1.0 - np.float32(rng.uniform(0.5, 0.7)) * dark
    shape = dark > 0.1  # the faint end of a tail is not part of the defect
    if rimmed:
        # Fainter than the head, so the spot stays dark; weaker still when downscaled, where the rim would
        # otherwise be as large as the head.
        view += np.float32(rng.uniform(15.0, 30.0) * min(1.0, 2.0 * scale)) * rim
        shape |= rim > 0.3
    return shape.astype(np.uint8)


def _draw_thin_scratches(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 2: two to five thin scratches (1-3 px wide, 40-300 px long) at any angle, straight or slightly
    bent; all of an image lighter or all darker than the steel, with strong contrast."""
    h, w = view.shape
    shape = np.zeros((h, w), dtype=np.uint8)
    pad = max(1, round(4 * scale))
    for _ in range(int(rng.integers(2, 6))):
        width = max(1, round(rng.uniform(0.6, 3.4) * scale))
        length = rng.uniform(40.0, 300.0) * scale
        angle = rng.uniform(0.0, np.pi)
        dx, dy = np.cos(angle) * length, np.sin(angle) * length
        # Shorten a scratch that does not fit its segment rather than let it run off the image.
        fit = min(
            1.0, max(0.0, w - 1 - 2 * pad) / max(abs(dx), 1e-6), max(0.0, h - 1 - 2 * pad) / max(dy, 1e-6)
        )
        dx, dy = dx * fit, dy * fit
        x_lo, y_lo = pad + max(0.0, -dx), float(pad)
        x0 = rng.uniform(x_lo, max(x_lo, w - 1 - pad - max(0.0, dx)))
        y0 = rng.uniform(y_lo, max(y_lo, h - 1 - pad - dy))
        t = np.linspace(0.0, 1.0, 8)
        bend = rng.normal(0.0, 0.02) * length * fit * 4.0 * t * (1.0 - t)  # sagitta of a few % of the length
        xs = np.clip(x0 + dx * t - np.sin(angle) * bend, 0, w - 1)
        ys = np.clip(y0 + dy * t + np.cos(angle) * bend, 0, h - 1)
        _stroke(shape, np.stack([xs, ys], axis=1).round().astype(np.int32), width)
    delta = rng.uniform(55.0, 85.0) * (1.0 if rng.random() < 0.5 else -1.0)
    view += np.float32(delta) * _soft(shape, 0.5 * scale)
    return shape


def _draw_scale_bands(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 3: one or two long bands of rolled-in scale along the strip (dark and mottled, 10-60 px tall,
    200-1200 px long, ragged edges), in half the images with long thin light scratches beside them."""
    h, w = view.shape
    shape = np.zeros((h, w), dtype=np.uint8)
    pad = round(6 * scale)
    rows = np.arange(h, dtype=np.float32)[:, None]
    bands = []
    for _ in range(int(rng.integers(1, 3))):
        bw = min(w, max(2, round(rng.uniform(200.0, 1200.0) * scale)))
        bh = float(min(h - 2, max(2.0, rng.uniform(10.0, 60.0) * scale)))
        x0 = _place(rng, bw, w, pad)
        cy = rng.uniform(min(pad + bh, h / 2), max(h - 1 - pad - bh, h / 2))
        knots = max(2, round(bw / (25.0 * scale)))
        ends = np.linspace(-1.0, 1.0, bw, dtype=np.float32)
        half = np.float32(bh / 2) * np.sqrt(np.clip(1.0 - ends**6, 0.0, 1.0))  # blunt, rounded ends
        centre = np.float32(cy) + _noise_1d(rng, bw, max(2, knots // 6)) * np.float32(0.3 * bh)
        top = centre - half * (1.0 + 0.3 * _noise_1d(rng, bw, knots))  # each edge ragged on its own
        bottom = centre + half * (1.0 + 0.3 * _noise_1d(rng, bw, knots))
        shape[:, x0 : x0 + bw] |= ((rows >= top[None, :]) & (rows <= bottom[None, :])).astype(np.uint8)
        shape[round(np.clip(cy, 0, h - 1)), x0 + bw // 2] = 1  # never empty, however thin the band
        bands.append((x0, bw, cy, bh))
    # Mottle: flakes of scale a few px across, stretched along the strip by rolling.
    flakes = _smooth_noise(
        rng, (round(h / (5.0 * scale)), round(w / (12.0 * scale))), (h, w), cv2.INTER_LINEAR
    )
    darkness = np.clip(np.float32(rng.uniform(0.35, 0.55)) + np.float32(0.15) * flakes, 0.1, 0.85)
    view *= 1.0 - darkness * _soft(shape, 1.0 * scale)
    if rng.random() < 0.5:
        lines = np.zeros((h, w), dtype=np.uint8)
        for x0, bw, cy, bh in bands:
            for _ in range(int(rng.integers(1, 3))):
                length = max(2, round(bw * rng.uniform(0.5, 1.0)))
                start = x0 + int(rng.integers(0, bw - length + 1))
                side = 1.0 if rng.random() < 0.5 else -1.0
                y = cy + side * rng.uniform(bh / 2 + 4.0 * scale, bh / 2 + 30.0 * scale)
                rise = np.tan(np.radians(rng.uniform(-2.0, 2.0))) * length
                bend = rng.normal(0.0, 2.0 * scale, 6) * np.array([0, 1, 1, 1, 1, 0])  # ends stay put
                xs = np.linspace(start, start + length - 1, 6)
                ys = np.clip(np.linspace(y, y + rise, 6) + bend, 0, h - 1)
                width = max(1, round(rng.uniform(0.6, 3.4) * scale))
                _stroke(lines, np.stack([xs, ys], axis=1).round().astype(np.int32), width)
        view += np.float32(rng.uniform(40.0, 65.0)) * _soft(lines, 0.5 * scale)
        shape |= lines
    return shape


def _draw_dents(rng: np.random.Generator, view: np.ndarray, scale: float) -> np.ndarray:
    """Class 4: one or two large roundish dents or holes 60-250 px across: a dark interior, shaded from one
    side, inside a bright rim; in one image in four the reverse, a bright interior inside a dark rim."""
    h, w = view.shape
    shape = np.zeros((h, w), dtype=np.uint8)
    inside = np.zeros((h, w), dtype=np.float32)
    rim = np.zeros((h, w), dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        size, aspect = rng.uniform(60.0, 250.0) * scale, rng.uniform(0.6, 1.0)
        bw, bh = (size, size * aspect) if rng.random() < 0.5 else (size * aspect, size)
        bw, bh = min(w, max(3, round(bw))), min(h, max(3, round(bh)))
        rim_px = max(1, round(rng.uniform(3.0, 7.0) * scale))
        x0, y0 = _place(rng, bw, w, round(6 * scale)), _place(rng, bh, h, round(4 * scale))
        core = _blob(rng, bh, bw, 0.25, rim_px + 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_px + 1, 2 * rim_px + 1))
        ring = cv2.dilate(core, kernel) - core
        # Lit from one side: the interior is deeper on one side than the other.
        angle = rng.uniform(0.0, 2.0 * np.pi)
        gx = np.linspace(-1.0, 1.0, bw, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
        gy = np.linspace(-1.0, 1.0, bh, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
        box = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        np.maximum(inside[box], core * (1.0 + 0.3 * (gx + gy)), out=inside[box])
        np.maximum(rim[box], ring.astype(np.float32), out=rim[box])
        shape[box] |= core | ring
    rim[inside > 0.0] = 0.0  # where two dents overlap, one's rim must not cross the other's interior
    inside, rim = _soft(inside, 1.5 * scale), _soft(rim, 1.0 * scale)
    if rng.random() < 0.75:
        view *= 1.0 - np.float32(rng.uniform(0.45, 0.6)) * inside
        view += np.float32(rng.uniform(35.0, 55.0)) * rim
    else:
        view += np.float32(rng.uniform(35.0, 50.0)) * inside
        view *= 1.0 - np.float32(rng.uniform(0.4, 0.55)) * rim
    return shape


_BRUSHED_DRAWERS: dict[int, _Drawer] = {
    1: _draw_comets,
    2: _draw_thin_scratches,
    3: _draw_scale_bands,
    4: _draw_dents,
}
# Class 2 grows by only ~2 px: its 1-3 px scratches get 5-7 px masks, so thin defects stay thin.
_BRUSHED_MASK_GROW = {1: 3.0, 2: 2.0, 3: 4.0, 4: 6.0}


def _draw_stain(rng: np.random.Generator, view: np.ndarray, scale: float) -> None:
    """A clean-strip mark that is not a defect: a faint oil stain (a soft, slightly darker patch) or a water
    mark (the faint tide line of a dried drop), well below a dent's or scale band's contrast."""
    h, w = view.shape
    bw = min(w, max(3, round(rng.uniform(80.0, 500.0) * scale)))
    bh = min(h, max(3, round(rng.uniform(0.3, 0.9) * h)))
    x0, y0 = _place(rng, bw, w, round(6 * scale)), _place(rng, bh, h, round(4 * scale))
    sigma = 4.0 * scale
    oil = bool(rng.random() < 0.5)
    blob = _blob(rng, bh, bw, 0.5 if oil else 0.2, round(2 * sigma))  # a dried drop's outline is smoother
    box = view[y0 : y0 + bh, x0 : x0 + bw]  # a view: changes go to the image
    if oil:
        box *= 1.0 - np.float32(rng.uniform(0.1, 0.18)) * _soft(blob, sigma)
    else:
        tide = max(1, round(3 * scale))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tide + 1, 2 * tide + 1))
        edge = blob - cv2.erode(blob, kernel)
        box -= np.float32(rng.uniform(14.0, 24.0)) * _soft(edge, 0.8 * scale)
        box -= np.float32(rng.uniform(2.0, 5.0)) * _soft(blob, sigma)


@dataclass(frozen=True)
class _Style:
    """What makes a look: its clean texture, a drawer per class, mask dilation per class (reference px:
    covers a defect's blurred rim and mimics loose annotation polygons) and its benign marks."""

    background: Callable[[np.random.Generator, int, int, float], np.ndarray]
    drawers: dict[int, _Drawer]
    mask_grow: dict[int, float]
    benign: Callable[[np.random.Generator, np.ndarray, float], None]


_LOOK_STYLES: dict[str, _Style] = {
    "rolled": _Style(_rolled_background, _ROLLED_DRAWERS, _ROLLED_MASK_GROW, _draw_rolled_benign_mark),
    "brushed": _Style(_brushed_background, _BRUSHED_DRAWERS, _BRUSHED_MASK_GROW, _draw_stain),
}
