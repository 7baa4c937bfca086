"""Item and user texts for the language encoder, rendered from templates that are configuration, not code.

Template syntax (checked when the template is parsed, before any row is rendered):
- ``{field}`` inserts a field; lists are joined with ", ", missing values (None/NaN/NA) render as "".
- ``[ ... ]`` is an optional segment: dropped whole when any field inside it is empty, so an item without
  tags renders no "Tags: ." and one without a year no "()". Segments do not nest and need a field.
- ``{{ }} [[ ]]`` are literal braces and brackets.

Example (the MovieLens default): ``"{title}[ ({year})].[ Genres: {genres}.][ Tags: {tags}.]"`` gives
"Toy Story (1995). Genres: Animation, Children's, Comedy."

User templates see the user table's columns (age, gender, occupation, ...) plus the user's most recent items
in a history table passed in explicitly (the *training* split, so no test interaction leaks into the text):
``{recent_titles}`` and, for any item column, ``{recent_<column>}`` (e.g. ``{recent_genres}``), most
recent first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmrec.data.schema import Dataset

MOVIELENS_ITEM_TEMPLATE = "{title}[ ({year})].[ Genres: {genres}.][ Tags: {tags}.]"
AMAZON_ITEM_TEMPLATE = "[{title}. ]{description}[ Categories: {categories}.][ Publisher: {brand}.]"
MOVIELENS_USER_TEMPLATE = (
    "User aged {age}, gender {gender}, occupation {occupation}.[ Recently rated: {recent_titles}.]"
)
MOVIELENS_HISTORY_USER_TEMPLATE = "A moviegoer.[ Recently rated: {recent_titles}.]"
AMAZON_USER_TEMPLATE = "A magazine reader.[ Recently reviewed: {recent_titles}.][ Interests: {recent_categories}.]"

_ITEM_TEMPLATES = {
    "ml-100k": MOVIELENS_ITEM_TEMPLATE,
    "ml-1m": MOVIELENS_ITEM_TEMPLATE,
    "ml-latest-small": MOVIELENS_ITEM_TEMPLATE,
    "amazon-magazine": AMAZON_ITEM_TEMPLATE,
}
_USER_TEMPLATES = {
    "ml-100k": MOVIELENS_USER_TEMPLATE,
    "ml-1m": MOVIELENS_USER_TEMPLATE,
    "ml-latest-small": MOVIELENS_HISTORY_USER_TEMPLATE,  # latest-small has no demographics
    "amazon-magazine": AMAZON_USER_TEMPLATE,
}
RECENT_PREFIX = "recent_"
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACES = re.compile(r"[ \t]{2,}")
# A template's "." right after a value that already ends a sentence: "Inc..", "Really?.", "Wait....".
_DOUBLE_STOP = re.compile(r"(\.\.\.|[!?]|(?<!\.)\.)\.(?=\s|$)")


class TemplateError(ValueError):
    """A text template is malformed or names a field the table does not have."""


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Optional:
    parts: tuple  # of str and _Field


def parse_template(template: str) -> tuple:
    """Parse ``template`` into parts (str literals, fields, optional segments); raises ``TemplateError``."""
    parts: list = []
    segment: list | None = None  # the open optional segment, if any
    literal: list[str] = []
    i = 0

    def flush() -> None:
        if literal:
            (segment if segment is not None else parts).append("".join(literal))
            literal.clear()

    while i < len(template):
        ch, pair = template[i], template[i : i + 2]
        if pair in ("{{", "}}", "[[", "]]"):
            literal.append(ch)
            i += 2
        elif ch == "{":
            end = template.find("}", i)
            name = template[i + 1 : end] if end != -1 else None
            if name is None or not _FIELD_NAME.fullmatch(name):
                shown = template[i : end + 1] if end != -1 else template[i:]
                raise TemplateError(f"bad field {shown!r} at position {i} in {template!r} (expected {{name}})")
            flush()
            (segment if segment is not None else parts).append(_Field(name))
            i = end + 1
        elif ch == "}":
            raise TemplateError(f"unmatched '}}' at position {i} in {template!r} (write '}}}}' for a literal one)")
        elif ch == "[":
            if segment is not None:
                raise TemplateError(f"nested '[' at position {i} in {template!r}: optional segments do not nest")
            flush()
            segment, start = [], i
            i += 1
        elif ch == "]":
            if segment is None:
                raise TemplateError(f"unmatched ']' at position {i} in {template!r} (write ']]' for a literal one)")
            flush()
            if not any(isinstance(p, _Field) for p in segment):
                raise TemplateError(f"optional segment at position {start} in {template!r} has no field")
            parts.append(_Optional(tuple(segment)))
            segment = None
            i += 1
        else:
            literal.append(ch)
            i += 1
    if segment is not None:
        raise TemplateError(f"unclosed '[' at position {start} in {template!r}")
    flush()
    return tuple(parts)


def template_fields(template: str) -> tuple[str, ...]:
    """The field names ``template`` uses, in order of first use."""
    names: dict[str, None] = {}
    for part in parse_template(template):
        for sub in part.parts if isinstance(part, _Optional) else (part,):
            if isinstance(sub, _Field):
                names[sub.name] = None
    return tuple(names)


def check_fields(template: str, available: Iterable[str]) -> None:
    """Raise ``TemplateError`` naming the unknown fields and listing the available ones."""
    available = list(available)
    unknown = [f for f in template_fields(template) if f not in available]
    if unknown:
        raise TemplateError(f"unknown field(s) {unknown} in template {template!r}; available: {', '.join(available)}")


def format_value(value) -> str:
    """One field value as text: lists joined with ", ", missing values as "", 1995.0 as "1995", dates as ISO."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(t for t in (format_value(v) for v in value) if t)
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else str(int(value)) if float(value).is_integer() else f"{value:g}"
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    return str(value).strip()


def _render(parts: tuple, columns: dict[str, list[str]], n: int) -> list[str]:
    """Render ``n`` rows; ``columns`` maps each field to its already formatted values."""
    texts = []
    for row in range(n):
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, _Field):
                out.append(columns[part.name][row])
            else:
                values = [p if isinstance(p, str) else columns[p.name][row] for p in part.parts]
                fields = [columns[p.name][row] for p in part.parts if isinstance(p, _Field)]
                if all(fields):
                    out.extend(values)
        texts.append(_tidy("".join(out)))
    return texts


def _tidy(text: str) -> str:
    """Collapse the doubled spaces and stops that empty fields or values ending in "." leave ("Inc.." -> "Inc.")."""
    text = _DOUBLE_STOP.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()


class ItemTextTemplate(BaseModel):
    """An item text template, checked for syntax when constructed (field names are checked on render)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    template: str = Field(description="Item text template, e.g. '{title}[ ({year})].[ Genres: {genres}.]'")

    @field_validator("template")
    @classmethod
    def _parses(cls, template: str) -> str:
        parse_template(template)
        return template

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template)


class UserTextTemplate(BaseModel):
    """A user text template (user-table fields plus ``recent_*`` history fields) and its history length."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    template: str = Field(description="User text template, e.g. 'Age {age}.[ Recently rated: {recent_titles}.]'")
    n_recent: int = Field(5, ge=0, description="How many of the user's most recent items the recent_* fields list")

    @field_validator("template")
    @classmethod
    def _parses(cls, template: str) -> str:
        parse_template(template)
        return template

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template)


def default_item_template(name: str) -> str:
    """The default item template for a named dataset."""
    if name not in _ITEM_TEMPLATES:
        raise TemplateError(f"no default item template for {name!r} (known: {', '.join(_ITEM_TEMPLATES)}); give one")
    return _ITEM_TEMPLATES[name]


def default_user_template(name: str) -> str:
    """The default user template for a named dataset."""
    if name not in _USER_TEMPLATES:
        raise TemplateError(f"no default user template for {name!r} (known: {', '.join(_USER_TEMPLATES)}); give one")
    return _USER_TEMPLATES[name]


def _template_text(template: str | ItemTextTemplate | UserTextTemplate) -> str:
    return template.template if isinstance(template, (ItemTextTemplate, UserTextTemplate)) else template


def render_item_texts(items: pd.DataFrame, template: str | ItemTextTemplate) -> list[str]:
    """One text per item, aligned with ``item_idx`` (row i is item_idx i) when the table has that column."""
    text = _template_text(template)
    parts = parse_template(text)
    check_fields(text, [c for c in items.columns if c != "item_idx"])
    if "item_idx" in items:
        items = items.sort_values("item_idx")
        if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
            raise TemplateError("items.item_idx is not 0..n-1: texts could not be aligned with item indices")
    columns = {name: [format_value(v) for v in items[name]] for name in template_fields(text)}
    return _render(parts, columns, len(items))


def _recent_field_names(items: pd.DataFrame) -> dict[str, str]:
    """recent_* field -> item column: recent_titles -> title, recent_<column> -> column."""
    names = {f"{RECENT_PREFIX}{c}": c for c in items.columns if c != "item_idx"}
    if "title" in items:
        names[f"{RECENT_PREFIX}titles"] = "title"
    return names


def render_user_texts(
    dataset: Dataset,
    history: pd.DataFrame,
    template: str | UserTextTemplate,
    *,
    n_recent: int | None = None,
) -> list[str]:
    """One text per user, aligned with ``user_idx``.

    history: the interactions the texts may reveal (user_idx, item_idx, timestamp): pass the training split,
    never the full data. n_recent: items per ``recent_*`` field, most recent first (ties: later rows first);
    default the template's ``n_recent`` (5 for a plain string).
    """
    text = _template_text(template)
    parts = parse_template(text)
    n_recent = n_recent if n_recent is not None else getattr(template, "n_recent", 5)
    users, items = dataset.users, dataset.items
    recent_fields = _recent_field_names(items)
    check_fields(text, [c for c in users.columns if c != "user_idx"] + list(recent_fields))
    if not np.array_equal(users["user_idx"].to_numpy(), np.arange(len(users))):
        raise TemplateError("users.user_idx is not 0..n-1: texts could not be aligned with user indices")
    lacking = [c for c in ("user_idx", "item_idx", "timestamp") if c not in history]
    if lacking:
        raise TemplateError(f"history lacks column(s) {lacking}")
    if len(history) and (history["item_idx"].max() >= len(items) or history["user_idx"].max() >= len(users)):
        raise TemplateError("history has user_idx/item_idx outside the dataset: is it from another dataset?")

    used = template_fields(text)
    columns = {name: [format_value(v) for v in users[name]] for name in used if name not in recent_fields}
    wanted = {name: recent_fields[name] for name in used if name in recent_fields and name not in users}
    if wanted:
        recent = _recent_items(history, n_recent, len(users))
        for name, column in wanted.items():
            values = items.sort_values("item_idx")[column].to_numpy()
            columns[name] = [_join_recent(values[idx]) for idx in recent]
    return _render(parts, columns, len(users))


def _recent_items(history: pd.DataFrame, n_recent: int, n_users: int) -> list[np.ndarray]:
    """Per user_idx, the item_idx of their ``n_recent`` latest interactions, most recent first."""
    user = history["user_idx"].to_numpy()
    item = history["item_idx"].to_numpy()
    # Sort by user, then time, then row order (a stable tie-break: a later row counts as more recent).
    order = np.lexsort((np.arange(len(history)), history["timestamp"].to_numpy(), user))
    user, item = user[order], item[order]
    ends = np.searchsorted(user, np.arange(n_users), side="right")
    starts = np.maximum(ends - n_recent, np.searchsorted(user, np.arange(n_users), side="left"))
    return [item[s:e][::-1] for s, e in zip(starts, ends)]


def _join_recent(values: np.ndarray) -> str:
    """The recent items' values as one text: lists flattened, empties and repeats dropped, order kept."""
    seen: dict[str, None] = {}
    for value in values:
        for piece in value if isinstance(value, (list, tuple, np.ndarray)) else [value]:
            text = format_value(piece)
            if text:
                seen.setdefault(text, None)
    return ", ".join(seen)
