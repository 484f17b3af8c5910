"""Run-length codec in the competition's convention.

Pixels are numbered from 1, top to bottom then left to right (column-major order), and a mask is written
as "start length" pairs separated by single spaces. An empty mask is the empty string.
"""

from __future__ import annotations

import math
import re

import numpy as np

from stages.core.errors import RLEError

# ASCII digits only: int() alone would also accept '1_000' and non-ASCII digits.
_INTEGER = re.compile(r"[+-]?[0-9]+")


def is_empty(rle: object) -> bool:
    """True for the encodings of an empty mask: None, NaN and the (blank) empty string."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype; non-zero = set) as an RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    # Column-major flattening gives the competition's pixel order; padding finds runs at both ends.
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    edges = np.flatnonzero(pixels[1:] != pixels[:-1])
    if edges.size == 0:
        return ""
    starts = edges[0::2] + 1
    lengths = edges[1::2] + 1 - starts
    runs = np.empty(starts.size * 2, dtype=np.int64)
    runs[0::2] = starts
    runs[1::2] = lengths
    return " ".join(map(str, runs.tolist()))


def parse_runs(rle: object, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated 0-based run starts and lengths of an RLE string for an image of n_pixels pixels.

    Raises RLEError on an odd token count, non-integer tokens, start < 1, length < 1, a run past the end
    of the image, and runs that are unsorted or overlap.
    """
    if is_empty(rle):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of tokens ({len(tokens)}): it must be 'start length' pairs")
    bad = next((token for token in tokens if not _INTEGER.fullmatch(token)), None)
    if bad is not None:
        raise RLEError(f"RLE has a non-integer token {bad!r}")
    try:
        raw = [int(token) for token in tokens]
    except ValueError:
        # The regex passed every token, so this is int()'s cap on digits (sys.get_int_max_str_digits(),
        # 4,300 by default): a value that long is out of range for any image whatever its sign.
        longest = max(tokens, key=lambda token: len(token.lstrip("+-")))
        digits = len(longest.lstrip("+-"))
        raise RLEError(
            f"RLE token {longest[:12]}... has {digits} digits, out of range for any image"
        ) from None
    # Clipped into [0, n_pixels + 1] so that int64 cannot overflow; the checks below are unchanged by it,
    # and messages quote the raw values.
    values = np.array([min(max(value, 0), n_pixels + 1) for value in raw], dtype=np.int64)
    starts, lengths = values[0::2], values[1::2]
    if (starts < 1).any():
        run = int(np.argmax(starts < 1))
        raise RLEError(f"RLE start {raw[2 * run]} is below 1 (pixels are numbered from 1)")
    if (lengths < 1).any():
        run = int(np.argmax(lengths < 1))
        raise RLEError(f"RLE length {raw[2 * run + 1]} is below 1")
    ends = starts + lengths - 1  # last pixel of each run, 1-based
    if ends.max() > n_pixels:
        run = int(np.argmax(ends > n_pixels))
        start, length = raw[2 * run], raw[2 * run + 1]
        end = start + length - 1
        raise RLEError(f"RLE run '{start} {length}' ends at pixel {end}, past the image's {n_pixels} pixels")
    if starts.size > 1:
        bad_order = starts[1:] <= ends[:-1]
        if bad_order.any():
            run = int(np.argmax(bad_order)) + 1
            kind = "unsorted" if starts[run] < starts[run - 1] else "overlapping"
            raise RLEError(
                f"RLE runs are {kind}: run '{starts[run]} {lengths[run]}' "
                "starts inside or before the previous one"
            )
    return starts - 1, lengths


def decode(rle: object, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string into a uint8 0/1 mask of the given (height, width)."""
    height, width = shape
    n_pixels = height * width
    starts, lengths = parse_runs(rle, n_pixels)
    # +1 at each run start and -1 after each run end, then a running sum marks the covered pixels.
    # Validated runs are sorted and disjoint, so each index array is unique and plain fancy indexing is safe.
    delta = np.zeros(n_pixels + 1, dtype=np.int32)
    delta[starts] += 1
    delta[starts + lengths] -= 1
    flat = np.cumsum(delta[:-1], dtype=np.int32).astype(np.uint8)
    return flat.reshape((width, height)).T.copy()  # column-major back to (height, width)


def area(rle: object) -> int:
    """Number of pixels an RLE string covers (no image size needed, no validation)."""
    if is_empty(rle):
        return 0
    return int(np.asarray(str(rle).split()[1::2], dtype=np.int64).sum())
