"""The closed set of named datasets and ``load_dataset``, the one call that finds and loads any of them.

Your own files go through ``lmrec.data.generic.load_custom`` instead; names are not an open registry, so a
typo is an error that lists the valid names rather than a new dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmrec.data.amazon import load_amazon_magazine
from lmrec.data.fetch import resolve_dataset_dir
from lmrec.data.movielens import load_ml1m, load_ml100k, load_ml_latest_small
from lmrec.data.schema import DataError, Dataset

LOADERS: dict[str, Callable[..., Dataset]] = {
    "ml-100k": load_ml100k,
    "ml-1m": load_ml1m,
    "ml-latest-small": load_ml_latest_small,
    "amazon-magazine": load_amazon_magazine,
}
DATASET_NAMES: tuple[str, ...] = tuple(LOADERS)


def load_dataset(name: str, *, data_dir: str | Path | None = None, lenient: bool = False) -> Dataset:
    """Load a named dataset ("ml-100k", "ml-1m", "ml-latest-small", "amazon-magazine").

    data_dir: a folder holding ``<name>/`` (or the dataset folder itself); without it the dataset is found
    in ``$LMREC_DATA_DIR``, the cache, or downloaded (see ``lmrec.data.fetch``). lenient: drop bad rows
    (counted in ``meta["dropped_rows"]`` and warned about) instead of raising ``DataError``.
    """
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    folder = resolve_dataset_dir(name, data_dir=data_dir)
    return LOADERS[name](folder, lenient=lenient)
