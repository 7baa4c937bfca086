"""Evaluate any ``Recommender`` (``lmrec.models.base``) on interaction frames: rating error and full ranking.

Only the contract's ``predict`` and ``score_items`` are called, so every model, from popularity to the encoder
two-tower, is measured the same way. Frames need the columns ``user_idx``, ``item_idx`` and ``rating``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike

from lmrec.evaluation.metrics import RankingAccumulator, mae, rmse
from lmrec.models.base import Recommender


def evaluate_ratings(model: Recommender, test_df: pd.DataFrame) -> dict[str, float | int]:
    """RMSE and MAE of ``model.predict`` on every test row; ``n`` is the number of rows."""
    users = test_df["user_idx"].to_numpy(dtype=np.int64)
    items = test_df["item_idx"].to_numpy(dtype=np.int64)
    pred = np.asarray(model.predict(users, items), dtype=np.float64).ravel()
    if pred.shape != users.shape:
        raise ValueError(f"{_name(model)}.predict returned {pred.size} values for {users.size} pairs")
    truth = test_df["rating"].to_numpy(dtype=np.float64)
    return {"rmse": rmse(truth, pred), "mae": mae(truth, pred), "n": int(users.size)}


def _interaction_matrix(df: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """Users × items boolean CSR of the rows in ``df`` (duplicates collapse)."""
    users = df["user_idx"].to_numpy(dtype=np.int64)
    items = df["item_idx"].to_numpy(dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item_idx outside [0, {n_items}) in the interactions")
    if users.size and users.min() < 0:
        raise ValueError("negative user_idx in the interactions")
    m = sp.csr_matrix((np.ones(users.size, dtype=bool), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def evaluate_ranking(
    model: Recommender,
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    n_items: int,
    ks: Sequence[int] = (10,),
    candidates: ArrayLike | None = None,
    relevance_threshold: float | None = None,
    batch_size: int = 512,
    exclude_df: pd.DataFrame | None = None,
) -> dict[str, float | int]:
    """Full-ranking metrics of ``model.score_items`` over all items (or ``candidates``).

    A user's relevant items are their test rows (only those with rating ≥ ``relevance_threshold`` when
    given); their excluded items are their ``train_df`` rows, plus any ``exclude_df`` rows (e.g. validation
    interactions when scoring the test part). Only users with at least one relevant, non-excluded candidate
    item are evaluated; ``users`` in the result counts them. Returns ``ndcg@K``, ``recall@K``, ``hr@K``,
    ``precision@K``, ``mrr@K``, ``coverage@K`` for each K, and ``users``. Tie rule and metric definitions:
    ``lmrec.evaluation.metrics``.
    """
    test = test_df if relevance_threshold is None else test_df[test_df["rating"] >= relevance_threshold]
    known = [train_df, test] + ([] if exclude_df is None else [exclude_df])
    n_users = 1 + max((int(df["user_idx"].max()) for df in known if len(df)), default=-1)
    relevant = _interaction_matrix(test, n_users, n_items)
    excluded = _interaction_matrix(train_df, n_users, n_items)
    if exclude_df is not None:
        excluded = excluded + _interaction_matrix(exclude_df, n_users, n_items)
    acc = RankingAccumulator(n_items, ks, candidates)
    users = np.unique(test["user_idx"].to_numpy(dtype=np.int64))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for lo in range(0, len(users), batch_size):
        batch = users[lo : lo + batch_size]
        scores = np.asarray(model.score_items(batch))
        if scores.shape != (len(batch), n_items):
            raise ValueError(
                f"{_name(model)}.score_items returned shape {scores.shape}, expected {(len(batch), n_items)}"
            )
        acc.add(scores, relevant[batch].toarray(), excluded[batch].toarray())
    return acc.result()


def validation_metrics(
    model: Recommender,
    known_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    n_items: int,
    *,
    k: int = 10,
    ratings: bool = False,
    candidates: ArrayLike | None = None,
) -> dict[str, float]:
    """What training validates on (early stopping, Tune, incremental promotion): ``evaluate_ranking`` of the
    ``valid_df`` rows with the ``known_df`` items excluded (only ``candidates`` ranked when given: items held out
    for validation), plus ``evaluate_ratings`` when ``ratings``; every key prefixed ``val_``. One implementation of
    every metric, so ``val_recall@10`` is the ``recall@10`` the benchmarks report."""
    out: dict[str, float] = {}
    if ratings:
        got = evaluate_ratings(model, valid_df)
        out.update(val_rmse=float(got["rmse"]), val_mae=float(got["mae"]))
    got = evaluate_ranking(model, known_df, valid_df, n_items, (k,), candidates=candidates)
    if got.get("users", 0):
        out.update({f"val_{m}@{k}": float(got[f"{m}@{k}"]) for m in ("ndcg", "recall")})
    return out


def test_metrics(
    model: Recommender,
    known_df: pd.DataFrame,
    valid_df: pd.DataFrame | None,
    test_df: pd.DataFrame,
    n_items: int,
    *,
    ks: Sequence[int] = (10,),
    ratings: bool = False,
    cold_items: ArrayLike | None = None,
) -> dict[str, float]:
    """What a training run reports once, at its end, on the model validation selected: ``evaluate_model`` of the
    ``test_df`` rows (``known_df`` and ``valid_df`` items excluded; only the ``cold_items`` of the test part ranked
    on a cold-start split), every key prefixed ``test_``. Test numbers are never used to select anything."""
    split = SimpleNamespace(train=known_df, valid=valid_df, test=test_df, cold_items=cold_items)
    got = evaluate_model(model, split, n_items, ks, rating_metrics=ratings, part="test")
    return {f"test_{k}": float(v) for k, v in got.items()}


test_metrics.__test__ = False  # a test module that imports it must not have pytest collect it as a test


def evaluate_model(
    model: Recommender,
    split: Any,
    n_items: int,
    ks: Sequence[int] = (10,),
    *,
    rating_metrics: bool = True,
    part: str = "test",
    candidates: ArrayLike | None = None,
    rank_cold_items_only: bool = True,
    relevance_threshold: float | None = None,
    batch_size: int = 512,
) -> dict[str, float | int]:
    """Rating and ranking metrics of ``model`` on one part of a split, in one flat dict.

    ``split`` is a ``lmrec.data.splits.Split`` or anything with ``train``, ``test`` and optional ``valid``,
    ``support`` and ``cold_items`` attributes. ``part`` is "test" or "valid". Excluded items are the user's
    train rows; when scoring "test", the valid and support rows are excluded too (they are known
    interactions, so ranking them as misses would punish a correct model; ``Split.support`` rows already sit
    in train, excluding them again changes nothing). Set ``rating_metrics=False`` for models whose
    ``predict`` is not a rating (implicit-feedback models). On a cold-start-item split (``cold_items`` set)
    only the held-out items that occur in ``part`` are ranked, unless ``candidates`` is given or
    ``rank_cold_items_only`` is False.
    """
    if part not in ("test", "valid"):
        raise ValueError(f"part must be 'test' or 'valid', got {part!r}")
    target = getattr(split, part, None)
    if target is None or len(target) == 0:
        raise ValueError(f"the split has no {part} rows to evaluate")
    cold_items = getattr(split, "cold_items", None)
    if candidates is None and rank_cold_items_only and cold_items is not None:
        # Same as Split.cold_items_in(part): held-out items of the *other* part are not candidates here.
        candidates = np.intersect1d(np.asarray(cold_items), target["item_idx"].to_numpy())
    extra = [getattr(split, "support", None)]
    if part == "test":
        extra.append(getattr(split, "valid", None))
    extra = [df for df in extra if df is not None and len(df)]
    out: dict[str, float | int] = {}
    if rating_metrics:
        out.update(evaluate_ratings(model, target))
    out.update(
        evaluate_ranking(
            model,
            split.train,
            target,
            n_items,
            ks=ks,
            candidates=candidates,
            relevance_threshold=relevance_threshold,
            batch_size=batch_size,
            exclude_df=pd.concat(extra, ignore_index=True) if extra else None,
        )
    )
    return out


def format_metrics_table(rows: list[dict[str, Any]], digits: int = 4) -> str:
    """An aligned plain-text table: a ``model`` column (when rows have one), then every metric column.

    Columns appear in first-seen order across rows; floats get ``digits`` decimals, missing cells show "-".
    """
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    if "model" in columns:
        columns.remove("model")
        columns.insert(0, "model")

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{digits}f}"
        return str(v)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    # Text columns read left-aligned; numbers right-aligned so decimal points line up.
    numeric = [all(_is_number(row.get(c)) for row in rows if c in row) for c in columns]

    def line(cells: list[str]) -> str:
        parts = [x.rjust(w) if num else x.ljust(w) for x, w, num in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule] + [line(r) for r in body])


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))


def _name(model: Any) -> str:
    return str(getattr(model, "name", type(model).__name__))
