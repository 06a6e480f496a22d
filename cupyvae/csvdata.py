"""CSV files of numeric features as datasets: `load_dataset("table.csv")`, or with a label
column named after '#': `load_dataset("table.csv#label=species")`.

The reference stays one string, so a run's config.json records it as given (`--data
table.csv#label=species` on the command line).  The file:

- is comma-separated, UTF-8 (a byte-order mark is allowed), with optional double quotes;
- has a header row when its first row holds any cell that is not a number (the header
  names the columns); otherwise every row is data and the columns are named by their
  1-based position ("1", "2", ...), so `#label=1` picks the first column;
- has one example per row: every column but the label column is a feature, and every
  feature cell must be a finite number (an empty, non-numeric, NaN or infinite cell is a
  DatasetError naming its line, its column and the cell);
- labels are integers, or any text: text classes become 0, 1, ... in sorted order, and
  the dataset's `label_names` keeps the text (legends and `cupyvae encode` show it).

Features are float32 as written (no scaling: a model with the Bernoulli or Gaussian
likelihood then needs them in [0, 1]).  As for .npy files, the last 10% of the rows
(cupyvae.datasets.NPY_TEST_FRACTION) are the test split.
"""
from __future__ import annotations

import csv
import math
import os
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np

from .datasets import Dataset, DatasetError, _split_off_test
from .registry import did_you_mean

SUFFIX = ".csv"
OPTIONS = ("label",)


@dataclass(frozen=True, eq=False)
class LabelledDataset(Dataset):
    """A Dataset whose integer labels stand for text classes: label k is label_names[k]."""
    label_names: tuple[str, ...] | None = None


def is_csv_reference(reference: str) -> bool:
    """True for 'file.csv' and 'file.csv#label=NAME' (any case of the suffix)."""
    return _split_reference(reference)[0].lower().endswith(SUFFIX)


def parse_csv_reference(reference: str) -> tuple[pathlib.Path, dict[str, str]]:
    """('path', {'label': NAME}) of a CSV reference; DatasetError for unknown options."""
    path_text, fragment = _split_reference(reference)
    options: dict[str, str] = {}
    for item in filter(None, fragment.split("&")):
        name, equals, value = item.partition("=")
        if name not in OPTIONS or not equals or not value:
            raise DatasetError(f"{reference}: cannot read the option {item!r} after '#'; the only "
                               "option is label=COLUMN (the label column's name)")
        options[name] = value
    return pathlib.Path(path_text).expanduser(), options


def csv_reference(path: str | os.PathLike, options: dict[str, str]) -> str:
    """The reference string for `path` with `options` (the inverse of parse_csv_reference)."""
    fragment = "&".join(f"{name}={value}" for name, value in options.items())
    return os.fspath(path) + (f"#{fragment}" if fragment else "")


def load_csv(reference: str) -> Dataset:
    """The dataset of a CSV reference (see the module docstring)."""
    path, options = parse_csv_reference(reference)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    header = _read_header(path)
    names = header if header is not None else [str(k + 1) for k in range(_first_row_width(path))]
    label = _label_column(path, names, options.get("label"), header is not None)
    features = [k for k in range(len(names)) if k != label]
    if not features:
        raise DatasetError(f"{path}: no feature columns (only the label column {names[label]!r})")
    x = _read_features(path, features, names, header is not None)
    y, label_names = (None, None) if label is None else _read_labels(path, label, names[label],
                                                                         header is not None)
    split = _split_off_test(path, x, y)
    if label_names is None:
        return split
    return LabelledDataset(split.name, split.x_train, split.y_train, split.x_test, split.y_test,
                           label_names=label_names)


# ---------------------------------------------------------------------- reading
def _split_reference(reference: str) -> tuple[str, str]:
    """(path, options) of 'path' or 'path#options'.  The options start after the last
    '.csv#', so a '#' inside a file or folder name ('run#3/data.csv', 'we#ird.csv') stays in
    the path; an existing file is all path."""
    text = os.fspath(reference)
    if text.lower().endswith(SUFFIX) or os.path.isfile(os.path.expanduser(text)):
        return text, ""
    cut = text.lower().rfind(SUFFIX + "#")
    if cut < 0:
        path_text, _, fragment = text.partition("#")
        return path_text, fragment
    return text[:cut + len(SUFFIX)], text[cut + len(SUFFIX) + 1:]


def _open(path: pathlib.Path):
    return open(path, newline="", encoding="utf-8-sig")


def _rows(path: pathlib.Path):
    """(line number, cells) of every non-blank row."""
    try:
        with _open(path) as f:
            reader = csv.reader(f)
            for cells in reader:
                if cells and any(cell.strip() for cell in cells):
                    yield reader.line_num, [cell.strip() for cell in cells]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: not a readable UTF-8 CSV file ({error})") from None


def _first_row(path: pathlib.Path) -> list[str]:
    return _first_row_and_line(path)[1]


def _first_row_and_line(path: pathlib.Path) -> tuple[int, list[str]]:
    """(the physical line the first non-blank row ends on, its cells)."""
    for line, cells in _rows(path):
        return line, cells
    raise DatasetError(f"{path}: the file is empty")


def _first_row_width(path: pathlib.Path) -> int:
    return len(_first_row(path))


def _read_header(path: pathlib.Path) -> list[str] | None:
    """The first row when any of its cells is not a number, else None (no header)."""
    cells = _first_row(path)
    if all(_is_number(cell) for cell in cells):
        return None
    duplicated = sorted({name for name in cells if cells.count(name) > 1})
    if duplicated:
        raise DatasetError(f"{path}: the header names the columns {duplicated} more than once")
    return cells


def _label_column(path: pathlib.Path, names: list[str], label: str | None,
                  has_header: bool) -> int | None:
    if label is None:
        return None
    if label in names:
        return names.index(label)
    known = f"the header's columns are {', '.join(names)}" if has_header else (
        f"the file has no header row, so columns are named 1 to {len(names)}")
    raise DatasetError(f"{path}: no column {label!r} for the labels{did_you_mean(label, names)}; "
                       f"{known}")


def _read_features(path: pathlib.Path, columns: list[int], names: list[str],
                   has_header: bool) -> np.ndarray:
    """float32 (rows, features), read by NumPy's C parser; on any problem the rows are
    scanned again by Python to name the first bad cell exactly."""
    try:
        x = _loadtxt(path, has_header, columns, np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError):
        x = None
    if x is None or not np.isfinite(x).all() or x.shape[0] == 0:
        _raise_first_bad_cell(path, columns, names, has_header)
    return x.astype(np.float32)


def _loadtxt(path: pathlib.Path, has_header: bool, columns: list[int], dtype, ndmin: int):
    """NumPy's C parser with our CSV dialect; its notes about blank lines and empty files
    are not for our users (the Python scan reports real problems)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # skiprows counts physical lines: the header's own, and the blank ones above it
        skip = _first_row_and_line(path)[0] if has_header else 0
        return np.loadtxt(path, delimiter=",", skiprows=skip, usecols=columns,
                          dtype=dtype, ndmin=ndmin, comments=None, quotechar='"',
                          encoding="utf-8-sig")


def _raise_first_bad_cell(path: pathlib.Path, columns: list[int], names: list[str],
                          has_header: bool) -> None:
    rows = _rows(path)
    if has_header:
        next(rows)
    count = 0
    for line, cells in rows:
        count += 1
        if len(cells) != len(names):
            raise DatasetError(f"{path}: line {line} has {len(cells)} cells, but "
                               f"{'the header has' if has_header else 'the first row has'} {len(names)}")
        for k in columns:
            problem = _cell_problem(cells[k])
            if problem:
                raise DatasetError(f"{path}: line {line}, column {names[k]!r} "
                                   f"(column {k + 1}): {problem}"
                                   f"{_label_hint(path, k, names[k], has_header)}")
    if count == 0:
        raise DatasetError(f"{path}: no data rows{' below the header' if has_header else ''}")
    raise DatasetError(f"{path}: NumPy could not parse the file, but every cell is a number; "
                       "is it comma-separated?")


def _label_hint(path: pathlib.Path, column: int, name: str, has_header: bool) -> str:
    """'; ... name it: table.csv#label=species' when every cell of the column is text (a
    label column that was not declared), else ''."""
    rows = _rows(path)
    if has_header:
        next(rows)
    if any(column >= len(cells) or _is_number(cells[column]) or not cells[column]
           for _line, cells in rows):
        return ""
    return (f"; every cell of column {name!r} is text: if it holds the labels, name it "
            f"with {csv_reference(path.name, {'label': name})}")


def _cell_problem(cell: str) -> str | None:
    if cell == "":
        return "the cell is empty"
    try:
        value = float(cell)
    except ValueError:
        return f"{cell!r} is not a number"
    return None if math.isfinite(value) else f"{cell!r} is not a finite number"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_labels(path: pathlib.Path, column: int, name: str, has_header: bool
                 ) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """int64 labels; text classes numbered in sorted order, with their names."""
    cells = np.char.strip(_loadtxt(path, has_header, [column], str, ndmin=1))
    if (cells == "").any():
        _raise_empty_label(path, column, name, has_header)
    try:
        return np.array([int(cell) for cell in cells], dtype=np.int64), None
    except ValueError:
        pass
    except OverflowError:     # integer labels beyond int64 would wrap or crash downstream
        big = next(cell for cell in cells if not -2 ** 63 <= int(cell) < 2 ** 63)
        raise DatasetError(f"{path}: label column {name!r}: {str(big)!r} does not fit a 64-bit "
                           "integer label") from None
    names, labels = np.unique(cells, return_inverse=True)
    return labels.astype(np.int64), tuple(str(name) for name in names)


def _raise_empty_label(path: pathlib.Path, column: int, name: str, has_header: bool) -> None:
    rows = _rows(path)
    if has_header:
        next(rows)
    for line, cells in rows:
        if cells[column] == "":
            raise DatasetError(f"{path}: line {line}, label column {name!r}: the cell is empty")
