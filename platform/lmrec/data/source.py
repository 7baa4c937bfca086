"""``data.source`` of a job spec: your own interactions and items files, typed, then loaded by ``load_custom``.

The spec only names files; it validates without them (``lmrec validate``), and ``lmrec data validate`` or the
job reads them. Relative paths are looked up from the directory lmrec runs in, like every path in a spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lmrec.data.generic import load_custom
from lmrec.data.schema import Dataset

Format = Literal["auto", "csv", "tsv", "parquet", "jsonl"]
InteractionField = Literal["user_id", "item_id", "rating", "timestamp"]


class _TableSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The file (relative paths: from the directory lmrec runs in).")
    format: Format = Field("auto", description="csv, tsv, parquet or jsonl; auto = by extension (.csv, .parquet, "
                           ".jsonl, optionally .gz for the text formats).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="lmrec column name -> the file's column name, where they differ.")


class InteractionsSource(_TableSource):
    columns: dict[InteractionField, str] = Field(
        default_factory=dict, description="Where user_id, item_id, rating (optional: absent = implicit 1.0) and "
        "timestamp (optional, Unix seconds) are in the file, e.g. {item_id: movie, rating: stars}.")


class ItemsSource(_TableSource):
    text_columns: list[str] = Field(
        min_length=1, description="Item columns that make the item text, in order (the default item_template "
        "joins them as sentences). genres/tags in CSV are '|'-separated lists.")


class UsersSource(_TableSource):
    pass


class DataSource(BaseModel):
    """Your own files: interactions (user_id, item_id[, rating][, timestamp]), items with text, optional users."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("custom", description="Dataset name in logs, artifacts and fingerprints.")
    interactions: InteractionsSource = Field(description="One row per interaction.")
    items: ItemsSource = Field(description="One row per item: its id and the columns its text is made of.")
    users: UsersSource | None = Field(None, description="One row per user (optional): user_id and text fields.")

    def tables(self) -> dict[str, _TableSource]:
        """The tables the spec names, by name: interactions, items, and users when given."""
        tables = {"interactions": self.interactions, "items": self.items, "users": self.users}
        return {name: t for name, t in tables.items() if t is not None}

    def default_item_template(self) -> str:
        """The item text template when the spec gives none: each text column as a sentence, empty ones left out."""
        return " ".join(f"[{{{c}}}.]" for c in self.items.text_columns)


def load_source(source: DataSource) -> Dataset:
    """Read ``source``'s files strictly: the first bad value is a ``DataError`` naming file, line and column."""
    tables = source.tables()
    paths = {name: Path(t.path) for name, t in tables.items()}
    return load_custom(
        paths["interactions"], paths["items"], paths.get("users"),
        name=source.name,
        item_text_columns=source.items.text_columns,
        formats={name: t.format for name, t in tables.items()},
        columns={name: t.columns for name, t in tables.items()},
        require_item_text=True,
    )
