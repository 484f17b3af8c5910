"""Synthetic Severstal-like steel images with per-class defect masks.

Pure generator: numpy for noise and arithmetic, cv2 for drawing, resizing and blurring; no file I/O.
Sizes below are given in pixels of a real 256-px-tall image and scale with the image height, so that
64x400 or 128x800 images look like downscaled 256x1600 ones.

The four defect classes are drawn in deliberately different styles so that a small CNN can separate them:
  1: clusters of small dark pits,
  2: a few short, narrow, mostly vertical marks (all lighter or all darker than the steel),
  3: long light scratches and/or large light, rough scuffed areas,
  4: large, very dark irregular blotches.
Each class is drawn inside its own horizontal segment of the strip, which keeps the masks of different
classes disjoint without having to erase a defect that has already been drawn.
"""

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

NUM_CLASSES = 4
_SPLIT_IDS: dict[str, int] = {"train": 0, "test": 1}  # stable, unlike hash() which is salted per process
_REF_HEIGHT = 256


@dataclass(frozen=True)
class SyntheticSpec:
    height: int = 256
    width: int = 1600
    clean_fraction: float = 0.5  # probability an image has no defect
    class_weights: tuple[float, ...] = (0.13, 0.04, 0.72, 0.11)  # relative frequency of classes 1..4
    two_class_fraction: float = 0.06  # probability a defective image gets a second (different) class
    margin_fraction: float = 0.12  # probability of a black side margin
    # Probability that a clean image carries a faded, defect-like stain (no mask): real clean strips have
    # such marks, and a segmenter trained on defective images only mistakes them for defects.
    benign_mark_fraction: float = 0.0

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


def sample_classes(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[int, ...]:
    """Sorted 1-based class ids present in one image (empty tuple = clean)."""
    if rng.random() < spec.clean_fraction:
        return ()
    weights = np.asarray(spec.class_weights, dtype=np.float64)
    first = int(rng.choice(NUM_CLASSES, p=weights / weights.sum()))
    weights[first] = 0.0
    # Draw the two-class coin even when no second class is possible, so the stream layout is fixed.
    if rng.random() < spec.two_class_fraction and weights.sum() > 0.0:
        second = int(rng.choice(NUM_CLASSES, p=weights / weights.sum()))
        return tuple(sorted((first + 1, second + 1)))
    return (first + 1,)


def render(
    rng: np.random.Generator, spec: SyntheticSpec, classes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image containing exactly the given classes.

    Returns image uint8 (height, width, 3) with three equal channels, and masks uint8 (4, height, width)
    of 0/1 where mask k-1 covers the drawn class-k defect (dilated a little, like loose annotations).
    """
    if len(set(classes)) != len(classes) or not all(1 <= c <= NUM_CLASSES for c in classes):
        raise ValueError(f"classes must be distinct ids in 1..{NUM_CLASSES}, got {classes!r}")
    h, w = spec.height, spec.width
    scale = h / _REF_HEIGHT
    img = _background(rng, h, w, scale)
    masks = np.zeros((NUM_CLASSES, h, w), dtype=np.uint8)

    margin = _sample_margin(rng, h, w, scale, spec.margin_fraction)
    valid_lo, valid_hi = (0, w) if margin is None else margin.valid
    order = rng.permutation(np.asarray(classes, dtype=np.int64))  # which class gets which segment
    for cls, (x0, x1) in zip(order, _segments(rng, valid_lo, valid_hi, len(order), scale), strict=True):
        view = img[:, x0:x1]  # a view: drawers modify the image in place
        shape = _DRAWERS[int(cls)](rng, view, scale)
        grow = max(1, round(_MASK_GROW[int(cls)] * scale))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        masks[int(cls) - 1, :, x0:x1] = cv2.dilate(shape, kernel)

    # Drawn only when enabled, so the random stream of specs without benign marks is unchanged.
    if not classes and spec.benign_mark_fraction > 0 and rng.random() < spec.benign_mark_fraction:
        _draw_benign_mark(rng, img[:, valid_lo:valid_hi], scale)

    if margin is not None:
        margin.apply(rng, img)
    gray = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    return cv2.merge([gray, gray, gray]), masks


def generate(
    seed: int, split: str, index: int, spec: SyntheticSpec
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Deterministic (classes, image, masks) for (seed, split, index), independent of call order."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    validate_spec(spec)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    classes = sample_classes(rng, spec)
    image, masks = render(rng, spec, classes)
    return classes, image, masks


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


def _background(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
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


# ------------------------------------------------------------------------------------ defect drawers
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


_DRAWERS = {1: _draw_pits, 2: _draw_vertical_marks, 3: _draw_class3, 4: _draw_blotches}


def _draw_benign_mark(rng: np.random.Generator, view: np.ndarray, scale: float) -> None:
    """A stain that is not a defect: a class-4 blotch or class-3 scuff at 50-70% of its contrast."""
    original = view.copy()
    _DRAWERS[4 if rng.random() < 0.5 else 3](rng, view, scale)
    view[...] = original + rng.uniform(0.5, 0.7) * (view - original)


# Mask dilation per class (reference pixels): covers the blurred rim and mimics loose annotation polygons.
_MASK_GROW = {1: 3.0, 2: 3.0, 3: 6.0, 4: 8.0}
