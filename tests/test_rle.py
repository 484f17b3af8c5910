"""The RLE codec: competition convention (1-based, column-major, "start length" pairs), round trips,
real fixture strings and every validation error."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stages.core import rle
from stages.core.errors import PipelineError, RLEError
from tests.helpers import OLD_FIXTURE, read_fixture_rows

WELL_FORMED = re.compile(r"(?:[1-9][0-9]* [1-9][0-9]*(?: [1-9][0-9]* [1-9][0-9]*)*)?")
SHAPES = [(1, 1), (1, 7), (7, 1), (3, 2), (5, 9), (256, 1600)]


def reference_encode(mask: np.ndarray) -> str:
    """The widely used Kaggle kernel's mask2rle, as an independent oracle."""
    pixels = np.concatenate([[0], (mask.T.flatten() != 0).astype(np.int64), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    """Masks of any shape from 1x1 to 40x60 with any density, from all-empty to all-full."""
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 60))
    kind = draw(st.sampled_from(["bits", "dense", "blobs"]))
    if kind == "bits":
        return draw(arrays(np.uint8, (height, width), elements=st.integers(0, 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "dense":
        return (rng.random((height, width)) < draw(st.floats(0, 1))).astype(np.uint8)
    # Blobs: a few filled rectangles, so long runs cross column boundaries.
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(draw(st.integers(0, 4))):
        top, left = rng.integers(0, height), rng.integers(0, width)
        mask[top : top + rng.integers(1, height + 1), left : left + rng.integers(1, width + 1)] = 1
    return mask


@settings(max_examples=150, deadline=None)
@given(masks())
def test_round_trip_and_oracle(mask: np.ndarray) -> None:
    text = rle.encode(mask)
    assert text == reference_encode(mask)
    decoded = rle.decode(text, mask.shape)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)
    assert rle.area(text) == int(mask.sum())


@settings(max_examples=100, deadline=None)
@given(masks())
def test_encoded_output_is_canonical(mask: np.ndarray) -> None:
    text = rle.encode(mask)
    assert WELL_FORMED.fullmatch(text), text  # single spaces, no leading/trailing space, positive integers
    starts, lengths = rle.parse_runs(text, mask.size)
    # Maximal runs: sorted with at least one unset pixel between consecutive runs.
    assert (starts[1:] > starts[:-1] + lengths[:-1]).all()
    assert (text == "") == (not mask.any())


@settings(max_examples=60, deadline=None)
@given(masks(), st.sampled_from([np.bool_, np.uint8, np.int32, np.float32]), st.integers(1, 255))
def test_any_nonzero_value_is_set(mask: np.ndarray, dtype: type, value: int) -> None:
    assert rle.encode((mask * value).astype(dtype)) == rle.encode(mask)


def test_column_major_hand_example() -> None:
    # Numbering, column-major:  1 4
    #                           2 5
    #                           3 6
    mask = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.uint8)
    assert rle.encode(mask) == "1 2 6 1"
    np.testing.assert_array_equal(rle.decode("1 2 6 1", (3, 2)), mask)
    # A run continues from the bottom of one column to the top of the next.
    assert rle.encode(np.array([[0, 1], [0, 0], [1, 0]])) == "3 2"
    np.testing.assert_array_equal(rle.decode("3 2", (3, 2)), [[0, 1], [0, 0], [1, 0]])
    # 2x3: column-major numbering gives "2 1 4 2"; row-major would give "3 3".
    assert rle.encode(np.array([[0, 0, 1], [1, 1, 0]])) == "2 1 4 2"


@pytest.mark.parametrize("shape", SHAPES)
def test_full_and_empty_masks(shape: tuple[int, int]) -> None:
    n = shape[0] * shape[1]
    assert rle.encode(np.ones(shape, dtype=np.uint8)) == f"1 {n}"
    assert rle.encode(np.zeros(shape, dtype=np.uint8)) == ""
    np.testing.assert_array_equal(rle.decode(f"1 {n}", shape), np.ones(shape))
    np.testing.assert_array_equal(rle.decode("", shape), np.zeros(shape))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("corner", ["first", "bottom_left", "top_right", "last"])
def test_single_edge_pixels(shape: tuple[int, int], corner: str) -> None:
    height, width = shape
    row, col, number = {
        "first": (0, 0, 1),
        "bottom_left": (height - 1, 0, height),
        "top_right": (0, width - 1, (width - 1) * height + 1),
        "last": (height - 1, width - 1, height * width),
    }[corner]
    mask = np.zeros(shape, dtype=np.uint8)
    mask[row, col] = 1
    assert rle.encode(mask) == f"{number} 1"
    np.testing.assert_array_equal(rle.decode(f"{number} 1", shape), mask)


def test_adjacent_runs_decode_and_merge() -> None:
    # Not what encode writes, but valid: two touching runs are one stretch of pixels.
    mask = rle.decode("2 2 4 3", (4, 2))
    assert int(mask.sum()) == 5
    assert rle.encode(mask) == "2 5"


@pytest.mark.parametrize("empty", [None, float("nan"), np.float64("nan"), "", "   "])
def test_empty_encodings_decode_to_zeros(empty: object) -> None:
    assert rle.is_empty(empty)
    decoded = rle.decode(empty, (3, 5))
    assert decoded.shape == (3, 5) and decoded.dtype == np.uint8 and not decoded.any()
    assert rle.area(empty) == 0
    starts, lengths = rle.parse_runs(empty, 15)
    assert starts.size == 0 and lengths.size == 0


@pytest.mark.parametrize("text", ["1 1", "0", " 1 ", "nan"])
def test_non_empty_strings_are_not_empty(text: str) -> None:
    assert not rle.is_empty(text)


def test_area() -> None:
    assert rle.area("1 3 10 2") == 5
    assert rle.area("5 400000") == 400000
    assert rle.area(" 7  4 ") == 4


def test_parse_runs_is_zero_based() -> None:
    starts, lengths = rle.parse_runs("1 3 10 2", 20)
    assert starts.tolist() == [0, 9] and lengths.tolist() == [3, 2]


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 3, 4)))


ERROR_CASES = [
    ("1 2 3", r"odd number of tokens \(3\)"),
    ("5", r"odd number of tokens \(1\)"),
    ("1 2.5", r"non-integer token '2\.5'"),
    ("a 2", r"non-integer token 'a'"),
    ("1 2 3 x", r"non-integer token 'x'"),
    ("1_0 2", r"non-integer token '1_0'"),
    ("1 \u00b2", r"non-integer token '\u00b2'"),
    ("--1 2", r"non-integer token '--1'"),
    ("0 3", r"start 0 is below 1"),
    ("5 2 -3 1", r"start -3 is below 1"),
    ("1 0", r"length 0 is below 1"),
    ("1 2 5 -1", r"length -1 is below 1"),
    ("95 7", r"run '95 7' ends at pixel 101, past the image's 100 pixels"),
    ("101 1", r"run '101 1' ends at pixel 101"),
    ("1 2 99 3", r"run '99 3' ends at pixel 101"),
    # Huge values must not overflow int64 and slip past the bounds check.
    ("9223372036854775800 100", r"run '9223372036854775800 100' ends at pixel 9223372036854775899"),
    ("1 99999999999999999999999", r"run '1 99999999999999999999999' ends at pixel 99999999999999999999999"),
    ("-99999999999999999999999 1", r"start -99999999999999999999999 is below 1"),
    ("10 2 3 1", r"unsorted: run '3 1'"),
    ("10 2 11 1", r"overlapping: run '11 1'"),
    ("10 2 10 1", r"overlapping: run '10 1'"),
    ("1 1 10 5 12 1", r"overlapping: run '12 1'"),
]


@pytest.mark.parametrize(("text", "message"), ERROR_CASES)
def test_decode_errors(text: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle.decode(text, (10, 10))
    with pytest.raises(RLEError, match=message):
        rle.parse_runs(text, 100)


@pytest.mark.parametrize("sign", ["", "-", "+"])
def test_token_past_ints_digit_limit(sign: str) -> None:
    # Found by tests/test_fuzz.py: int() refuses more than 4,300 digits, which the regex lets through; a
    # ValueError escaped before.
    digits = "9" * 5_000
    message = rf"^RLE token {re.escape(sign)}9+\.\.\. has 5000 digits, out of range for any image$"
    with pytest.raises(RLEError, match=message):
        rle.decode(f"1 {sign}{digits}", (10, 10))  # as a length
    with pytest.raises(RLEError, match=message):
        rle.parse_runs(f"{sign}{digits} 1", 100)  # as a start


@pytest.mark.parametrize("value", [5, 1.5, b"1 2", ["1", "2"]])
def test_non_string_is_an_error(value: object) -> None:
    with pytest.raises(RLEError, match="must be a string"):
        rle.decode(value, (4, 4))


def test_rle_error_is_a_pipeline_error() -> None:
    # Stages report PipelineError as a one-line user error; RLE problems must be among them.
    assert issubclass(RLEError, PipelineError)


def test_last_pixel_is_in_bounds() -> None:
    assert rle.decode("100 1", (10, 10))[9, 9] == 1
    assert rle.decode("91 10", (10, 10))[:, 9].all()


@pytest.fixture(scope="module")
def fixture_rows() -> list[tuple[str, int, str]]:
    if not OLD_FIXTURE.is_file():
        pytest.skip(f"real fixture {OLD_FIXTURE} is absent")
    return read_fixture_rows()


def test_fixture_strings_round_trip(fixture_rows: list[tuple[str, int, str]]) -> None:
    non_empty = [text for _, _, text in fixture_rows if text]
    assert len(fixture_rows) == 400 and len(non_empty) >= 60
    for text in non_empty:
        mask = rle.decode(text, (256, 1600))
        assert mask.any()
        assert rle.encode(mask) == text
        assert rle.area(text) == int(mask.sum())
        assert WELL_FORMED.fullmatch(text)


def test_fixture_strings_are_bounded_by_the_image(fixture_rows: list[tuple[str, int, str]]) -> None:
    # A real string needs every pixel up to its last run's end: one pixel fewer is an error.
    text = next(text for _, _, text in fixture_rows if text)
    starts, lengths = rle.parse_runs(text, 256 * 1600)
    end = int(starts[-1] + lengths[-1])  # 1-based last pixel
    assert rle.decode(text, (1, end)).sum() == rle.area(text)
    with pytest.raises(RLEError, match=f"ends at pixel {end}, past the image's {end - 1} pixels"):
        rle.decode(text, (1, end - 1))


# ----------------------------------------------------------------------------- the fast (canonical) path


def loop_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """The plain Kaggle loop: split, int, fill slices (no validation), as an independent oracle."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    tokens = text.split()
    for start, length in zip(tokens[0::2], tokens[1::2], strict=True):
        flat[int(start) - 1 : int(start) - 1 + int(length)] = 1
    return flat.reshape(shape, order="F")


def outcome(parse: object, text: str, n_pixels: int) -> tuple[list[int], list[int]] | str:
    """What a parser makes of a string: its runs, or its error message."""
    try:
        starts, lengths = parse(text, n_pixels)  # type: ignore[operator]
    except RLEError as error:
        return str(error)
    return starts.tolist(), lengths.tolist()


# Canonical (digits and single spaces) and valid: one run, the whole image, runs touching its last pixel,
# runs across a column boundary, adjacent runs, 1-pixel masks, leading zeros. For a 3x4 image (12 pixels).
FAST_VALID = ["1 1", "12 1", "1 12", "3 2", "2 5 9 4", "1 1 3 1 5 1 7 1 9 1 11 2", "2 2 4 3", "007 2"]
# Canonical but invalid: the fast path declines them and the token-by-token parser names the problem.
FAST_INVALID = [
    *["0 1", "1 0", "13 1", "12 2", "1 13", "5 2 3 1", "5 2 6 1", "5 2 5 1", "1 2 3", "7"],
    *["9223372036854775807 1", "1 9223372036854775807", "18446744073709551617 1", "1 " + "9" * 5_000],
]


@pytest.mark.parametrize("text", FAST_VALID)
def test_fast_path_takes_and_agrees_on_valid_canonical_strings(text: str) -> None:
    fast = rle._parse_canonical(text, 12)
    assert fast is not None
    starts, lengths = fast
    assert starts.dtype == lengths.dtype == np.int64
    assert outcome(lambda *args: fast, text, 12) == outcome(rle._parse_checked, text, 12)
    mask = rle.decode(text, (3, 4))
    np.testing.assert_array_equal(mask, loop_decode(text, (3, 4)))
    assert mask.dtype == np.uint8 and mask.shape == (3, 4)


@pytest.mark.parametrize("text", FAST_INVALID)
def test_fast_path_declines_invalid_strings_with_the_checked_parsers_message(text: str) -> None:
    assert rle._parse_canonical(text, 12) is None
    message = outcome(rle._parse_checked, text, 12)
    assert isinstance(message, str) and "\n" not in message
    assert outcome(rle.parse_runs, text, 12) == message
    with pytest.raises(RLEError) as error:
        rle.decode(text, (3, 4))
    assert str(error.value) == message


@pytest.mark.parametrize("text", [" 1 1", "1 1 ", "1  1", "1\t1", "1\n1", "+1 1", "1 1\x00", "\uff11 1"])
def test_non_canonical_strings_take_the_checked_parser(text: str) -> None:
    assert rle._parse_canonical(text, 12) is None
    assert outcome(rle.parse_runs, text, 12) == outcome(rle._parse_checked, text, 12)


def test_numpy_saturates_huge_tokens_so_the_fast_path_is_on() -> None:
    # The fast path's overflow safety rests on np.fromstring saturating; it switches itself off otherwise,
    # and this test says so (the fuzz tests would still pass, only slower).
    assert rle._SATURATES


# Canonical token lists: mostly small numbers (in and around a 5x6 image's 30 pixels), now and then a
# huge one, so that valid, overlapping, unsorted, out-of-range and odd-length strings all come up.
CANONICAL_TOKENS = st.lists(
    st.one_of(st.integers(0, 33), st.sampled_from([2**63 - 1, 2**63, 2**64 + 1, 10**30])), max_size=12
)


@settings(max_examples=400, deadline=None)
@given(CANONICAL_TOKENS)
def test_fast_and_checked_parsers_agree(tokens: list[int]) -> None:
    text = " ".join(map(str, tokens))
    checked = outcome(rle._parse_checked, text, 30) if text else ([], [])
    assert outcome(rle.parse_runs, text, 30) == checked
    fast = rle._parse_canonical(text, 30) if text else None
    if fast is not None:  # taken only when the checked parser accepts, with the same runs
        assert (fast[0].tolist(), fast[1].tolist()) == checked
    if not isinstance(checked, str):
        np.testing.assert_array_equal(rle.decode(text, (5, 6)), loop_decode(text, (5, 6)))


@settings(max_examples=150, deadline=None)
@given(masks())
def test_encoded_strings_take_the_fast_path(mask: np.ndarray) -> None:
    text = rle.encode(mask)
    if text:
        fast = rle._parse_canonical(text, mask.size)
        assert fast is not None
        starts, lengths = fast
        np.testing.assert_array_equal(rle.fill_runs(starts, lengths, mask.size), mask.ravel(order="F"))


@pytest.mark.parametrize(
    ("starts", "lengths", "expected"),
    [
        ([], [], [0, 0, 0, 0, 0, 0]),
        ([0], [6], [1, 1, 1, 1, 1, 1]),
        ([0], [1], [1, 0, 0, 0, 0, 0]),
        ([5], [1], [0, 0, 0, 0, 0, 1]),
        ([1, 3], [2, 3], [0, 1, 1, 1, 1, 1]),  # adjacent runs
        ([0, 2, 4], [1, 1, 1], [1, 0, 1, 0, 1, 0]),
    ],
)
def test_fill_runs(starts: list[int], lengths: list[int], expected: list[int]) -> None:
    flat = rle.fill_runs(np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64), 6)
    assert flat.dtype == np.uint8 and flat.tolist() == expected


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int64, np.float32])
def test_encode_any_memory_layout(order: str, dtype: type) -> None:
    # Column-major masks (decode's own) are read in place, others through a transpose: same string.
    mask = np.asarray(rle.decode("2 5 9 4 20 3", (5, 6)), dtype=dtype, order=order)
    assert rle.encode(mask) == "2 5 9 4 20 3"
    assert rle.encode(mask[:, ::2]) == reference_encode(mask[:, ::2])  # a strided view
    assert rle.encode(np.zeros((0, 4), dtype=dtype)) == ""


def test_decode_is_a_column_major_view_of_the_pixels() -> None:
    mask = rle.decode("2 5 9 4", (3, 4))
    assert mask.flags.f_contiguous
    np.testing.assert_array_equal(np.ascontiguousarray(mask), loop_decode("2 5 9 4", (3, 4)))
