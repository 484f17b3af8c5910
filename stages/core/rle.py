"""Run-length codec in the competition's convention.

Pixels are numbered from 1, top to bottom then left to right (column-major order), and a mask is written
as "start length" pairs separated by single spaces. An empty mask is the empty string.

Parsing has two paths with the same result. A canonical string (ASCII digits, one space between tokens:
what encode writes and what the competition's files hold) is parsed and checked in a few vectorised numpy
steps. Anything else (other whitespace, signs, other characters), and any canonical string that fails a
check, goes through the token-by-token parser, which finds the first problem and names it; so every input
is accepted or rejected exactly as that parser alone would, with its message.
"""

from __future__ import annotations

import math
import re

import cv2
import numpy as np

from stages.core.errors import RLEError

# ASCII digits only: int() alone would also accept '1_000' and non-ASCII digits.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_CANONICAL_BYTES = b"0123456789 "
_INT64_MAX = int(np.iinfo(np.int64).max)
# The fast path parses with np.fromstring, which saturates a value past int64 at its maximum (C strtoll)
# instead of raising; the bounds check then rejects it. Were a numpy version to wrap around instead, a
# huge token could pass as a small one: the fast path is then off and every string takes the slow one.
_SATURATES = (
    np.fromstring(b"18446744073709551617 99999999999999999999", dtype=np.int64, sep=" ").tolist()
    == [_INT64_MAX] * 2
)


def is_empty(rle: object) -> bool:
    """True for the encodings of an empty mask: None, NaN and the (blank) empty string."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def _column_major(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels as a flat bool array in the competition's (column-major) order."""
    if mask.flags.f_contiguous:  # decode's own layout: already column-major, no copy
        flat = mask.ravel(order="F")
        return flat if flat.dtype == np.bool_ else flat != 0
    # numpy's transposing copy is slow on bytes (~10x OpenCV's blocked transpose on a 256x1600 mask).
    pixels = np.ascontiguousarray(mask != 0).view(np.uint8)
    return cv2.transpose(pixels).ravel().view(np.bool_)


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype; non-zero = set) as an RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    if mask.size == 0:
        return ""
    flat = _column_major(mask)
    # Run boundaries (0-based: a run covers [edge 2i, edge 2i+1)); the image's first and last pixel close
    # or open a run there without padding the whole array.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    if edges.size == 0:
        return ""
    runs = edges.copy()
    runs[0::2] += 1  # 1-based starts
    runs[1::2] -= edges[0::2]  # lengths
    return " ".join(map(str, runs.tolist()))


def _parse_canonical(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """0-based starts and lengths of a canonical, valid RLE string; None for anything else (not canonical,
    or failing a check), which the caller hands to the token-by-token parser for its message."""
    if not (_SATURATES and rle.isascii() and n_pixels < _INT64_MAX):
        return None
    text = rle.encode("ascii")
    # Digits and single spaces only (translate deletes the allowed bytes: anything left is not allowed).
    if text.translate(None, _CANONICAL_BYTES) or b"  " in text or text[:1] == b" " or text[-1:] == b" ":
        return None
    n_tokens = text.count(b" ") + 1
    if n_tokens % 2:
        return None
    values = np.fromstring(text, dtype=np.int64, sep=" ")  # text mode, not the deprecated binary one
    # Every start and length is at least 1 and at most the image; a token past int64 saturates (see
    # _SATURATES) and fails the upper bound, so the sums below cannot overflow.
    if values.size != n_tokens or values.min() < 1 or values.max() > n_pixels:
        return None
    starts, lengths = values[0::2], values[1::2]
    after = starts + lengths  # 1-based pixel just past each run
    # Sorted and disjoint: each run starts at or after the end of the previous one, so the last run ends
    # last and bounds the whole mask.
    if (starts[1:] < after[:-1]).any() or after[-1] - 1 > n_pixels:
        return None
    return starts - 1, lengths


def _parse_checked(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """parse_runs token by token: slower, but names the first problem it finds."""
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


def parse_runs(rle: object, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated 0-based run starts and lengths of an RLE string for an image of n_pixels pixels.

    Raises RLEError on an odd token count, non-integer tokens, start < 1, length < 1, a run past the end
    of the image, and runs that are unsorted or overlap.
    """
    if is_empty(rle):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    runs = _parse_canonical(rle, n_pixels)
    return runs if runs is not None else _parse_checked(rle, n_pixels)


def fill_runs(starts: np.ndarray, lengths: np.ndarray, n_pixels: int) -> np.ndarray:
    """Flat uint8 0/1 pixels with the given sorted, disjoint 0-based runs set (as parse_runs returns them)."""
    flat = np.zeros(n_pixels, dtype=np.uint8)
    if starts.size == 0:
        return flat
    # From the first run's start to the last run's end, the alternating stretches 1, 0, 1, ..., 1 (runs
    # and the gaps between them) in one np.repeat. Only that span is written: the zeroed pages outside it
    # are never touched (a fresh mapping), which a pass over every pixel (a running sum of +1/-1 marks,
    # np.repeat over the whole image) cannot avoid.
    bounds = np.empty(2 * starts.size, dtype=np.int64)
    bounds[0::2] = starts
    bounds[1::2] = starts + lengths
    values = np.zeros(bounds.size - 1, dtype=np.uint8)
    values[0::2] = 1
    flat[bounds[0] : bounds[-1]] = np.repeat(values, np.diff(bounds))
    return flat


def decode(rle: object, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string into a uint8 0/1 mask of the given (height, width).

    The mask is column-major in memory (Fortran order, a view of the flat pixels, as the competition numbers
    them): a transposing copy would cost more than the whole decode. np.ascontiguousarray gives C order
    where a caller needs it; numpy functions take either.
    """
    height, width = shape
    starts, lengths = parse_runs(rle, height * width)
    return fill_runs(starts, lengths, height * width).reshape(shape, order="F")


def area(rle: object) -> int:
    """Number of pixels an RLE string covers (no image size needed, no validation)."""
    if is_empty(rle):
        return 0
    return int(np.asarray(str(rle).split()[1::2], dtype=np.int64).sum())
