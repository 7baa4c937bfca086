"""Strict readers for delimited text, JSON Lines and Parquet tables, shared by every dataset loader.

Each reader has a fast path (pyarrow) and a slow path (line by line). The fast path parses and validates
the whole file at C speed; only when it fails, or a validation finds a bad value, does the slow path run to
find *where*: it names the file, line and column of the first problem in one ``DataError`` line, e.g.
``u.data line 17, column 3 (rating): 'abc' is not a number``. Both paths validate with the same
``convert_column`` so they can never disagree on what is valid.

``lenient=True`` drops the bad rows instead and returns them as ``Problem``s; ``DropLog`` turns those into
a warning and ``dataset.meta["dropped_rows"]``, so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lmrec.data.schema import DataError

Kind = Literal["int", "float", "str", "date", "list"]

# A byte that never occurs in the text files we read: multi-character separators ("::") are replaced by it
# so pyarrow, which only splits on one character, can take the fast path.
_UNIT_SEPARATOR = "\x1f"
_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "'|'", "::": "'::'"}
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "date": pa.string()}


class DataWarning(UserWarning):
    """Bad rows were dropped because the loader ran with ``lenient=True``."""


@dataclass(frozen=True)
class Column:
    """One expected column: how to convert it and which values are valid.

    name: the column's name in the returned frame. source: its name in the file's header or JSON object
    (defaults to ``name``). required: an empty or missing value is an error (otherwise it becomes NA / "").
    lo, hi: inclusive numeric range. choices: the allowed values. date_format: strptime format for "date".
    may_be_absent: a file with a header (or Parquet) may lack this column altogether.
    """

    name: str
    kind: Kind = "str"
    source: str | None = None
    required: bool = True
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    date_format: str | None = None
    may_be_absent: bool = False

    @property
    def key(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class Problem:
    """One bad row: ``where`` locates it ("u.data line 17, column 3 (rating)"), ``message`` says what is wrong."""

    where: str
    message: str
    line: int

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ParsedTable:
    """A validated table and the rows that were dropped from it (only ever non-empty with lenient=True)."""

    source: str
    frame: pd.DataFrame
    dropped: list[Problem] = field(default_factory=list)


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or its gzip twin (``name.gz`` / ``name`` without ``.gz``) when only that exists."""
    twin = name[:-3] if name.endswith(".gz") else name + ".gz"
    for candidate in (folder / name, folder / twin):
        if candidate.is_file():
            return candidate
    return None


def require_file(folder: Path, name: str, dataset: str) -> Path:
    """Like ``find_file`` but a missing file is a ``DataError`` that names the folder and the dataset."""
    path = find_file(Path(folder), name)
    if path is None:
        raise DataError(f"{Path(folder) / name}: file not found (part of the {dataset} dataset)")
    return path


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in ``.gz``; a missing or truncated file is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path.name}: compressed stream is truncated or corrupt ({err})") from None


def _decode(raw: bytes, encoding: str, source: str, lenient: bool, locate) -> tuple[str, list[Problem]]:
    """Decode strictly; an undecodable byte is reported at its line (and column, via ``locate``)."""
    try:
        return raw.decode(encoding), []
    except UnicodeDecodeError as err:
        if not lenient:
            line = raw.count(b"\n", 0, err.start) + 1
            start = raw.rfind(b"\n", 0, err.start) + 1
            where = locate(line, raw[start : err.start])
            raise DataError(f"{where}: byte(s) {raw[err.start:err.end]!r} are not valid {encoding}") from None
    # Lenient: blank out the undecodable lines (keeping line numbers) and report each of them.
    lines, problems = [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode(encoding))
        except UnicodeDecodeError:
            lines.append("")
            problems.append(Problem(f"{source} line {number}", f"bytes are not valid {encoding}", number))
    return "\n".join(lines), problems


def convert_column(raw: pd.Series, col: Column) -> tuple[pd.Series, pd.Series]:
    """Convert ``raw`` (strings, JSON values or already typed values) to ``col.kind`` and validate it.

    Returns (values, messages): values are converted but not yet cast to the final dtype (bad rows hold NA);
    messages holds one message per bad row (indexed by row position) and is empty when all values are valid.
    Masks are numpy arrays: this runs on every column of every file, so pandas' per-call overhead adds up.
    """
    raw = raw.reset_index(drop=True)
    n = len(raw)
    if raw.dtype == object:
        stripped = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
        empty = stripped.map(lambda v: isinstance(v, (str, list)) and len(v) == 0)
        missing = (stripped.isna() | empty).to_numpy()
    elif pd.api.types.is_string_dtype(raw.dtype):
        stripped = raw.str.strip()
        missing = (stripped.isna() | (stripped == "")).to_numpy(dtype=bool, na_value=True)
    else:
        stripped, missing = raw, raw.isna().to_numpy()
    bad = np.full(n, None, dtype=object)
    is_bad = np.zeros(n, dtype=bool)

    def flag(mask: np.ndarray, make) -> None:
        rows = np.flatnonzero(mask & ~is_bad)
        for row in rows:
            bad[row] = make(raw.iat[row])
        is_bad[rows] = True

    if col.required and missing.any():
        flag(missing, lambda v: "missing value")
    if col.kind in ("int", "float"):
        if pd.api.types.is_numeric_dtype(stripped.dtype) and not pd.api.types.is_bool_dtype(stripped.dtype):
            numbers = stripped.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            numbers = pd.to_numeric(stripped.where(~missing), errors="coerce")
            numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        present = ~np.isnan(numbers)
        flag(~present & ~missing, lambda v: f"{_show(v)} is not a number")
        finite = np.isfinite(numbers)
        flag(present & ~finite, lambda v: f"{_show(v)} is not a finite number")
        if col.kind == "int":
            fraction = np.mod(numbers, 1, where=finite, out=np.zeros(n))
            flag(finite & (fraction != 0), lambda v: f"{_show(v)} is not an integer")
        with np.errstate(invalid="ignore"):
            outside = np.zeros(n, dtype=bool)
            if col.lo is not None:
                outside |= numbers < col.lo
            if col.hi is not None:
                outside |= numbers > col.hi
        span = f"{_num(col.lo) if col.lo is not None else ''}..{_num(col.hi) if col.hi is not None else ''}"
        flag(outside, lambda v: f"{_show(v)} is outside the range {span}")
        if col.choices is not None:
            flag(present & ~np.isin(numbers, col.choices), lambda v: f"{_show(v)} is not one of {_choices(col)}")
        values = pd.Series(np.where(is_bad, np.nan, numbers))
    elif col.kind == "date":
        values = pd.to_datetime(stripped.where(~missing), format=col.date_format, errors="coerce")
        flag(values.isna().to_numpy() & ~missing, lambda v: f"{_show(v)} is not a date like {col.date_format}")
    elif col.kind == "list":
        values = raw.map(_as_list)
        flag(values.isna().to_numpy() & ~missing, lambda v: f"{_show(v)} is not a list or a text")
    else:
        if raw.dtype == object:
            values = raw.map(lambda v: "" if _is_missing(v) else v if isinstance(v, str) else str(v))
        elif pd.api.types.is_string_dtype(raw.dtype):
            values = raw.fillna("").astype(object)
        else:
            values = raw.map(lambda v: "" if _is_missing(v) else str(v)).astype(object)
        if col.choices is not None:
            unknown = ~values.isin(col.choices).to_numpy() & ~missing
            flag(unknown, lambda v: f"{_show(v)} is not one of {_choices(col)}")
    rows = np.flatnonzero(is_bad)
    return values, pd.Series(bad[rows], index=rows, dtype=object)


def _show(value) -> str:
    """A value as the user wrote it: 'abc' quoted, numbers plain (not np.float64(6.0))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _final_dtype(values: pd.Series, col: Column) -> pd.Series:
    if col.kind == "int":
        # Required ints are plain int64 (bad rows are gone by now); optional ones are pandas' nullable Int64.
        ints = values.astype("Int64")
        return ints.astype(np.int64) if col.required else ints
    if col.kind == "float":
        return values.astype(np.float64)
    if col.kind == "list":
        return values.map(lambda v: v if isinstance(v, list) else [])
    return values


def _as_list(value):
    if _is_missing(value):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value if not _is_missing(v) and str(v).strip()]
    return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _choices(col: Column) -> str:
    return ", ".join(_num(c) if isinstance(c, (int, float)) else repr(c) for c in col.choices)


def validate_frame(frame: pd.DataFrame, columns: Sequence[Column], where) -> tuple[pd.DataFrame, list[Problem]]:
    """Convert every column of ``frame`` (keyed by ``Column.key``); ``where(row, column_index)`` -> (text, line).

    Returns the good rows, converted to their final dtypes, and one ``Problem`` per bad row, in row order.
    """
    converted, first_bad = [], {}
    for index, col in enumerate(columns):
        values, messages = convert_column(frame[col.key], col)
        converted.append((col, values))
        for row, message in messages.items():
            first_bad.setdefault(row, (index, message))
    problems = []
    for row in sorted(first_bad):
        index, message = first_bad[row]
        text, line = where(row, index)
        problems.append(Problem(text, message, line))
    keep = ~np.isin(np.arange(len(frame)), list(first_bad))
    out = {col.name: _final_dtype(values[keep].reset_index(drop=True), col) for col, values in converted}
    return pd.DataFrame(out, index=pd.RangeIndex(int(keep.sum()))), problems


def _finish(source: str, frame: pd.DataFrame, problems: list[Problem], lenient: bool) -> ParsedTable:
    """Raise on the first problem, or (lenient) keep the problems of the dropped rows for the report."""
    if problems and not lenient:
        first = min(problems, key=lambda p: p.line)
        more = f" ({len(problems) - 1} more bad row(s); lenient=True drops them)" if len(problems) > 1 else ""
        raise DataError(f"{first}{more}")
    if frame.empty:
        raise DataError(f"{source}: no {'valid ' if problems else ''}data rows")
    return ParsedTable(source, frame, sorted(problems, key=lambda p: p.line))


def read_delimited(
    path: Path,
    columns: Sequence[Column],
    *,
    sep: str,
    encoding: str = "utf-8",
    header: bool = False,
    quoted: bool = False,
    lenient: bool = False,
    keep_other_columns: bool = False,
) -> ParsedTable:
    """Read a delimited text file into ``columns`` (all of them, in order, when there is no header).

    With ``header=True`` the first line names the columns; ``Column.source`` picks them by name, optional
    ones may be absent, and unlisted ones are ignored (or kept as optional text with ``keep_other_columns``).
    ``quoted`` allows "..." fields (CSV); otherwise quotes are ordinary characters (MovieLens .dat/u.item
    titles contain them).
    """
    path = Path(path)
    source = path.name
    raw = read_bytes(path)
    # Column names for locating an undecodable byte: the header's (read leniently), else the spec's.
    file_names = _split_header(raw.split(b"\n", 1)[0].decode("latin-1"), sep, quoted) if header else None
    names = file_names or [c.key for c in columns]

    def locate(line: int, before: bytes) -> str:
        position = before.count(sep.encode()) + 1
        name = f" ({names[position - 1]})" if position <= len(names) else ""
        return f"{source} line {line}, column {position}{name}"

    text, decode_problems = _decode(raw, encoding, source, lenient, locate)
    text = text.lstrip("\ufeff")
    if header and not text.strip():  # else the message would be a header '' that lacks every column
        raise DataError(f"{source} line 1: the file is empty (expected a header and data rows)")
    header_names = None
    if header:
        first_line = text.split("\n", 1)[0].rstrip("\r")
        header_names = _split_header(first_line, sep, quoted)
        absent = [c.key for c in columns if c.key not in header_names and not c.may_be_absent]
        if absent:
            hint = " (wrong separator?)" if len(header_names) == 1 else ""
            raise DataError(f"{source} line 1: header {first_line!r} lacks column(s) {absent}{hint}")
        columns = [c for c in columns if c.key in header_names]
        if keep_other_columns:
            known = {c.key for c in columns}
            columns += [Column(h, required=False) for h in header_names if h not in known]
    if not decode_problems:
        table = _fast_delimited(text, columns, sep, header, quoted)
        if table is not None:
            frame, problems = validate_frame(table, columns, lambda row, i: ("", 0))
            if not problems:
                if frame.empty:
                    raise DataError(f"{source}: no data rows")
                return ParsedTable(source, frame)
    return _slow_delimited(source, text, columns, sep, header_names, quoted, lenient, decode_problems)


def _split_header(line: str, sep: str, quoted: bool) -> list[str]:
    fields = next(csv.reader([line.rstrip("\r")], delimiter=sep)) if quoted else line.rstrip("\r").split(sep)
    return [f.strip().lstrip("\ufeff") for f in fields]


def _fast_delimited(text: str, columns, sep: str, header: bool, quoted: bool) -> pd.DataFrame | None:
    """pyarrow's parser: None when the file does not parse cleanly (the slow path then says why)."""
    if len(sep) > 1:
        if _UNIT_SEPARATOR in text:
            return None
        text, sep = text.replace(sep, _UNIT_SEPARATOR), _UNIT_SEPARATOR
    keys = [c.key for c in columns]
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(text.encode("utf-8")),
            read_options=pa_csv.ReadOptions(column_names=None if header else keys),
            parse_options=pa_csv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False),
            convert_options=pa_csv.ConvertOptions(
                column_types={c.key: _ARROW_TYPES.get(c.kind, pa.string()) for c in columns},
                include_columns=keys,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError):
        return None
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _slow_delimited(source, text, columns, sep, header_names, quoted, lenient, problems) -> ParsedTable:
    """Split line by line, so every problem can be named by line and column."""
    keys = [c.key for c in columns]
    width = len(header_names) if header_names is not None else len(columns)
    positions = [header_names.index(k) for k in keys] if header_names is not None else list(range(len(keys)))
    sep_name = _SEPARATOR_NAMES.get(sep, repr(sep))
    if quoted:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        numbered = ((reader.line_num, fields) for fields in reader)
    else:
        numbered = ((n, line.rstrip("\r").split(sep)) for n, line in enumerate(text.split("\n"), start=1))
    rows, lines = [], []
    last_line = text.rstrip("\r\n").count("\n") + 1
    for number, fields in numbered:
        if (header_names is not None and number == 1) or not fields or fields == [""] or not "".join(fields).strip():
            continue
        if len(fields) != width:
            hint = " (wrong separator?)" if len(fields) == 1 else " (truncated file?)" if number == last_line else ""
            message = f"expected {width} {sep_name}-separated fields, line {number} has {len(fields)}{hint}"
            problems.append(Problem(source, message, number))
            continue
        rows.append([fields[p] for p in positions])
        lines.append(number)
    # A string dtype (not object) keeps convert_column on its vectorised path.
    frame = pd.DataFrame(rows or None, columns=keys, dtype="str")

    def where(row: int, index: int) -> tuple[str, int]:
        name = header_names[positions[index]] if header_names is not None else keys[index]
        return f"{source} line {lines[row]}, column {positions[index] + 1} ({name})", lines[row]

    frame, value_problems = validate_frame(frame, columns, where)
    return _finish(source, frame, problems + value_problems, lenient)


def read_jsonl(
    path: Path, columns: Sequence[Column], *, lenient: bool = False, keep_other_columns: bool = False
) -> ParsedTable:
    """Read JSON Lines (optionally gzipped): one object per line, fields picked by ``Column.source``.

    ``keep_other_columns`` keeps every other field too: lists as list[str], anything else as text.
    """
    path = Path(path)
    source = path.name
    raw = read_bytes(path)
    text, problems = _decode(raw, "utf-8", source, lenient, lambda line, before: f"{source} line {line}")
    keys = [c.key for c in columns]
    records, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            message = f"not valid JSON ({err.msg} at character {err.pos + 1})"
            problems.append(Problem(f"{source} line {number}", message, number))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(f"{source} line {number}", "not a JSON object", number))
            continue
        records.append(record if keep_other_columns else {k: record[k] for k in keys if k in record})
        lines.append(number)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    # a column the file may lack and no record has is left out, as a CSV header without it would be
    columns = [c for c in columns if c.key in frame or not c.may_be_absent]
    columns += _other_columns(frame, keys) if keep_other_columns else []
    for col in columns:
        if col.key not in frame:
            frame[col.key] = pd.Series([None] * len(frame), dtype=object)
    frame, value_problems = validate_frame(
        frame, columns, lambda row, i: (f"{source} line {lines[row]}, field '{columns[i].key}'", lines[row])
    )
    return _finish(source, frame, problems + value_problems, lenient)


def _other_columns(frame: pd.DataFrame, known: Sequence[str]) -> list[Column]:
    """Optional columns for every field not in ``known``: list-valued ones as lists, the rest as text."""
    return [
        Column(str(name), "list" if _is_list_column(frame[name]) else "str", required=False)
        for name in frame.columns
        if name not in known
    ]


def _is_list_column(values: pd.Series) -> bool:
    present = values.dropna()
    return len(present) > 0 and present.map(lambda v: isinstance(v, (list, np.ndarray))).all()


def read_parquet(
    path: Path, columns: Sequence[Column], *, lenient: bool = False, keep_other_columns: bool = False
) -> ParsedTable:
    """Read a Parquet file: columns picked by ``Column.source``, problems located by 1-based row number."""
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{source}: not a readable Parquet file ({err})") from None
    absent = [c.key for c in columns if c.key not in frame.columns and not c.may_be_absent]
    if absent:
        raise DataError(f"{source}: lacks column(s) {absent} (has {list(frame.columns)})")
    keys = [c.key for c in columns]
    columns = [c for c in columns if c.key in frame.columns]
    columns += _other_columns(frame, keys) if keep_other_columns else []
    frame, problems = validate_frame(
        frame, columns, lambda row, i: (f"{source} row {row + 1}, column '{columns[i].key}'", row + 1)
    )
    return _finish(source, frame, problems, lenient)


def check_unique(table: ParsedTable, column: str, lenient: bool, locate=None) -> ParsedTable:
    """Ids in a side table (items, users) must be unique; lenient keeps the first row of each id.

    locate(value, nth): where the nth row holding ``value`` is ("items.csv line 9, column 1 (id)"), for the error.
    """
    duplicated = table.frame[column].duplicated()
    if not duplicated.any():
        return table
    first = table.frame.loc[duplicated, column].iloc[0]
    count = int((table.frame[column] == first).sum())
    if not lenient:
        extra = int(duplicated.sum())
        where = (locate(first, 2) if locate else None) or table.source
        raise DataError(f"{where}: {column} {_show(first)} appears {count} times ({extra} duplicate row(s))")
    dropped = [
        Problem(table.source, f"duplicate {column} {_show(v)} (first row kept)", 0)
        for v in table.frame.loc[duplicated, column]
    ]
    return ParsedTable(table.source, table.frame.loc[~duplicated].reset_index(drop=True), table.dropped + dropped)


def locate_value(path: Path, kind: str, key: str, value, nth: int = 1) -> str | None:
    """Where the ``nth`` row whose field ``key`` holds ``value`` is, as the readers name places; None if nowhere.

    The readers' fast paths keep no line numbers: a check on the parsed frame (an unknown id, a duplicate) comes
    back here to name the line a user would open. kind: "csv", "tsv", "jsonl" or "parquet".
    """
    path, wanted, seen = Path(path), str(value), 0
    if kind == "parquet":
        for row, v in enumerate(pq.read_table(path, columns=[key]).column(0).to_pylist(), start=1):
            seen += str(v).strip() == wanted
            if seen == nth:
                return f"{path.name} row {row}, column '{key}'"
        return None
    text = read_bytes(path).decode("utf-8", errors="replace").lstrip("\ufeff")
    if kind == "jsonl":
        for number, line in enumerate(text.split("\n"), start=1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and key in record and str(record[key]).strip() == wanted:
                seen += 1
                if seen == nth:
                    return f"{path.name} line {number}, field '{key}'"
        return None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    header = [h.strip() for h in next(reader, [])]
    if key not in header:
        return None
    position = header.index(key)
    for fields in reader:
        if len(fields) > position and fields[position].strip() == wanted:
            seen += 1
            if seen == nth:
                return f"{path.name} line {reader.line_num}, column {position + 1} ({key})"
    return None


class DropLog:
    """Collects the rows each file lost to ``lenient=True`` and reports them once per dataset."""

    def __init__(self) -> None:
        self.by_file: dict[str, int] = {}
        self.examples: list[str] = []

    def add(self, table: ParsedTable) -> pd.DataFrame:
        """Record ``table``'s dropped rows; returns its frame for convenient chaining."""
        if table.dropped:
            self.by_file[table.source] = self.by_file.get(table.source, 0) + len(table.dropped)
            self.examples.extend(str(p) for p in table.dropped[:3])
        return table.frame

    def finish(self, dataset: str, meta: dict) -> dict:
        """Write ``dropped_rows`` (total) and ``dropped_by_file`` into ``meta``; warn when anything was dropped."""
        total = sum(self.by_file.values())
        meta["dropped_rows"] = total
        meta["dropped_by_file"] = dict(self.by_file)
        if total:
            files = ", ".join(f"{name}: {n}" for name, n in self.by_file.items())
            warnings.warn(
                f"{dataset}: dropped {total} bad row(s) ({files}); first: {self.examples[0]}", DataWarning, stacklevel=3
            )
        return meta
