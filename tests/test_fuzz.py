"""Fuzzing the parsers of user input: 10,000 generated inputs for the RLE parser and decoder and 10,000 for
the labels CSV readers (old and new format) may raise nothing but the project's own errors, as one line.

Generation is derandomized (the same inputs on every run, so CI is reproducible); a failure prints the
shrunk input, which then belongs in tests/test_rle.py or tests/test_dataset.py as a regression test.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.core import rle
from stages.core.dataset import (
    check_classes,
    check_duplicates,
    class_ids_of,
    parse_labels,
    read_csv,
    rle_column,
    validate_rles,
    wide_table,
)
from stages.core.errors import PipelineError, RLEError

# Derandomized: a fixed sequence of inputs, no example database replaying earlier local failures.
FUZZ = settings(deadline=None, derandomize=True, database=None)
# Inputs come BATCH to an example, no two alike in it: hypothesis spends 1-3 ms on each example here, more
# than most inputs take to check. Inputs = examples x BATCH.
BATCH = 8
RLE_TEXT_INPUTS = 6_000
RLE_RUNS_INPUTS = 4_000
CSV_INPUTS_PER_FORMAT = 5_000

CANONICAL = re.compile(r"(?:[1-9][0-9]* [1-9][0-9]*(?: [1-9][0-9]* [1-9][0-9]*)*)?")


def assert_one_line(error: PipelineError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)


# ------------------------------------------------------------------------------------------------- RLE

# Separators str.split() treats as whitespace (and the empty-mask check strips), and some it does not.
SEPARATORS = [
    *[" "] * 8,
    *["  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000"],
    *[",", ";", "_", "", "\u200b", "\ufeff", "\x00"],
]
# Tokens a regex or int() might get wrong: signs, unicode digits, floats, digit separators, huge values
# (past int64, and past Python's 4,300-digit limit of int(str)).
ODD_TOKENS = [
    *["0", "-0", "+0", "+1", "-1", "007", "--1", "+-1", "1-", "0x10", "0b1", "1_000", "a", "None", "True"],
    *["1.5", "1.0", "-0.0", "1e3", "1e+300", "5e-324", "nan", "NaN", "inf", "-inf"],
    # Arabic-Indic 12, fullwidth 1, superscript 2, mathematical double-struck 1: digits, but not ASCII.
    *["\u0661\u0662", "\uff11", "\u00b2", "\U0001d7d9"],
    *["9223372036854775807", "9223372036854775808", "18446744073709551617"],
    *["9" * 4_400, "-" + "9" * 4_400, "1" + "0" * 5_000],
]
# What pandas (or a caller) may hand over instead of a string.
NON_STRINGS = [
    *[None, math.nan, np.nan, np.float64("nan"), np.float32("nan"), pd.NA, pd.NaT, Decimal("NaN")],
    *[math.inf, 0.0, 1.5, 0, 5, -1, True, np.int64(3), Decimal("1")],
    *[b"1 2", bytearray(b"1 2"), ["1", "2"], ("1", "2"), {"1": "2"}, np.str_("1 2"), np.array(["1 2"])],
]
# Mostly small images (fast, and every pixel near an edge), now and then Severstal's 256x1600.
SHAPES = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.sampled_from([(1, 1), (1, 7), (7, 1), (2, 3), (40, 3), (3, 40), (256, 1600)]),
)


# Built once: strategies made inside a composite are rebuilt and revalidated on every draw.
TOKEN_LISTS = st.lists(st.one_of(st.integers(-3, 150).map(str), st.sampled_from(ODD_TOKENS)), max_size=8)
SEPARATOR = st.sampled_from(SEPARATORS)


@st.composite
def token_text(draw: st.DrawFn) -> str:
    """Tokens, mostly small integers, joined by one kind of whitespace, now and then one odd separator."""
    tokens = draw(TOKEN_LISTS)
    text = draw(SEPARATOR).join(tokens)
    if tokens and draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(SEPARATOR) + text[cut:]
    return text


RUN_MUTATIONS = st.sampled_from(
    ["valid", "split", "swap", "overlap", "past_end", "zero", "negative", "duplicate", "huge", "random"]
)
HUGE_RUNS = st.sampled_from([(2**63 - 1, 1), (1, 2**63), (1, 10**40), (-(2**64), 1)])
DENSITIES = st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0])
SEEDS = st.integers(0, 2**32 - 1)


def pick(draw: st.DrawFn, count: int) -> int:
    """A number in 0..count-1 (shrinks toward 0)."""
    return draw(st.integers(0, count - 1))


@st.composite
def run_lists(draw: st.DrawFn, n_pixels: int) -> list[tuple[int, int]]:
    """Runs of a random mask, valid by construction unless mutated into one invalid kind."""
    # A mask from a seed, not a drawn bit per pixel: hypothesis spends its time on the mutations instead.
    rng = np.random.default_rng(draw(SEEDS))
    if n_pixels <= 10_000:
        tokens = [int(token) for token in rle.encode(rng.random((1, n_pixels)) < draw(DENSITIES)).split()]
        runs = list(zip(tokens[0::2], tokens[1::2], strict=True))
    else:  # a large image: a few runs at random places
        cuts = np.unique(rng.integers(1, n_pixels + 2, size=2 * int(rng.integers(0, 5)))).tolist()
        runs = [(cuts[i], cuts[i + 1] - cuts[i]) for i in range(0, len(cuts) - 1, 2)]
    kind = draw(RUN_MUTATIONS)
    if kind == "split":  # adjacent runs: valid, though not what encode writes
        pieces = []
        for start, length in runs:
            cut = 1 + pick(draw, length)
            pieces += [(start, cut), (start + cut, length - cut)] if cut < length else [(start, length)]
        return pieces
    if kind == "random":  # anywhere from just before the image to just past it
        return [(pick(draw, n_pixels + 5) - 2, pick(draw, n_pixels + 5) - 2) for _ in range(pick(draw, 7))]
    if not runs:
        runs = [(1 + pick(draw, n_pixels), 1)]
    index = pick(draw, len(runs))
    start, length = runs[index]
    if kind == "swap" and len(runs) > 1:
        other = pick(draw, len(runs))
        runs[index], runs[other] = runs[other], runs[index]
    elif kind == "overlap":
        runs.insert(index + 1, (start + pick(draw, length), 1 + pick(draw, 3)))
    elif kind == "past_end":
        runs[-1] = (runs[-1][0], n_pixels - runs[-1][0] + 2 + pick(draw, 5))
    elif kind == "zero":
        runs[index] = (0, length) if pick(draw, 2) else (start, 0)
    elif kind == "negative":
        runs[index] = (-start, length) if pick(draw, 2) else (start, -length)
    elif kind == "duplicate":
        runs.insert(index, (start, length))
    elif kind == "huge":
        runs[index] = draw(HUGE_RUNS)
    return runs


def reference_decode(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Run by run, independently of decode's cumulative-sum trick."""
    height, width = shape
    flat = np.zeros(height * width, dtype=np.uint8)
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        assert not flat[start : start + length].any(), "parse_runs let overlapping runs through"
        flat[start : start + length] = 1
    return flat.reshape(width, height).T


def check_rle(value: object, shape: tuple[int, int]) -> None:
    """parse_runs and decode agree: both raise the same RLEError, or both succeed with a consistent mask."""
    n_pixels = shape[0] * shape[1]
    try:
        starts, lengths = rle.parse_runs(value, n_pixels)
    except RLEError as error:
        assert_one_line(error)
        try:
            rle.decode(value, shape)
        except RLEError as decode_error:
            assert str(decode_error) == str(error)
        else:
            raise AssertionError(f"parse_runs rejected {value!r} ({error}) but decode accepted it")
        return
    mask = rle.decode(value, shape)
    assert mask.shape == shape and mask.dtype == np.uint8
    assert ((mask == 0) | (mask == 1)).all()
    np.testing.assert_array_equal(mask, reference_decode(starts, lengths, shape))
    assert rle.area(value) == int(mask.sum()) == int(lengths.sum())
    # Re-encoding gives the canonical string (maximal runs, single spaces) of the same mask, a fixed point.
    canonical = rle.encode(mask)
    assert CANONICAL.fullmatch(canonical), canonical
    np.testing.assert_array_equal(rle.decode(canonical, shape), mask)
    assert rle.encode(rle.decode(canonical, shape)) == canonical


RLE_VALUES = st.one_of(
    token_text(), st.text(max_size=30), st.sampled_from(NON_STRINGS), st.floats(), st.integers()
)


@st.composite
def runs_text(draw: st.DrawFn) -> tuple[str, tuple[int, int]]:
    """An RLE string of runs for an image of a drawn shape, and the shape."""
    shape = draw(SHAPES)
    runs = draw(run_lists(shape[0] * shape[1]))
    separator = draw(st.sampled_from([" ", " ", "  ", "\t", "\n"]))
    return separator.join(f"{start}{separator}{length}" for start, length in runs), shape


def batches(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """BATCH inputs for one example, no two alike (compared by repr: NaN is not equal to itself)."""
    return st.lists(strategy, min_size=BATCH, max_size=BATCH, unique_by=repr)


@settings(FUZZ, max_examples=RLE_TEXT_INPUTS // BATCH)
@given(batches(st.tuples(RLE_VALUES, SHAPES)))
def test_rle_fuzz_text(inputs: list[tuple[object, tuple[int, int]]]) -> None:
    for value, shape in inputs:
        check_rle(value, shape)


@settings(FUZZ, max_examples=RLE_RUNS_INPUTS // BATCH)
@given(batches(runs_text()))
def test_rle_fuzz_runs(inputs: list[tuple[str, tuple[int, int]]]) -> None:
    for text, shape in inputs:
        check_rle(text, shape)


# ------------------------------------------------------------------------------------------ labels CSVs

NUM_CLASSES = 4
HEIGHT, WIDTH = 4, 5  # small images: most RLE cells that parse still have to fit, or fail for it
OLD_HEADER = ["ImageId_ClassId", "EncodedPixels"]
NEW_HEADER = ["ImageId", "ClassId", "EncodedPixels"]

# Cell values by column. A clean file draws only from the first lists, so that it gets past parsing to the
# duplicate, class and RLE checks; the others draw from both lists and from arbitrary text.
CLEAN_CELLS = {
    "ImageId": ["a.jpg", "b.jpg", "img_2_b.jpg", "c.png", " a.jpg ", "a b.jpg", "x,y.jpg", "\u00fc.jpg"],
    "ClassId": ["1", "2", "3", "4", " 3 ", "4.0", "0"],
    "EncodedPixels": [
        *["", "", "1 1", "1 3", "5 2 10 1", "1 20", "19 2", "20 1", " 1 2 ", "1\t2"],
        "2 2 4 3",
        # Malformed, or past the 20 pixels of a 4x5 image: for validate_rles to reject.
        *["21 1", "1 2 3", "5 x", "0 4", "10 2 3 1", "10 5 12 1", "1 -1", "9" * 30 + " 1"],
        *["9" * 4_400 + " 1", "nan", "None", "1,2", '1 "2', "1 2\n3 4", "\uff11 1"],
    ],
}
BROKEN_CELLS = {
    "ImageId": ["", 'q"uote.jpg', "a\nb.jpg", "a\r.jpg", "\t", "\x00.jpg", "_1"],
    "ClassId": [
        *["-1", "5", "2.5", "x", "", "+2", "-0", "3e0", "0x1", "1_0", "True", "None", "nan", "inf", "-inf"],
        *["1e30", "1e400", "4.0000000000000001", "\uff11", "\u0663", "99999999999999999999"],
        *["9223372036854775808", "18446744073709551617", "-9223372036854775809"],
    ],
    "EncodedPixels": ["\x00", '"', "\r", "1 1\r\n"],
}
# Keys of the old format that are not '<image>_<class>', or have a bad class.
BAD_KEYS = ["abc.jpg", "abc.jpg_", "_1", "abc.jpg_x", "_", "", "a.jpg__1", "a.jpg_1_", "a.jpg_ 1"]

Row = dict[str, str]  # a value for every column of either format; the header picks which are written


def all_rows(cells: dict[str, list[str]]) -> list[Row]:
    """Every combination of the cell values, with the old format's key made from its image and class."""
    return [
        {
            "ImageId": image,
            "ClassId": class_id,
            "EncodedPixels": text,
            "ImageId_ClassId": f"{image}_{class_id}",
        }
        for image, class_id, text in itertools.product(*(cells[column] for column in NEW_HEADER))
    ]


# Rows and headers are drawn whole from lists built once: a draw or two per row instead of text per cell
# keeps generation cheap, and shrinking still moves toward the lists' heads.
CLEAN_ROWS = all_rows(CLEAN_CELLS)
ANY_ROWS = all_rows({column: CLEAN_CELLS[column] + BROKEN_CELLS[column] for column in NEW_HEADER}) + [
    {**row, "ImageId_ClassId": key} for key, row in zip(BAD_KEYS * 3, CLEAN_ROWS[::7], strict=False)
]
GOOD_HEADERS = {"old": [OLD_HEADER], "new": [list(order) for order in itertools.permutations(NEW_HEADER)]}


def broken_headers(header: list[str]) -> list[list[str]]:
    """A column missing, one too many or twice, the other format's header, wrong case, padding, nothing."""
    other = NEW_HEADER if header == OLD_HEADER else OLD_HEADER
    return [
        *(header[:index] + header[index + 1 :] for index in range(len(header))),
        *([*header, extra] for extra in ["", "Extra", "EncodedPixels", "ImageId"]),
        ["", *header],
        other,
        [column.lower() for column in header],
        [f" {header[0]} ", *header[1:]],
        [],
    ]


ANY_HEADERS = {
    csv_format: headers * 8 + [broken for header in headers for broken in broken_headers(header)]
    for csv_format, headers in GOOD_HEADERS.items()
}
TERMINATORS = ["\n", "\n", "\r\n", "\r"]
# (line terminator, quoting, trailing line break, encoding); quoting None writes cells as they are, so
# commas, quotes and line breaks inside them break the structure.
CLEAN_WRITING = list(
    itertools.product(TERMINATORS, [csv.QUOTE_MINIMAL, csv.QUOTE_ALL], [True, False], ["utf-8", "utf-8-sig"])
)
ANY_WRITING = list(
    itertools.product(
        TERMINATORS,
        [csv.QUOTE_MINIMAL, csv.QUOTE_MINIMAL, csv.QUOTE_ALL, None],
        [True, False],
        ["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "cp1252"],
    )
)
ROW_KINDS = st.sampled_from(["good"] * 12 + ["extra", "short", "other", "blank"])
TEXT_COLUMNS = st.sampled_from([*NEW_HEADER, "ImageId_ClassId"])
TEXT = st.text(max_size=4)
EXTRA_FIELDS = st.sampled_from(["", "1", "1 2"])
CLEAN_ROW = st.sampled_from(CLEAN_ROWS)
ANY_ROW = st.sampled_from(ANY_ROWS)


@st.composite
def broken_row(draw: st.DrawFn) -> Row | list[str]:
    """A row of any cells, now and then one of them arbitrary text; or a list of fields that does not fit
    the header: one field too many or too few, the other format's fields, a blank line."""
    row = dict(draw(ANY_ROW))
    if not pick(draw, 8):
        row[draw(TEXT_COLUMNS)] = draw(TEXT)
    kind = draw(ROW_KINDS)
    if kind == "extra":
        return [row["ImageId"], row["ClassId"], row["EncodedPixels"], draw(EXTRA_FIELDS)]
    if kind == "short":
        return [row["ImageId"], row["ClassId"]]
    if kind == "other":  # fits the other format, whichever this file is in
        return [row["ImageId_ClassId"], row["EncodedPixels"]] if pick(draw, 2) else list(row.values())
    if kind == "blank":
        return []
    return row


# Strategies built once per format, not on every draw.
HEADERS = {
    (csv_format, clean): st.sampled_from(GOOD_HEADERS[csv_format] if clean else ANY_HEADERS[csv_format])
    for csv_format in GOOD_HEADERS
    for clean in (True, False)
}
ROWS = {
    True: st.lists(CLEAN_ROW, min_size=1, max_size=6),
    False: st.lists(broken_row(), min_size=1, max_size=6),
}
WRITING = {True: st.sampled_from(CLEAN_WRITING), False: st.sampled_from(ANY_WRITING)}
RANDOM_FILE = st.binary(max_size=40)
STRAY_BYTES = st.binary(min_size=1, max_size=6)


@st.composite
def csv_files(draw: st.DrawFn, csv_format: str) -> bytes:
    """A labels CSV as bytes. An eighth are clean: the format's header, rows of good images and classes,
    UTF-8, quoted as csv writes them; their RLE cells (valid or not) and duplicate rows are left to the
    checks. The rest add broken headers and rows, any text, no quoting, other encodings and stray bytes; a
    few are random bytes."""
    if not pick(draw, 32):
        return draw(RANDOM_FILE)
    clean = not pick(draw, 8)
    header = draw(HEADERS[csv_format, clean])
    rows = [] if not pick(draw, 32) else draw(ROWS[clean])  # now and then a header alone
    if rows and not pick(draw, 6):  # a duplicate, somewhere after its first
        rows.insert(pick(draw, len(rows) + 1), rows[pick(draw, len(rows))])
    lines = [header, *(row if isinstance(row, list) else [row.get(c, "") for c in header] for row in rows)]
    terminator, quoting, trailing, encoding = draw(WRITING[clean])
    if quoting is None:
        text = terminator.join(",".join(fields) for fields in lines) + terminator
    else:
        buffer = io.StringIO()
        csv.writer(buffer, quoting=quoting, lineterminator=terminator).writerows(lines)
        text = buffer.getvalue()
    content = (text if trailing else text.rstrip("\r\n")).encode(encoding, errors="replace")
    if not clean and not pick(draw, 8):  # stray bytes, as in a truncated or corrupted file
        cut = pick(draw, len(content) + 1)
        content = content[:cut] + draw(STRAY_BYTES) + content[cut:]
    return content


def read_labels(path: Path, allow_placeholder: bool) -> None:
    """The checks index_dataset runs on train.csv and sample_submission.csv, short of the images: every
    image is HEIGHT x WIDTH, and the sample (which sets the class count) is taken to list NUM_CLASSES."""
    source = str(path)
    frame = read_csv(path)
    # pandas turns leading fields into an index when the first row has more fields than the header.
    assert isinstance(frame.index, pd.RangeIndex), frame.index
    labels = parse_labels(frame, source)
    check_duplicates(labels, source)
    check_classes(labels, NUM_CLASSES, source, allow_placeholder=allow_placeholder)
    # The table's classes as index_dataset takes them from a train.csv (fewer columns, a faster example).
    num_classes = max(class_ids_of(labels), default=1)
    table = wide_table(labels, sorted(labels.image_ids), num_classes)
    table.insert(1, "height", HEIGHT)
    table.insert(2, "width", WIDTH)
    validate_rles(table, num_classes, labels, source)
    assert table["ImageId"].is_unique and len(table) == len(labels.image_ids)
    for class_id in range(1, num_classes + 1):
        for text in table[rle_column(class_id)]:
            assert rle.decode(text, (HEIGHT, WIDTH)).shape == (HEIGHT, WIDTH)


def check_csv(path: Path, content: bytes, allow_placeholder: bool) -> None:
    """Reading the file either succeeds or raises a one-line PipelineError naming it; nothing else."""
    path.write_bytes(content)
    try:
        read_labels(path, allow_placeholder)
    except PipelineError as error:
        assert_one_line(error)
        assert str(error).startswith(f"{path}: "), str(error)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by every example (hypothesis refuses function-scoped fixtures like tmp_path)."""
    return tmp_path_factory.mktemp("fuzz") / "labels.csv"


@pytest.mark.filterwarnings("error")  # a RuntimeWarning (say a cast that overflows) is a bug here too
@settings(FUZZ, max_examples=CSV_INPUTS_PER_FORMAT // BATCH)
@given(batches(csv_files("old")))
def test_csv_fuzz_old_format(csv_path: Path, contents: list[bytes]) -> None:
    for index, content in enumerate(contents):
        check_csv(csv_path, content, allow_placeholder=index % 2 == 1)  # as a train.csv, then as a sample


@pytest.mark.filterwarnings("error")
@settings(FUZZ, max_examples=CSV_INPUTS_PER_FORMAT // BATCH)
@given(batches(csv_files("new")))
def test_csv_fuzz_new_format(csv_path: Path, contents: list[bytes]) -> None:
    for index, content in enumerate(contents):
        check_csv(csv_path, content, allow_placeholder=index % 2 == 1)
