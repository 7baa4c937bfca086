"""The one in-memory form every dataset is loaded into.

Interactions keep the publisher's raw ids (``user_id``, ``item_id``) and get contiguous indices
(``user_idx``, ``item_idx``) that models use as embedding rows. Splits, models and metrics only ever
see the index columns, so a model never special-cases a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class DataError(ValueError):
    """A data file or table is missing, truncated or malformed. The message names file, line and column."""


@dataclass
class Dataset:
    """Interactions + item table + user table, with contiguous indices assigned.

    interactions: user_id, item_id, rating (float32), timestamp (int64, Unix seconds; 0 when unknown),
        user_idx, item_idx (int64). Row order is the order of the source file.
    items: item_idx, item_id, then text fields (title, year, genres: list[str], tags: list[str], ...).
        One row per item index, sorted by item_idx; every interacted item has a row.
    users: user_idx, user_id, then demographics where the dataset has them. Sorted by user_idx.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def user_ids(self) -> np.ndarray:
        return self.users["user_id"].to_numpy()

    @property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy()

    @classmethod
    def build(
        cls,
        name: str,
        interactions: pd.DataFrame,
        items: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
        meta: dict | None = None,
    ) -> "Dataset":
        """Assign contiguous indices (sorted raw ids) and align the three tables.

        Items and users are the union of the side table and the interactions; an interacted item
        missing from the item table gets a row with empty text fields (``meta['items_without_text']``
        counts them).
        """
        missing = [c for c in INTERACTION_COLUMNS if c not in interactions.columns]
        if missing:
            raise DataError(f"{name}: interactions lack column(s) {missing}")
        inter = interactions.loc[:, list(INTERACTION_COLUMNS)].reset_index(drop=True).copy()
        inter["rating"] = inter["rating"].astype(np.float32)
        inter["timestamp"] = inter["timestamp"].astype(np.int64)
        items = pd.DataFrame({"item_id": pd.Series([], dtype=inter["item_id"].dtype)}) if items is None else items
        users = pd.DataFrame({"user_id": pd.Series([], dtype=inter["user_id"].dtype)}) if users is None else users
        meta = dict(meta or {})

        item_ids = np.unique(np.concatenate([items["item_id"].to_numpy(), inter["item_id"].to_numpy()]))
        user_ids = np.unique(np.concatenate([users["user_id"].to_numpy(), inter["user_id"].to_numpy()]))
        meta["items_without_text"] = int(len(item_ids) - items["item_id"].nunique())

        item_table = pd.DataFrame({"item_idx": np.arange(len(item_ids), dtype=np.int64), "item_id": item_ids})
        item_table = item_table.merge(items.drop_duplicates("item_id"), on="item_id", how="left")
        user_table = pd.DataFrame({"user_idx": np.arange(len(user_ids), dtype=np.int64), "user_id": user_ids})
        user_table = user_table.merge(users.drop_duplicates("user_id"), on="user_id", how="left")
        for col in ("genres", "tags"):
            if col in item_table:
                item_table[col] = item_table[col].apply(lambda v: list(v) if isinstance(v, (list, np.ndarray)) else [])

        inter["user_idx"] = np.searchsorted(user_ids, inter["user_id"].to_numpy()).astype(np.int64)
        inter["item_idx"] = np.searchsorted(item_ids, inter["item_id"].to_numpy()).astype(np.int64)
        return cls(name=name, interactions=inter, items=item_table, users=user_table, meta=meta)

    def stats(self) -> dict:
        """Users, items, ratings, density and the rating histogram."""
        r = self.interactions["rating"]
        hist = r.value_counts().sort_index()
        n_u, n_i, n = self.n_users, self.n_items, len(self.interactions)
        return {
            "dataset": self.name,
            "users": n_u,
            "items": n_i,
            "interactions": n,
            "density": n / (n_u * n_i) if n_u and n_i else 0.0,
            "rating_histogram": {float(k): int(v) for k, v in hist.items()},
        }
