"""Curriculum learning: order training interactions easy -> hard and grow the pool the sampler draws from.

Difficulty (one score per training row, higher = harder), chosen by name:
- ``baseline_loss``: squared error of a cheap biased-mean baseline (rows a simple model already explains are easy);
- ``rating_deviation``: |rating - the user's mean rating| (surprising ratings are hard);
- ``item_popularity``: -log(item count) (rare items have little signal, popular ones are easy);
- ``text_length``: token count of the item text (long texts are costlier and noisier to read).

Pacing (competence, Platanios et al. 2019): the fraction ``c(t)`` of the easiest rows in the pool at epoch ``t``,
from ``start`` to 1 at ``full_at``; ``linear``, ``root`` (sqrt: grows fast early) or ``step`` (quartiles).

Distributed: every rank builds the same pool and the same permutation (seeded by epoch), then takes every
``world_size``-th row from its rank: shards are disjoint and cover the pool every epoch. Each shard is cut to the
same length so every rank runs the same number of steps (collectives must line up).
"""

from __future__ import annotations

import math
from typing import Iterator, Literal

import numpy as np
import pandas as pd

Difficulty = Literal["baseline_loss", "rating_deviation", "item_popularity", "text_length"]
Pacing = Literal["linear", "root", "step"]
COLUMNS = ("user_idx", "item_idx", "rating")


def difficulty_scores(train: pd.DataFrame, kind: Difficulty, n_users: int, n_items: int,
                      item_lengths: np.ndarray | None = None) -> np.ndarray:
    """One difficulty per row of ``train`` (float64, higher = harder)."""
    users = train["user_idx"].to_numpy()
    items = train["item_idx"].to_numpy()
    ratings = train["rating"].to_numpy(dtype=np.float64)
    if kind == "baseline_loss":
        from lmrec.models.baselines.means import BiasedMean

        baseline = BiasedMean().fit(train, n_users, n_items)
        return (baseline.predict(users, items).astype(np.float64) - ratings) ** 2
    if kind == "rating_deviation":
        sums = np.bincount(users, ratings, minlength=n_users)
        counts = np.bincount(users, minlength=n_users)
        return np.abs(ratings - sums[users] / np.maximum(counts[users], 1))
    if kind == "item_popularity":
        return -np.log(np.bincount(items, minlength=n_items)[items].astype(np.float64))
    if kind == "text_length":
        if item_lengths is None:
            raise ValueError("difficulty 'text_length' needs item_lengths (token counts per item)")
        return np.asarray(item_lengths, dtype=np.float64)[items]
    raise ValueError(f"unknown difficulty {kind!r}; expected baseline_loss, rating_deviation, item_popularity, "
                     f"text_length")


def competence(epoch: int, pacing: Pacing, start: float, full_at: int) -> float:
    """Fraction of the easiest rows in the pool at ``epoch`` (0-based): ``start`` at 0, 1 from ``full_at`` on."""
    if not 0 < start <= 1 or full_at < 0:
        raise ValueError(f"need 0 < start <= 1 and full_at >= 0, got start={start}, full_at={full_at}")
    if full_at == 0 or epoch >= full_at:
        return 1.0
    progress = max(epoch, 0) / full_at
    if pacing == "linear":
        return start + (1 - start) * progress
    if pacing == "root":
        return math.sqrt(start**2 + (1 - start**2) * progress)
    if pacing == "step":
        return start + (1 - start) * math.floor(progress * 4) / 4
    raise ValueError(f"unknown pacing {pacing!r}; expected linear, root, step")


class CurriculumSampler:
    """Batches drawn from the easiest ``competence(epoch)`` share of ``train``; same interface as
    ``PreparedData.iter_train_batches`` (dicts of numpy arrays user_idx, item_idx, rating).

    Ties in difficulty are broken by a seeded random key, so equal-difficulty rows (all ratings of one item under
    ``item_popularity``) do not enter the pool in file order.
    """

    def __init__(self, train: pd.DataFrame, difficulty: np.ndarray, pacing: Pacing = "root", start: float = 0.3,
                 full_at: int = 3, seed: int = 0) -> None:
        if len(difficulty) != len(train):
            raise ValueError(f"{len(difficulty)} difficulties for {len(train)} rows")
        competence(0, pacing, start, full_at)  # validates the settings now, not at the first epoch
        self.columns = {c: train[c].to_numpy() for c in COLUMNS}
        self.pacing, self.start, self.full_at, self.seed = pacing, start, full_at, seed
        tie_break = np.random.default_rng([seed, 17]).random(len(train))
        self.easy_to_hard = np.lexsort((tie_break, np.asarray(difficulty, dtype=np.float64)))

    def __len__(self) -> int:
        return len(self.easy_to_hard)

    def pool(self, epoch: int) -> np.ndarray:
        """Row positions in this epoch's pool (the easiest ones), easiest first."""
        size = max(1, math.ceil(competence(epoch, self.pacing, self.start, self.full_at) * len(self)))
        return self.easy_to_hard[:size]

    def shard(self, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's rows for ``epoch``: a seeded shuffle of the pool, every ``world_size``-th row, equal lengths."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        pool = self.pool(epoch)
        order = pool[np.random.default_rng([self.seed, epoch]).permutation(len(pool))]
        per_rank = len(order) // world_size if world_size > 1 else len(order)
        return order[rank::world_size][:per_rank]

    def iter_batches(self, epoch: int, batch_size: int, rank: int = 0,
                     world_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        rows = self.shard(epoch, rank, world_size)
        for start in range(0, len(rows), batch_size):
            pick = rows[start : start + batch_size]
            yield {c: v[pick] for c, v in self.columns.items()}
