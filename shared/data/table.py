"""Reading one CSV or JSONL file into typed columns, with errors that name the file and line.

Conversion is vectorised; only when a column fails to convert is it scanned row by row, to find
the first bad line and say what is wrong with it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np

from fedrec.shared.data.dataset import FloatArray, IntArray
from fedrec.shared.data.errors import DataError

#: Longest text accepted, in characters. Longer input is almost always a mistake (a whole
#: document pasted into a review field, a broken quote in a CSV swallowing the rest of the file).
MAX_TEXT_CHARS = 10_000
#: Timestamps are Unix seconds; past this (year 2100) a value is taken for milliseconds or junk.
MAX_TIMESTAMP = 4_102_444_800

T = TypeVar("T")


@dataclass(frozen=True)
class Table:
    """The columns of one file as strings, and the line on which each row starts."""

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)

    def has(self, column: str) -> bool:
        return column in self.columns

    def error(self, row: int, message: str) -> DataError:
        return DataError(message, self.path, self.lines[row])

    def _convert(
        self, column: str, fast: Callable[[list[str]], T], check: Callable[[int, str], None]
    ) -> T:
        values = self.columns[column]
        try:
            return fast(values)
        except (ValueError, OverflowError):
            for row, value in enumerate(values):
                check(row, value)
            raise

    def ints(self, column: str) -> IntArray:
        """A column of integers."""

        def check(row: int, value: str) -> None:
            try:
                int(value)
            except ValueError:
                raise self.error(row, f"{column} must be an integer, got {value!r}") from None

        return self._convert(column, lambda v: np.array(v, dtype=np.int64), check)

    def floats(self, column: str, *, optional: bool = False) -> FloatArray:
        """A column of finite numbers; empty cells become NaN where ``optional``."""

        def parse(row: int, value: str) -> float:
            if value == "" and optional:
                return math.nan
            try:
                number = float(value)
            except ValueError:
                raise self.error(row, f"{column} must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise self.error(row, f"{column} must be finite, got {value!r}")
            return number

        return np.array(
            [parse(row, value) for row, value in enumerate(self.columns[column])],
            dtype=np.float64,
        )

    def timestamps(self, column: str = "timestamp") -> IntArray:
        """Unix seconds, from integers or ISO 8601 strings (UTC where no zone is given)."""
        values = self.columns[column]
        try:
            out = np.array(values, dtype=np.int64)
        except (ValueError, OverflowError):
            out = np.array(
                [_parse_timestamp(self, row, column, v) for row, v in enumerate(values)],
                dtype=np.int64,
            )
        bad = np.flatnonzero((out < 0) | (out > MAX_TIMESTAMP))
        if len(bad):
            _check_range(self, int(bad[0]), column, int(out[bad[0]]))
        return out

    def texts(self, column: str, *, max_chars: int = MAX_TEXT_CHARS) -> list[str]:
        """A column of non-empty texts of at most ``max_chars`` characters."""
        values = self.columns[column]
        for row, value in enumerate(values):
            if is_blank(value):
                raise self.error(row, f"{column} is empty")
            if len(value) > max_chars:
                raise self.error(
                    row,
                    f"{column} has {len(value):,} characters, more than the {max_chars:,} allowed",
                )
            if "\x00" in value:
                raise self.error(row, f"{column} contains a NUL character")
        return values

    def lookup(self, column: str, index: dict[str, int], what: str) -> IntArray:
        """Positions of the ids in ``column`` within ``index``; an unknown id is an error."""
        out = np.empty(len(self), dtype=np.int64)
        for row, key in enumerate(self.columns[column]):
            position = index.get(key)
            if position is None:
                raise self.error(row, f"unknown {what} {key!r} in column {column}")
            out[row] = position
        return out


def _as_number(value: str) -> int | float | None:
    """``value`` as an int, else as a float, else None."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return None


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only spaces, and format or control characters such as
    zero-width spaces."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc") for ch in text)


def _check_range(table: Table, row: int, column: str, value: int) -> int:
    """``value``, a timestamp that must be within 1970-2100 in Unix seconds."""
    if 0 <= value <= MAX_TIMESTAMP:
        return value
    hint = " (milliseconds? fedrec expects seconds)" if value > MAX_TIMESTAMP else ""
    raise table.error(row, f"{column} {value} is outside 1970-2100 in Unix seconds{hint}")


def _parse_timestamp(table: Table, row: int, column: str, value: str) -> int:
    number = _as_number(value)
    if isinstance(number, float):  # a number written as a float (JSON's 1.7e9)
        if not (math.isfinite(number) and number.is_integer()):
            raise table.error(row, f"{column} {value!r} is not a whole number of Unix seconds")
        number = int(number)
    if number is not None:
        return _check_range(table, row, column, number)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise table.error(
            row, f"{column} {value!r} is neither Unix seconds nor an ISO 8601 date-time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.csv`` or ``folder/stem.jsonl``, whichever exists; None if neither does."""
    found = [folder / f"{stem}{ext}" for ext in (".csv", ".jsonl")]
    found = [path for path in found if path.exists() or path.is_symlink()]
    if len(found) > 1:
        raise DataError(f"both {stem}.csv and {stem}.jsonl exist; keep one", folder)
    return found[0] if found else None


def require_file(folder: Path, stem: str) -> Path:
    """Like ``find_file``, but a missing file is an error."""
    path = find_file(folder, stem)
    if path is None:
        raise DataError(f"missing file: expected {stem}.csv or {stem}.jsonl", folder)
    return path


def read_table(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> Table:
    """Read a CSV (with a header row) or JSONL file; every required column must be present and
    non-empty on every row. Columns beyond ``required`` and ``optional`` are kept as they are."""
    if path.is_dir():
        raise DataError("is a folder, not a file", path)
    if not path.is_file():
        broken = " (a link to nothing)" if path.is_symlink() else ""
        raise DataError(f"file not found{broken}", path)
    text = _decode(path)
    if path.suffix == ".jsonl":
        table = _read_jsonl(path, text)
    elif path.suffix == ".csv":
        table = _read_csv(path, text)
    else:
        raise DataError("unsupported file type: use .csv or .jsonl", path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(table.columns) or 'none'}",
            path,
        )
    for column in required:
        for row, value in enumerate(table.columns[column]):
            if value == "":
                raise table.error(row, f"{column} is missing")
    for column in optional:
        table.columns.setdefault(column, [""] * len(table))
    return table


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "re-save the file as UTF-8",
            path,
            line,
        ) from None
    return text.removeprefix("\ufeff")


def _read_csv(path: Path, text: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("file is empty: expected a header row", path, 1) from None
    except csv.Error as err:
        raise DataError(f"malformed CSV: {err}", path, reader.line_num) from None
    header = [name.strip() for name in header]
    if "" in header:
        raise DataError(f"empty column name in header: {header}", path, 1)
    if len(set(header)) != len(header):
        raise DataError(f"duplicate column names in header: {header}", path, 1)
    columns: list[list[str]] = [[] for _ in header]
    lines: list[int] = []
    start = reader.line_num + 1
    width = len(header)
    try:
        for row in reader:
            if not row:
                start = reader.line_num + 1
                continue
            if len(row) != width:
                raise DataError(
                    f"expected {width} fields ({', '.join(header)}), found {len(row)}",
                    path,
                    start,
                )
            for values, value in zip(columns, row, strict=True):
                values.append(value)
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        unclosed = str(err) == "unexpected end of data"
        hint = " (a quoted field that opens here is never closed)" if unclosed else ""
        raise DataError(f"malformed CSV: {err}{hint}", path, start) from None
    return Table(path, dict(zip(header, columns, strict=True)), lines)


def _read_jsonl(path: Path, text: str) -> Table:
    records: list[dict[str, str]] = []
    lines: list[int] = []
    names: dict[str, None] = {}
    # JSON Lines ends a line at "\n" only: a string may hold U+2028 or U+0085 unescaped,
    # which str.splitlines would break
    for number, raw in enumerate(text.removesuffix("\n").split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg}", path, number) from None
        except (ValueError, RecursionError) as err:  # a number too long, arrays nested too deep
            raise DataError(f"invalid JSON: {err}", path, number) from None
        if not isinstance(record, dict):
            raise DataError("each line must be a JSON object", path, number)
        row: dict[str, str] = {}
        for key, value in record.items():
            if value is None:
                row[key] = ""
            elif isinstance(value, str):
                row[key] = value
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(
                    f"{key} must be a string or a number, got {type(value).__name__}", path, number
                )
            elif isinstance(value, float) and value.is_integer():
                row[key] = str(int(value))  # JSON's 7.0 is the number 7: the id "7"
            else:
                row[key] = repr(value) if isinstance(value, float) else str(value)
            names.setdefault(key)
        records.append(row)
        lines.append(number)
    if not records:
        raise DataError("file is empty: expected one JSON object per line", path, 1)
    columns = {name: [record.get(name, "") for record in records] for name in names}
    return Table(path, columns, lines)
