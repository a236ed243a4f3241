"""Datasets and prediction inputs from files: CSV, NPY and NPZ.

- CSV (UTF-8, a byte-order mark allowed; another encoding is refused naming the line): a
  header row is optional: `header=True`/`False` says whether the first line names the columns;
  by default it is guessed, a header when a cell of it is not a number above one that is, or
  when it is exactly 0,1,...,n-1 for 3 or more columns (the names pandas gives unnamed
  columns) above a row that is not (a first row of other numbers is data). The target
  column is named by `target_column` (a header name or a 0-based index; -1, the default, is
  the last column; a name the header gives twice is refused, asking for the index). A column
  read must have a name in a header (an empty one, as pandas' index, is refused). Every row
  must have a target: an empty target, or one of the missing-value markers of pandas'
  read_csv (NA, N/A, #N/A, NaN, nan, null, NULL, None, <NA>, ... in any case), is refused
  naming its line. Integer text targets become int64 labels,
  other numbers float32 regression targets, and words (`setosa`) class labels numbered in
  sorted order (their names become the dataset's class names), or in the order of the
  `class_names` given: a word not among them is refused naming its line, and a name no row
  has is a class without examples. Features must be numeric.
  Features and regression targets, sent as float32, must be finite float32 values (no nan, inf
  or 1e40), and integer labels int64 ones: a cell that is not is refused naming its line and
  column.
- Targets files (beside CSV or NPY features, or an array): an .npy array, or a CSV file of one
  column; a CSV file of several columns needs `target_column` to pick one (pandas'
  `Series.to_csv()` writes its index beside the targets). Targets one apart from the features'
  rows are refused with a hint at a header read as data.
- NPY: one array per file (features, then targets from a second file).
- NPZ: arrays named `X`/`y` or `features`/`targets`, with as many targets as rows of features.
- Array files hold numbers (float16 features are sent as float32); text labels (`setosa`) of
  an NPY or NPZ file become classes as a CSV file's words do. Other arrays are refused naming
  the file.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import secrets
import zipfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from trainwire.engine.errors import quoted

from .results import Prediction

PathLike = str | Path


@dataclass(frozen=True)
class TableData:
    """Arrays read from a file, with the column and class names it gave."""

    features: np.ndarray
    targets: np.ndarray | None
    feature_names: list[str]
    class_names: list[str]


def _is_number(text: str) -> bool:
    if "_" in text:  # float() takes "1_0" as 10: no number a CSV file means
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(text: str) -> bool:
    # Digits alone: int() would also take "1_0" (10).
    return _INTEGER.fullmatch(text) is not None


_INTEGER = re.compile(r"[+-]?[0-9]+")

# The cells pandas' read_csv takes as missing by default (its na_values), compared here without
# regard to case or surrounding spaces: a target "NA" is no class named "NA".
_MISSING = frozenset(
    marker.lower()
    for marker in (
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
        "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    )
)  # fmt: skip


def _is_missing(text: str) -> bool:
    return text.strip().lower() in _MISSING


def _has_header(rows: list[list[str]]) -> bool:
    """Whether the first row names the columns, guessed: some cell of it is not a number while
    the cell below it is (a column of word labels tells nothing either way), or it is exactly
    0,1,...,n-1 for n >= 3 columns (the names pandas gives unnamed columns, as
    `pd.DataFrame(array).to_csv(index=False)` writes) and the row below it is not. A lone row is
    a header unless all of it is numeric."""
    first = rows[0]
    if len(rows) == 1:
        return not all(_is_number(cell) for cell in first)
    second = rows[1]
    if _is_default_names(first) and not _is_default_names(second):
        return True
    return any(
        not _is_number(cell) and _is_number(below)
        for cell, below in zip(first, second, strict=False)
    )


def _is_default_names(row: list[str]) -> bool:
    """Whether a row is "0,1,...,n-1" with n >= 3: fewer columns are too likely data (a feature
    0 with a label 1)."""
    return len(row) >= 3 and [cell.strip() for cell in row] == [str(i) for i in range(len(row))]


_FORMATS = {
    ".csv": ("CSV file", "CSV files hold numbers (and word labels) separated by commas"),
    ".npy": ("NumPy array file (.npy)", "save one array of numbers with numpy.save"),
    ".npz": ("NumPy archive (.npz)", "save arrays X and y with numpy.savez"),
}


def _unreadable(path: PathLike, kind: str, error: Exception, line: int = 0) -> ValueError:
    """The error for a file that numpy or the csv module could not parse as `kind` (".csv",
    ".npy" or ".npz"): it names the file (and `line`), says what the file is not and what to do,
    where their own errors would end in a traceback. It never repeats numpy's advice to load a
    file "unsafely" (allow_pickle): nothing read from a file may run code."""
    name, advice = _FORMATS[kind]
    if isinstance(error, EOFError):
        reason = "it is empty"
    elif isinstance(error, zipfile.BadZipFile):
        reason = "it is no zip archive"
    elif isinstance(error, csv.Error):
        # The one error of a reader opened with newline="": a cell past the module's limit.
        reason = f"a cell is longer than {csv.field_size_limit()} characters"
    elif isinstance(error, UnicodeDecodeError):
        if error.object[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte-order mark
            reason = "it is UTF-16 text, not UTF-8"
        else:
            reason = f"byte 0x{error.object[error.start]:02x} is not UTF-8 text"
        advice = "save it as CSV UTF-8 (in Excel, Save As 'CSV UTF-8'; pandas writes UTF-8)"
    elif "pickle" in str(error):  # no array header, or an array of Python objects
        reason = "it holds no array of numbers"
    else:  # such as numpy's "Failed to read all data for array" of a truncated file
        reason = str(error)
    where = f"{path}:{line}" if line else str(path)
    return ValueError(f"{where} is not a readable {name}: {reason}; {advice}")


def read_npy(path: PathLike) -> np.ndarray:
    """The array of a .npy file; a file that holds none is refused naming it."""
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, EOFError) as error:
        raise _unreadable(path, ".npy", error) from None


def _array_labels(
    y: np.ndarray, source: str, class_names: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Targets read from an array file: numbers as they are, and text labels (`setosa`) as
    classes, numbered as a CSV file's words are; targets of another kind are refused naming
    the file."""
    if y.dtype.kind == "U" and y.ndim == 1:
        words = [str(word).strip() for word in y]
        return _word_labels(words, lambda i: f"{source}: target {i}", class_names)
    if y.dtype.kind not in "iubf":
        raise ValueError(
            f"{source} holds targets of dtype {y.dtype}, which is no number or text label: "
            "save integer labels (naming the classes with class_names) or numbers"
        )
    return y, []


def _check_features(x: np.ndarray, source: str) -> np.ndarray:
    """Features read from an array file, refused naming the file unless they are numbers."""
    if x.dtype.kind not in "iubf":
        raise ValueError(
            f"{source} holds features of dtype {x.dtype}, which are no numbers: save the "
            "features as an array of numbers (integers or floats)"
        )
    return x


def _read_npz(path: PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """The features and targets of an .npz file (arrays X and y, features and targets, or x and
    y), or None if it holds neither pair; a file that is no archive is refused naming it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            for x_key, y_key in (("X", "y"), ("features", "targets"), ("x", "y")):
                if x_key in archive and y_key in archive:
                    arrays = archive[x_key], archive[y_key]
                    for key, array in zip((x_key, y_key), arrays, strict=True):
                        if not isinstance(array, np.ndarray):  # a member that is no .npy file
                            raise ValueError(f"its member {key!r} is no NumPy array")
                    return arrays
        return None
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, ".npz", error) from None


# Rows read, then converted to numbers, at a time: a file's text is never held whole (a 50 MB
# file of 339,000 rows, held as lists of strings, took 1.7 GB).
_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class _CsvRows:
    """A CSV file open for reading: its column names (x0, x1, ... without a header), whether it
    has a header, and its data rows as (line, cells), read as they are consumed (blank lines are
    skipped, so a row's place is not its line) and each checked to be as wide as the first."""

    names: list[str]
    has_header: bool
    rows: Iterator[tuple[int, list[str]]]


@contextmanager
def _csv_rows(path: PathLike, header: bool | None = None) -> Iterator[_CsvRows]:
    """The CSV file open for reading (`_CsvRows`); `header`: True or False says whether its
    first line names the columns, None guesses it from its first two rows."""
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first cell.
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        numbered = _numbered_rows(path, csv.reader(handle))
        first = list(itertools.islice(numbered, 2))
        if not first:
            raise ValueError(f"{path} has no rows")
        has_header = _has_header([row for _, row in first]) if header is None else header
        width = len(first[0][1])
        names = [c.strip() for c in first[0][1]] if has_header else [f"x{i}" for i in range(width)]
        body = itertools.chain(first[1:] if has_header else first, numbered)
        yield _CsvRows(names, has_header, _of_width(path, body, width))


def _numbered_rows(path: PathLike, reader: Any) -> Iterator[tuple[int, list[str]]]:
    """The reader's rows that hold something, each with its line."""
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                # line_num is the line a row ends on: its own, unless a quoted cell spans lines.
                yield reader.line_num, row
    except csv.Error as error:
        raise _unreadable(path, ".csv", error, reader.line_num) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _of_width(
    path: PathLike, rows: Iterator[tuple[int, list[str]]], width: int
) -> Iterator[tuple[int, list[str]]]:
    for line, row in rows:
        if len(row) != width:
            raise ValueError(f"{path}:{line} has {len(row)} columns, the header has {width}")
        yield line, row


@dataclass(frozen=True)
class _Columns:
    """What `_read_columns` read of a CSV file's rows."""

    values: np.ndarray  # the numeric columns, float32, a row per data row
    targets: list[str]  # the target column's cells, stripped ([] without one)
    lines: array[int]  # each data row's line


def _read_columns(
    path: PathLike, table: _CsvRows, columns: Sequence[int], target: int | None
) -> _Columns:
    """Reads the rest of `table`'s rows: its `columns` as numbers (`_numeric_columns`, a block
    of rows at a time) and, when given, the `target` column's cells as text."""
    names = table.names if table.has_header else None
    blocks: list[np.ndarray] = []
    targets: list[str] = []
    lines = array("q")
    while block := list(itertools.islice(table.rows, _BLOCK_ROWS)):
        block_lines = [line for line, _ in block]
        cells = [row for _, row in block]
        blocks.append(_numeric_columns(path, names, cells, block_lines, columns))
        lines.extend(block_lines)
        if target is not None:
            targets.extend(row[target].strip() for row in cells)
    if not blocks:
        raise ValueError(f"{path} has a header but no data rows")
    values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return _Columns(values, targets, lines)


def _not_utf8(path: PathLike) -> ValueError:
    """The error for a CSV file that is not UTF-8, naming the line of its first bad byte (the
    error of a text file names a position in the block it was decoding)."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return _unreadable(path, ".csv", error, data.count(b"\n", 0, error.start) + 1)
    raise AssertionError("unreachable: the file failed to decode")


def _numeric_columns(
    path: PathLike,
    names: Sequence[str] | None,
    body: list[list[str]],
    lines: Sequence[int],
    columns: Sequence[int],
) -> np.ndarray:
    """The given columns of the rows, in that order, as float32. A cell that is no number, or no
    finite float32 (nan, inf, 1e40), is refused naming its line and its column: by the header's
    name (`names`), or else by its position."""
    try:
        values = np.array([[float(row[i]) for i in columns] for row in body], dtype=np.float64)
    except ValueError:
        values = None
    if values is not None:
        bad = np.argwhere(~(np.abs(values) <= _FLOAT32_MAX))  # NaN compares False too
        if not len(bad):
            return values.astype(np.float32)
        row, at = (int(i) for i in bad[0])
        cell = body[row][columns[at]]
        raise ValueError(
            f"{path}:{lines[row]}: feature column {_column_name(names, columns[at])} holds "
            f"{quoted(cell.strip())}, {_not_finite(cell)}; every feature must be a finite number"
        )
    # Only a refused file gets here: find its first bad cell.
    for line, row_cells in zip(lines, body, strict=True):
        for i in columns:
            try:
                float(row_cells[i])
            except ValueError:
                cell = row_cells[i]
                held = f"holds {quoted(cell.strip())}" if cell.strip() else "is empty"
                if cell.strip() and _is_missing(cell):
                    held += ", a missing value"
                raise ValueError(
                    f"{path}:{line}: feature column {_column_name(names, i)} {held}; every "
                    "feature column must be numeric"
                ) from None
    raise AssertionError("unreachable: a cell above failed float()")


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = np.iinfo(np.int64)


def _word_labels(
    words: Sequence[str], where: Callable[[int], str], class_names: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Word labels as int64 classes and their names: numbered in the order of `class_names`
    when given (a word not among them is refused, `where(i)` naming the i-th; a name no row
    has is a class without examples), else in sorted order."""
    names = list(class_names) or sorted(set(words))
    index = {name: i for i, name in enumerate(names)}
    for i, word in enumerate(words):
        if word not in index:
            raise ValueError(
                f"{where(i)} holds {quoted(word)}, which is not among the class names given "
                f"({', '.join(names)}); add it to class_names, or correct the label"
            )
    return np.array([index[word] for word in words], dtype=np.int64), names


def _check_named(path: PathLike, names: Sequence[str], columns: Iterable[int]) -> None:
    """Refuses a column read whose header cell is empty: an index column pandas writes (its
    `to_csv()` default) would be a feature, which on sorted data leaks the label."""
    for i in sorted(columns):
        if not names[i]:
            raise ValueError(
                f"{path}: column {i} (counting from 0) has no name in the header: an index "
                "written by pandas? Save the file with to_csv(index=False), or name the column"
            )


def _column_name(names: Sequence[str] | None, index: int) -> str:
    """A column as messages name it: by the header's name, or else by its position."""
    return repr(names[index]) if names is not None else f"{index} (counting from 0)"


def _not_finite(cell: str) -> str:
    """Why a cell that float() reads is refused as a float32 value."""
    value = float(cell)
    if value != value:
        return "a missing value"
    if abs(value) == float("inf"):
        return "which is no finite number"
    return f"beyond the range of float32 (+-{_FLOAT32_MAX:.3g})"


def read_csv(
    path: PathLike,
    target_column: str | int | None = -1,
    *,
    header: bool | None = None,
    class_names: Sequence[str] = (),
) -> TableData:
    """Features (float32) and targets from a CSV file; `target_column=None` reads features only.
    `header` says whether the first line names the columns (None: guessed, or True when
    `target_column` is a name). Word labels are numbered in the order of `class_names` when
    given (see `_word_labels`), else in sorted order."""
    return _read_csv(path, target_column, header, class_names, features=True)


def read_targets(
    path: PathLike,
    target_column: str | int | None = None,
    *,
    header: bool | None = None,
    class_names: Sequence[str] = (),
) -> tuple[np.ndarray, list[str]]:
    """The targets of a .npy file, or of a CSV file (and the class names of word labels): its
    one column, or the column `target_column` picks (a name or a 0-based index) of a file of
    several; a file of several columns without it is refused listing them (pandas'
    `Series.to_csv()` writes the index beside the targets)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".npy":
        if target_column is not None:
            raise ValueError(
                f"target_column picks the targets from a CSV file's columns, but {file} is no "
                f"CSV file. Received: target_column={target_column!r}"
            )
        return _array_labels(read_npy(file), str(file), class_names)
    if suffix != ".csv":
        raise ValueError(f"targets must be a .npy or .csv file, or an array. Received: {file}")
    if target_column is None:
        with _csv_rows(file, header) as table:
            names, has_header = table.names, table.has_header
        if len(names) != 1:
            listed = f" ({', '.join(map(repr, names))})" if has_header else ""
            raise ValueError(
                f"{file} has {len(names)} columns{listed}, but a targets file holds one: pick "
                "the targets with target_column (--target-column), a name or a 0-based index"
            )
        target_column = 0
    read = _read_csv(file, target_column, header, class_names, features=False)
    assert read.targets is not None  # a target column was given
    return read.targets, read.class_names


def _read_csv(
    path: PathLike,
    target_column: str | int | None,
    header: bool | None,
    given_names: Sequence[str],
    *,
    features: bool,
) -> TableData:
    """`read_csv`; without `features`, the other columns are left unread (a targets file's)."""
    named = isinstance(target_column, str) and not target_column.lstrip("-").isdigit()
    if named and header is False:
        raise ValueError(
            f"target column {target_column!r} is a name, but {path} has no header (header=False): "
            "give the column's 0-based index instead"
        )
    with _csv_rows(path, True if named else header) as table:
        column, feature_columns = _target_and_features(path, table, target_column, features)
        read = _read_columns(path, table, feature_columns, column)
    names, has_header, lines = table.names, table.has_header, read.lines
    targets: np.ndarray | None = None
    class_names: list[str] = []
    if column is not None:
        cells = read.targets
        for line, cell in zip(lines, cells, strict=True):
            if _is_missing(cell):
                held = f"holds {quoted(cell)}, a missing value" if cell else "is empty"
                raise ValueError(
                    f"{path}: row {line} has no target (column {names[column]!r} {held}); "
                    "every row needs one: fill it in, or remove the row"
                )
        name = _column_name(names if has_header else None, column)
        if all(_is_int(c) for c in cells):
            for line, cell in zip(lines, cells, strict=True):
                # By its digits first: int() refuses a text of more than 4,300 of them with
                # its own error, naming no file.
                digits = cell.lstrip("+-").lstrip("0")
                if len(digits) > 19 or not _INT64.min <= int(cell) <= _INT64.max:
                    raise ValueError(
                        f"{path}:{line}: target column {name} holds {quoted(cell)}, too large for "
                        f"a label (an int64, at most {_INT64.max}); is it the right column?"
                    )
            targets = np.array([int(c) for c in cells], dtype=np.int64)
        elif all(_is_number(c) for c in cells):
            for line, cell in zip(lines, cells, strict=True):
                if not abs(float(cell)) <= _FLOAT32_MAX:
                    raise ValueError(
                        f"{path}:{line}: target column {name} holds {quoted(cell)}, "
                        f"{_not_finite(cell)}; every target must be a finite number"
                    )
            targets = np.array([float(c) for c in cells], dtype=np.float32)
        else:
            if header is None and not has_header:
                _refuse_a_lone_first_word(path, cells, lines[0])
            targets, class_names = _word_labels(
                cells, lambda i: f"{path}:{lines[i]}: target column {name}", given_names
            )
    feature_names = [names[i] for i in feature_columns] if has_header else []
    return TableData(read.values, targets, feature_names, class_names)


def _refuse_a_lone_first_word(path: PathLike, words: Sequence[str], line: int) -> None:
    """Refuses word labels whose first (guessed to be data, not a header) is a word no other row
    has while every other word labels several rows: most likely the target column's name above
    a header of numbers (`400,450,500,species`, a spectrum's wavelengths), which made a class of
    one example and a row of the header's numbers. Asked, the caller says which it is."""
    counts = Counter(words)
    others = [count for word, count in counts.items() if word != words[0]]
    if counts[words[0]] == 1 and others and min(others) > 1:
        raise ValueError(
            f"{path}:{line}: is the first line a header? Its target {quoted(words[0])} "
            "labels no other row, while every other label labels several; say so with "
            "header=True (--header), or header=False (--no-header) if it is data"
        )


def _target_and_features(
    path: PathLike, table: _CsvRows, target_column: str | int | None, features: bool
) -> tuple[int | None, list[int]]:
    """The target column `target_column` names (None without one) and the feature columns (the
    others, or none without `features`), each read column checked to have a name."""
    names = table.names
    width = len(names)
    column: int | None = None
    if target_column is not None:
        if isinstance(target_column, str) and not target_column.lstrip("-").isdigit():
            if target_column not in names:
                raise ValueError(
                    f"target column {target_column!r} is not in {path}; columns: {names}"
                )
            column = names.index(target_column)
            if names.count(target_column) > 1:
                twice = [i for i, name in enumerate(names) if name == target_column]
                raise ValueError(
                    f"target column {target_column!r} is named {len(twice)} times in {path} "
                    f"(columns {', '.join(map(str, twice))}, counting from 0): give the index "
                    "of the one to use instead"
                )
        else:
            position = int(target_column)
            if not -width <= position < width:
                raise ValueError(
                    f"target column {position} is not in {path}: it has {width} columns "
                    f"(0 to {width - 1}, or -1 for the last)"
                )
            column = position % width
    feature_columns = [i for i in range(width) if i != column] if features else []
    if table.has_header:
        _check_named(path, names, [*feature_columns, *([] if column is None else [column])])
    return column, feature_columns


def read_dataset(
    features: PathLike,
    targets: PathLike | np.ndarray | None = None,
    target_column: str | int | None = None,
    *,
    header: bool | None = None,
    class_names: Sequence[str] = (),
) -> TableData:
    """A dataset from a CSV file, an NPZ file, or CSV/NPY features plus targets (an NPY or CSV
    file, or an array): given targets, every column of the features file is a feature.
    `header` says whether the first line of each CSV file read names its columns (None: each
    is guessed)."""
    path = Path(features)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npy", ".npz"):
        raise ValueError(
            "features must be a .csv file (targets in a column, or given), an .npz file (arrays "
            f"X and y) or an .npy file (targets given), or an array. Received: {path}"
        )
    targets_csv = isinstance(targets, str | Path) and Path(targets).suffix.lower() == ".csv"
    if target_column is not None and not targets_csv and (suffix != ".csv" or targets is not None):
        given = "targets were given too" if targets is not None else f"{path} is no CSV file"
        raise ValueError(
            f"target_column picks the targets from a CSV file's columns, but {given}: give "
            f"one or the other. Received: target_column={target_column!r}"
        )
    if suffix == ".csv" and targets is None:
        column = -1 if target_column is None else target_column
        table = read_csv(path, column, header=header, class_names=class_names)
        if table.features.shape[1] == 0:
            raise ValueError(
                f"{path} has a single column, so no features beside the targets: CSV files are "
                "comma-separated; is it separated by another character, such as ';'?"
            )
        return table
    if suffix == ".npz":
        if targets is not None:
            raise ValueError(
                f"targets must not be given with {path}: an .npz file holds its own (arrays X "
                "and y); give the features as a .npy or .csv file to use other targets"
            )
        arrays = _read_npz(path)
        if arrays is None:
            raise ValueError(f"{path} must hold arrays X and y (or features and targets)")
        x = _check_features(arrays[0], str(path))
        y, classes = _array_labels(arrays[1], str(path), class_names)
        examples, labelled = x.shape[0] if x.ndim else 0, y.shape[0] if y.ndim else 0
        if examples != labelled:
            raise ValueError(
                f"{path} holds {examples} rows of features (X) but {labelled} targets (y); give "
                "one target per row"
            )
        return TableData(x, y, [], classes)
    inputs = read_inputs(path, header=header)
    if targets is None:
        raise ValueError(f"{path} holds features only; give the targets file too")
    names: list[str] = []
    if isinstance(targets, np.ndarray):
        y, source = targets, "the targets array"
    else:
        y, names = read_targets(targets, target_column, header=header, class_names=class_names)
        source = str(targets)
    rows = y.shape[0] if y.ndim else 0
    if rows != len(inputs.features):
        hint = ""
        if abs(rows - len(inputs.features)) == 1 and isinstance(targets, str | Path):
            hint = (
                "; one apart: is a CSV file's first line a header read as data? Say so with "
                "header=True (--header)"
            )
        raise ValueError(
            f"{path} has {len(inputs.features)} rows of features but {source} has {rows} "
            f"targets; give one target per row{hint}"
        )
    return TableData(inputs.features, y, inputs.feature_names, names)


def read_inputs(path: PathLike, *, header: bool | None = None) -> TableData:
    """Rows of features from a .npy or a numeric .csv file, with the CSV header's column names
    (none for .npy or a CSV without a header); no targets. `header` as for `read_csv`."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".npy":
        return TableData(_check_features(read_npy(file), str(file)), None, [], [])
    if suffix == ".csv":
        return read_csv(file, None, header=header)
    raise ValueError(f"inputs must be a .csv or .npy file. Received: {file}")


def read_model_inputs(
    path: PathLike, model_features: Callable[[], Sequence[str]], *, header: bool | None = None
) -> np.ndarray:
    """Rows of features for a model, from a .npy or .csv file, in the order the model reads them.

    A CSV header's names are matched to `model_features()` (the names of the features of the
    model's training dataset; called only for a file with a header) before any value is read,
    so a column that is not a feature is refused by name whatever it holds: a target column of
    words (`setosa`) left in the file would otherwise be refused as non-numeric, as if it were
    a feature. Without names on either side, columns are taken by position. `header` says
    whether the CSV file's first line names its columns (None: guessed).
    """
    file = Path(path)
    if file.suffix.lower() != ".csv":
        return read_inputs(file).features
    with _csv_rows(file, header) as table:
        columns: Sequence[int] = range(len(table.names))
        if table.has_header:
            _check_named(file, table.names, columns)
            columns = _model_columns(table.names, model_features(), file)
        return _read_columns(file, table, columns, None).values


def _model_columns(names: list[str], model_features: Sequence[str], path: PathLike) -> list[int]:
    """The indexes of the named columns in the order the model reads them (all of them, as they
    are, when the model's features have no names). A column the model lacks or a feature the
    file lacks is an error: matched by position, such a file would predict wrongly without a
    word."""
    if not model_features or names == list(model_features):
        return list(range(len(names)))
    problems = {
        "missing": [name for name in model_features if name not in names],
        "not features of the model": [name for name in names if name not in model_features],
        "named twice": sorted({name for name in names if names.count(name) > 1}),
    }
    if any(problems.values()):
        found = "; ".join(f"{what}: {', '.join(n)}" for what, n in problems.items() if n)
        raise ValueError(
            f"the columns of {path} do not match the model's features "
            f"({', '.join(model_features)}); {found}"
        )
    return [names.index(name) for name in model_features]


def label_names(prediction: Prediction, class_names: Sequence[str]) -> list[str] | None:
    """The class name of each predicted label (the model's `class_names`, which the server
    checks are one per class), or None for a prediction without labels or a model without
    names."""
    if prediction.labels is None or not class_names:
        return None
    return [class_names[int(label)] for label in prediction.labels]


def prediction_to_dict(prediction: Prediction, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON-ready dict of a prediction; given the model's `class_names`, a classifier's labels
    are also named, under "label_names" (None otherwise, and for a regression)."""
    return {
        "checkpoint": prediction.checkpoint,
        "outputs": prediction.outputs.tolist(),
        "probabilities": (
            None if prediction.probabilities is None else prediction.probabilities.tolist()
        ),
        "labels": None if prediction.labels is None else prediction.labels.tolist(),
        "label_names": label_names(prediction, class_names),
    }


def check_prediction_path(path: PathLike) -> None:
    """Refuses a path `write_prediction` cannot write, before any prediction is computed: a kind
    other than .csv, .json or .npy, or a folder that does not exist."""
    file = Path(path)
    if file.suffix.lower() not in (".csv", ".json", ".npy"):
        raise ValueError(f"output must be a .csv, .json or .npy file. Received: {file}")
    if not file.parent.is_dir():
        raise ValueError(
            f"the output's folder {file.parent} does not exist: create it, or write the output "
            f"to an existing folder. Received: {file}"
        )


@contextmanager
def replaced_file(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file to write what goes at `path`: a new file of the same folder, renamed over
    `path` once written (and removed if the writing fails). Writing `path` in place followed a
    symlink there, overwriting whatever it pointed to, and left half a file behind a failure;
    the rename replaces the symlink itself, and readers see the old file or the whole new one.
    The new file has the permissions a new file gets (the umask's), not the old one's."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        # O_EXCL: a name taken, by a symlink too, is refused, never followed.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:  # named by the path asked for, not the temporary one
        raise OSError(error.errno, error.strerror, str(target)) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_prediction(
    path: PathLike, prediction: Prediction, class_names: Sequence[str] = ()
) -> None:
    """Writes predictions: .npy (labels for classifiers, else outputs), .json (as
    `prediction_to_dict`, with `class_names`), or .csv (one row per input: the label and class
    probabilities, or the outputs). The .npy and .csv files hold numbers alone, whatever the
    class names: readers such as `np.loadtxt` take them as numbers."""
    check_prediction_path(path)
    file = Path(path)
    suffix = file.suffix.lower()
    main = prediction.labels if prediction.labels is not None else prediction.outputs
    with replaced_file(file) as binary:
        if suffix == ".npy":
            np.save(binary, main)
        else:
            text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
            if suffix == ".json":
                text.write(json.dumps(prediction_to_dict(prediction, class_names)) + "\n")
            else:
                _write_prediction_csv(text, prediction)
            text.detach()  # flushed into `binary`, which `replaced_file` closes


def _write_prediction_csv(handle: io.TextIOWrapper, prediction: Prediction) -> None:
    """One row per input: the label and class probabilities, or the outputs."""
    writer = csv.writer(handle)
    if prediction.labels is not None and prediction.probabilities is not None:
        classes = prediction.probabilities.shape[1]
        writer.writerow(["label", *(f"p{i}" for i in range(classes))])
        for label, row in zip(prediction.labels, prediction.probabilities, strict=True):
            writer.writerow([int(label), *(f"{p:.6g}" for p in row)])
    else:
        outputs = prediction.outputs.reshape(len(prediction.outputs), -1)
        writer.writerow([f"y{i}" for i in range(outputs.shape[1])])
        for row in outputs:
            writer.writerow([f"{v:.6g}" for v in row])
