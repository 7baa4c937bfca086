"""Your own data: interactions plus optional item and user tables, in CSV, Parquet or JSON Lines.

Interactions need ``user_id`` and ``item_id``; ``rating`` (absent -> 1.0, implicit feedback) and
``timestamp`` (Unix seconds; absent -> 0) are optional, other columns are ignored. Side tables need their id
column (``item_id`` / ``user_id``); their other columns are kept as text fields for the text templates.
In CSV, ``genres`` and ``tags`` columns are '|'-separated lists, as in MovieLens.

Ids are kept as read: integers when every id in every table is a plain integer, strings otherwise (an id such
as "007" keeps its leading zero, so it stays a string).

A file's columns may be named differently (``columns={"interactions": {"item_id": "movie"}}``: the lmrec name,
then the file's), and its format given rather than read from the extension. ``require_item_text`` is the check
a training job wants: every interacted item has a row in the items file, and every row some text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lmrec.data.parsing import (
    Column,
    DropLog,
    ParsedTable,
    _show,
    check_unique,
    locate_value,
    read_delimited,
    read_jsonl,
    read_parquet,
)
from lmrec.data.schema import DataError, Dataset
from lmrec.data.text import format_value

LIST_COLUMNS = ("genres", "tags")
_PLAIN_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")  # at most 18 digits: always fits in int64


_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
FORMATS = ("csv", "tsv", "parquet", "jsonl")


def _format(path: Path, given: str | None = None) -> str:
    """csv / tsv / parquet / jsonl: ``given``, else from the file name (a trailing .gz is allowed for text formats)."""
    if given not in (None, "auto"):
        if given not in FORMATS:
            raise DataError(f"{path}: unknown format {given!r}; use one of {', '.join(FORMATS)} or auto")
        return given
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last not in _FORMATS:
        raise DataError(f"{path}: unknown file type {last or '(none)'!r}; use .csv, .tsv, .parquet or .jsonl")
    return _FORMATS[last]


def _read(path: Path, kind: str, columns: Sequence[Column], lenient: bool, keep_other_columns: bool = False
          ) -> ParsedTable:
    if kind == "parquet":
        return read_parquet(path, columns, lenient=lenient, keep_other_columns=keep_other_columns)
    if kind == "jsonl":
        return read_jsonl(path, columns, lenient=lenient, keep_other_columns=keep_other_columns)
    sep = "\t" if kind == "tsv" else ","
    return read_delimited(
        path, columns, sep=sep, header=True, quoted=True, lenient=lenient, keep_other_columns=keep_other_columns
    )


def _read_side_table(path: Path, kind: str, id_column: str, names: Mapping[str, str], fields: Sequence[str] | None,
                     lenient: bool) -> ParsedTable:
    """An items/users table: the id column plus ``fields`` (None: every other column), as text or lists.

    names: lmrec name -> the file's column name; the other columns keep the file's names.
    """
    id_key = names.get(id_column, id_column)
    table = _read(path, kind, [Column(id_column, source=id_key)], lenient, keep_other_columns=True)
    table.frame = table.frame.rename(columns={file: ours for ours, file in names.items() if ours != id_column})
    available = [c for c in table.frame.columns if c != id_column]
    if fields is not None:
        unknown = [f for f in fields if f not in available]
        if unknown:
            raise DataError(f"{path.name}: no column(s) {unknown}; available: {available}")
        table.frame = table.frame[[id_column, *fields]]
    if kind in ("csv", "tsv"):
        # CSV has no lists: genres and tags are '|'-separated there, as in MovieLens.
        for name in LIST_COLUMNS:
            if name in table.frame:
                table.frame[name] = table.frame[name].map(lambda v: [x.strip() for x in v.split("|") if x.strip()])
    return check_unique(table, id_column, lenient, locate=lambda v, nth: locate_value(path, kind, id_key, v, nth))


def _check_item_text(inter: pd.DataFrame, items: pd.DataFrame, inter_file: tuple, items_file: tuple) -> None:
    """Every interacted item has a row in the items file, and every row has some text; else a located DataError."""
    (inter_path, inter_kind, inter_key), (items_path, items_kind, items_key) = inter_file, items_file
    unknown = ~inter["item_id"].isin(items["item_id"]).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        value = inter["item_id"].iat[row]
        nth = int((inter["item_id"].iloc[: row + 1] == value).sum())
        where = locate_value(inter_path, inter_kind, inter_key, value, nth) or inter_path.name
        n_items = inter.loc[unknown, "item_id"].nunique()
        raise DataError(f"{where}: item {_show(value)} is not in {items_path.name} ({int(unknown.sum())} "
                        f"interaction(s) name {n_items} item(s) it lacks)")
    fields = [c for c in items.columns if c != "item_id"]
    empty = np.array([not any(format_value(items[c].iat[i]) for c in fields) for i in range(len(items))], dtype=bool)
    if empty.any():
        value = items["item_id"].iat[int(np.flatnonzero(empty)[0])]
        where = locate_value(items_path, items_kind, items_key, value) or items_path.name
        raise DataError(f"{where}: item {_show(value)} has no text (its {', '.join(fields) or 'text'} column(s) are "
                        f"empty; {int(empty.sum())} item(s) like this)")


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
    formats: Mapping[str, str] | None = None,
    columns: Mapping[str, Mapping[str, str]] | None = None,
    require_item_text: bool = False,
) -> Dataset:
    """Load your own interactions (and optionally item / user tables) into a ``Dataset``.

    item_text_columns: the item columns to keep as text fields (default: all of them); a name the items
    file lacks is a ``DataError`` listing the available columns.
    formats: per table ("interactions", "items", "users"): csv, tsv, parquet, jsonl or auto (by extension).
    columns: per table, lmrec column name -> the file's column name, for files that name them differently.
    require_item_text: an interacted item missing from the items file, or an item row without text, is a
    ``DataError`` naming the file and line (otherwise such items just get an empty text).
    """
    log = DropLog()
    formats, columns = dict(formats or {}), {k: dict(v) for k, v in (columns or {}).items()}
    interactions_path = Path(interactions_path)
    inter_kind, inter_names = _format(interactions_path, formats.get("interactions")), columns.get("interactions", {})
    interaction_columns = [
        Column("user_id", source=inter_names.get("user_id")),
        Column("item_id", source=inter_names.get("item_id")),
        # optional, unless the caller names the file's column for them
        Column("rating", "float", source=inter_names.get("rating"), may_be_absent="rating" not in inter_names),
        Column("timestamp", "int", source=inter_names.get("timestamp"), may_be_absent="timestamp" not in inter_names),
    ]
    inter = log.add(_read(interactions_path, inter_kind, interaction_columns, lenient))
    meta: dict = {"source": str(interactions_path), "implicit": "rating" not in inter}
    if "rating" not in inter:
        inter["rating"] = 1.0
    if "timestamp" not in inter:
        inter["timestamp"] = 0
    items = users = None
    if items_path is not None:
        items_path = Path(items_path)
        items_kind = _format(items_path, formats.get("items"))
        items = log.add(_read_side_table(items_path, items_kind, "item_id", columns.get("items", {}),
                                         item_text_columns, lenient))
    elif item_text_columns is not None or require_item_text:
        raise DataError("item_text_columns and require_item_text need an items file (items_path)")
    if users_path is not None:
        users_path = Path(users_path)
        users = log.add(_read_side_table(users_path, _format(users_path, formats.get("users")), "user_id",
                                         columns.get("users", {}), None, lenient))

    item_ids = _ids_as_read(inter["item_id"], *([items["item_id"]] if items is not None else []))
    user_ids = _ids_as_read(inter["user_id"], *([users["user_id"]] if users is not None else []))
    inter["item_id"], inter["user_id"] = item_ids[0], user_ids[0]
    if items is not None:
        items["item_id"] = item_ids[1]
    if users is not None:
        users["user_id"] = user_ids[1]
    if require_item_text:
        _check_item_text(inter, items, (interactions_path, inter_kind, inter_names.get("item_id", "item_id")),
                         (items_path, items_kind, columns.get("items", {}).get("item_id", "item_id")))
    meta = log.finish(name, meta)
    return Dataset.build(name, inter, items, users, meta=meta)
