"""The ML-100K canonical splits (``u1..u5``, ``ua``, ``ub``), regenerated from ``u.data`` as GroupLens made them.

GroupLens' ``mku.sh`` builds them from ``u.data`` in file order:

* ``u{i}.test`` = lines ``(i-1)*20000+1 … i*20000`` of ``u.data``; ``u{i}.base`` = the other 80,000 lines.
* ``ua`` / ``ub`` come from ``allbut.pl ua 1 10 100000 u.data`` and ``allbut.pl ub 11 20 100000 u.data``: the
  script numbers each user's ratings in the order they appear in ``u.data`` and puts ratings number 1–10 (ua) or
  11–20 (ub) in the test file, everything else in the base file. (Checked against the published files: the test
  sets match exactly; every ML-100K user has at least 20 ratings, so each test file holds 10 per user.)

Every file is then sorted with ``sort -t<TAB> -k 1,1n -k 2,2n`` (user id, then item id, numerically). The row
selection lives here as plain masks so that ``lmrec.data.splits`` (the ``Split`` form) and the file writer share it
without importing each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.data.schema import INTERACTION_COLUMNS, DataError

ML100K_SPLIT_NAMES = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
ML100K_N_RATINGS = 100_000
_FOLD_SIZE = 20_000
# allbut.pl arguments from mku.sh: (first, last) 1-based rating number per user that goes to the test file.
_ALLBUT_RANGES = {"ua": (1, 10), "ub": (11, 20)}


def ml100k_test_mask(interactions: pd.DataFrame, name: str) -> np.ndarray:
    """Boolean mask over the rows of ``interactions`` (in ``u.data`` file order) that form ``{name}.test``.

    The frame must be ML-100K's 100,000 ratings in the order of ``u.data`` (``Dataset.build`` keeps file order);
    ``~mask`` is ``{name}.base``. Raises ``ValueError`` for an unknown name and ``DataError`` when the frame cannot be
    ML-100K in file order (wrong row count, missing ``user_id``).
    """
    if name not in ML100K_SPLIT_NAMES:
        raise ValueError(f"unknown ML-100K split {name!r}; expected one of {', '.join(ML100K_SPLIT_NAMES)}")
    if len(interactions) != ML100K_N_RATINGS:
        # The folds are defined by absolute line numbers, so any other frame would give silently wrong splits.
        raise DataError(
            f"ML-100K canonical split {name!r} needs the full u.data ({ML100K_N_RATINGS:,} ratings in file order), "
            f"got {len(interactions):,} rows"
        )
    if "user_id" not in interactions.columns:
        raise DataError("ML-100K canonical splits need the raw 'user_id' column")
    position = np.arange(len(interactions))
    if name in _ALLBUT_RANGES:
        first, last = _ALLBUT_RANGES[name]
        # 1-based number of each rating among its user's ratings, in file order (allbut.pl's %ratingcnt).
        number = interactions.groupby("user_id", sort=False).cumcount().to_numpy() + 1
        return (number >= first) & (number <= last)
    fold = int(name[1:]) - 1
    return (position >= fold * _FOLD_SIZE) & (position < (fold + 1) * _FOLD_SIZE)


def format_ml100k_lines(rows: pd.DataFrame) -> bytes:
    """``rows`` as ``u.data``-format bytes: ``user\\titem\\trating\\ttimestamp\\n``, sorted like ``sort -k1,1n -k2,2n``.

    Ratings must be whole numbers (they are written as integers, as in the original files).
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in rows.columns]
    if missing:
        raise DataError(f"cannot write ML-100K lines: missing column(s) {missing}")
    rating = rows["rating"].to_numpy()
    whole = np.round(rating)
    if len(rating) and not np.array_equal(rating, whole):
        raise DataError("ML-100K split files hold whole-number ratings; found a fractional rating")
    table = pd.DataFrame(
        {
            "user_id": rows["user_id"].to_numpy(dtype=np.int64),
            "item_id": rows["item_id"].to_numpy(dtype=np.int64),
            "rating": whole.astype(np.int64),
            "timestamp": rows["timestamp"].to_numpy(dtype=np.int64),
        }
    )
    # sort's keys are user then item; (user, item) pairs are unique in ML-100K, the rest only fixes any duplicates.
    table = table.sort_values(["user_id", "item_id", "rating", "timestamp"], kind="stable")
    text = table.to_csv(sep="\t", header=False, index=False, lineterminator="\n")
    return text.encode("ascii")


def write_ml100k_splits(interactions: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write ``u1..u5`` and ``ua``/``ub`` ``.base``/``.test`` files into ``out_dir``, byte-identical to GroupLens'.

    ``interactions`` is ML-100K's ``u.data`` in file order (e.g. ``Dataset.interactions``). Returns the 14 paths
    written, in the order ``u1.base, u1.test, …, ub.base, ub.test``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in ML100K_SPLIT_NAMES:
        test = ml100k_test_mask(interactions, name)
        for suffix, mask in (("base", ~test), ("test", test)):
            path = out / f"{name}.{suffix}"
            path.write_bytes(format_ml100k_lines(interactions.loc[mask]))
            written.append(path)
    return written
