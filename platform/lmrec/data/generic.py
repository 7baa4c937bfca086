"""Your own data: interactions plus optional item and user tables, in CSV, Parquet or JSON Lines.

Interactions need ``user_id`` and ``item_id``; ``rating`` (absent -> 1.0, implicit feedback) and
``timestamp`` (Unix seconds; absent -> 0) are optional, other columns are ignored. Side tables need their id
column (``item_id`` / ``user_id``); their other columns are kept as text fields for the text templates.
In CSV, ``genres`` and ``tags`` columns are '|'-separated lists, as in MovieLens.

Ids are kept as read: integers when every id in every table is a plain integer, strings otherwise (an id such
as "007" keeps its leading zero, so it stays a string).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lmrec.data.parsing import Column, DropLog, ParsedTable, check_unique, read_delimited, read_jsonl, read_parquet
from lmrec.data.schema import DataError, Dataset

LIST_COLUMNS = ("genres", "tags")
_PLAIN_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")  # at most 18 digits: always fits in int64


_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}


def _format(path: Path) -> str:
    """csv / tsv / parquet / jsonl from the file name (a trailing .gz is allowed for the text formats)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last not in _FORMATS:
        raise DataError(f"{path}: unknown file type {last or '(none)'!r}; use .csv, .tsv, .parquet or .jsonl")
    return _FORMATS[last]


def _read(path: Path, columns: Sequence[Column], lenient: bool, keep_other_columns: bool = False) -> ParsedTable:
    kind = _format(path)
    if kind == "parquet":
        return read_parquet(path, columns, lenient=lenient, keep_other_columns=keep_other_columns)
    if kind == "jsonl":
        return read_jsonl(path, columns, lenient=lenient, keep_other_columns=keep_other_columns)
    sep = "\t" if kind == "tsv" else ","
    return read_delimited(
        path, columns, sep=sep, header=True, quoted=True, lenient=lenient, keep_other_columns=keep_other_columns
    )


def _read_side_table(path: Path, id_column: str, fields: Sequence[str] | None, lenient: bool) -> ParsedTable:
    """An items/users table: the id column plus ``fields`` (None: every other column), as text or lists."""
    table = _read(path, [Column(id_column)], lenient, keep_other_columns=True)
    available = [c for c in table.frame.columns if c != id_column]
    if fields is not None:
        unknown = [f for f in fields if f not in available]
        if unknown:
            raise DataError(f"{path.name}: no column(s) {unknown}; available: {available}")
        table.frame = table.frame[[id_column, *fields]]
    if _format(path) in ("csv", "tsv"):
        # CSV has no lists: genres and tags are '|'-separated there, as in MovieLens.
        for name in LIST_COLUMNS:
            if name in table.frame:
                table.frame[name] = table.frame[name].map(lambda v: [x.strip() for x in v.split("|") if x.strip()])
    return check_unique(table, id_column, lenient)


def _ids_as_read(*columns: pd.Series) -> list[pd.Series]:
    """Integers when every id (across all tables) is a plain integer, else the strings as read."""
    if all(len(c) == 0 or c.astype(str).str.fullmatch(_PLAIN_INT).all() for c in columns):
        return [c.astype(np.int64) for c in columns]
    return [c.astype(str).astype(object) for c in columns]


def load_custom(
    interactions_path: str | Path,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    *,
    name: str = "custom",
    item_text_columns: Sequence[str] | None = None,
    lenient: bool = False,
) -> Dataset:
    """Load your own interactions (and optionally item / user tables) into a ``Dataset``.

    item_text_columns: the item columns to keep as text fields (default: all of them); a name the items
    file lacks is a ``DataError`` listing the available columns.
    """
    log = DropLog()
    interactions_path = Path(interactions_path)
    interaction_columns = [
        Column("user_id"),
        Column("item_id"),
        Column("rating", "float", may_be_absent=True),
        Column("timestamp", "int", may_be_absent=True),
    ]
    inter = log.add(_read(interactions_path, interaction_columns, lenient))
    meta: dict = {"source": str(interactions_path), "implicit": "rating" not in inter}
    if "rating" not in inter:
        inter["rating"] = 1.0
    if "timestamp" not in inter:
        inter["timestamp"] = 0
    items = users = None
    if items_path is not None:
        items = log.add(_read_side_table(Path(items_path), "item_id", item_text_columns, lenient))
    elif item_text_columns is not None:
        raise DataError("item_text_columns needs an items file (items_path)")
    if users_path is not None:
        users = log.add(_read_side_table(Path(users_path), "user_id", None, lenient))

    item_ids = _ids_as_read(inter["item_id"], *([items["item_id"]] if items is not None else []))
    user_ids = _ids_as_read(inter["user_id"], *([users["user_id"]] if users is not None else []))
    inter["item_id"], inter["user_id"] = item_ids[0], user_ids[0]
    if items is not None:
        items["item_id"] = item_ids[1]
    if users is not None:
        users["user_id"] = user_ids[1]
    meta = log.finish(name, meta)
    return Dataset.build(name, inter, items, users, meta=meta)
