"""Seeded synthetic data of MovieLens shape, for scale tests and benchmarks without the real files.

``write_parquet(folder, "25m")`` writes ``interactions.parquet`` (user_id, item_id, rating, timestamp) and
``items.parquet`` (item_id, title, genres) shaped like MovieLens 25M: 25,000,000 ratings by 162,500 users of 60,000
items, every user with at least 20 ratings (as MovieLens keeps only such users), per-user activity heavy-tailed
(log-normal, median ~70 ratings, as in ML-25M), item popularity a power law in rank (at "1m" the top 1% of items
get 16% of the ratings, more in larger catalogues; no user rates an item twice), ratings 0.5-5 in half stars (whole
stars only for users who started before 2003), timestamps from 1995 to 2019 with most users rating within a few
sessions, and item texts (title with year, genres) from a fixed vocabulary. "1m" and "5m" scale users with the
ratings and items with their square root.
``data_source(files)`` is the ``data.source`` block of a job spec that reads them.

The interactions are generated in fixed blocks of users, each from its own seed, and written a row group at a time:
25M rows never sit in memory together, and the output is the same whatever ``chunk_rows`` is.

``write_ml1m(folder)`` writes the MovieLens 1M original format (``ratings.dat``, ``movies.dat``, ``users.dat``,
'::'-separated) at ML-1M's shape: 1,000,209 whole-star ratings by 6,040 users, from 2000 to 2003. Given the real
``movies.dat`` / ``users.dat`` (the shared copy lacks only ratings.dat) it rates those movies and users.

Run: ``python -m lmrec.data.synthetic 1m OUT_DIR [--seed 0] [--ml1m]``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lmrec.data.movielens import ML1M_AGE_GROUPS, ML1M_OCCUPATIONS

BLOCK_USERS = 512  # users generated together from one seed: fixed, so chunking never changes the data
ML25M_GENRES = (
    "Drama", "Comedy", "Thriller", "Romance", "Action", "Horror", "Documentary", "Crime", "Adventure", "Sci-Fi",
    "Children", "Animation", "Mystery", "Fantasy", "War", "Western", "Musical", "Film-Noir", "IMAX",
)  # fmt: skip  (most frequent first, as in ML-25M's movies.csv)
ML1M_GENRES = (
    "Drama", "Comedy", "Action", "Thriller", "Romance", "Horror", "Adventure", "Sci-Fi", "Children's", "Crime",
    "War", "Documentary", "Musical", "Mystery", "Animation", "Fantasy", "Western", "Film-Noir",
)  # fmt: skip
_ADJECTIVES = (
    "Silent", "Last", "Broken", "Golden", "Hidden", "Dark", "Crimson", "Lonely", "Wild", "Burning", "Frozen", "Lost",
    "Secret", "Endless", "Quiet", "Electric", "Savage", "Gentle", "Midnight", "Final", "Distant", "Little", "Restless",
    "Bitter", "Shining", "Hollow", "Brave", "Wicked", "Sweet", "Iron",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Road", "Summer", "River", "Kingdom", "Heart", "Garden", "Mirror", "Storm", "Promise", "City", "Island",
    "Dream", "Shadow", "Train", "Letter", "Winter", "Empire", "Stranger", "Sky", "Forest", "Voyage", "Song", "Night",
    "Witness", "Border", "Game", "Fortune", "House", "Planet", "Hunter", "Bridge", "Season", "Machine", "Detective",
)  # fmt: skip
_NAMES = ("Anna", "Jack", "Marie", "Oscar", "Lena", "Victor", "Rosa", "Henry", "Nina", "Felix", "Clara", "Hugo")
_SEQUELS = ("", "", "", "", "", "", "", "", " 2", " II", " III", ": Part Two", ": The Return")


@dataclass(frozen=True)
class Shape:
    """How much data and how it is spread; ``SIZES`` and ``ML1M`` are the named ones."""

    n_interactions: int
    n_users: int
    n_items: int
    min_per_user: int = 20  # MovieLens keeps users with at least 20 ratings
    first_timestamp: int = 789_652_009  # ML-25M's first rating, 1995-01-09
    last_timestamp: int = 1_574_327_703  # and its last, 2019-11-21
    half_stars: bool = True  # 0.5-5 in halves; False: whole stars 1-5 (ML-1M)
    popularity_exponent: float = 1.2  # p(rank r) ∝ (r + popularity_offset)^-popularity_exponent
    popularity_offset: float = 100.0
    activity_sigma: float = 1.4  # log-normal spread of ratings per user above the minimum (ML-25M: median 71, mean 154)

    def __post_init__(self) -> None:
        if self.n_users * self.min_per_user > self.n_interactions:
            raise ValueError(f"{self.n_users} users × {self.min_per_user} ratings exceed {self.n_interactions}")
        if self.n_interactions > self.n_users * self.n_items // 2:
            raise ValueError(f"{self.n_interactions} interactions are too many for {self.n_users} users × "
                             f"{self.n_items} items (each user rates at most half the items)")


def scaled_shape(n_interactions: int) -> Shape:
    """ML-25M's shape at ``n_interactions``: ~154 ratings per user, items ∝ sqrt(interactions) (60,000 at 25M)."""
    return Shape(
        n_interactions=n_interactions,
        n_users=max(1, round(n_interactions / 153.85)),
        n_items=max(50, round(60_000 * math.sqrt(n_interactions / 25_000_000))),
    )


SIZES = {"1m": scaled_shape(1_000_000), "5m": scaled_shape(5_000_000), "25m": scaled_shape(25_000_000)}
ML1M = Shape(1_000_209, 6_040, 3_883, first_timestamp=956_703_932, last_timestamp=1_046_454_590, half_stars=False)


@dataclass(frozen=True)
class SyntheticFiles:
    """What ``write_parquet`` wrote: the two files, their row counts, and the interactions' row groups."""

    interactions: Path
    items: Path
    n_interactions: int
    n_items: int
    n_users: int
    row_groups: int


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _popularity(shape: Shape) -> np.ndarray:
    """p(rank) for ranks 0..n_items-1. The offset flattens the head (the first ~100 items are near-equally popular,
    as blockbusters are) and keeps the most popular item at ~0.3% of all ratings at every size, so ~40% of the users
    rate it (ML-25M: 0.33%, half the users)."""
    p = (np.arange(shape.n_items) + shape.popularity_offset) ** -shape.popularity_exponent
    return p / p.sum()


def user_activity(shape: Shape, seed: int = 0) -> np.ndarray:
    """Ratings per user [n_users]: ``min_per_user`` plus a log-normal share of the rest, summing to exactly
    ``n_interactions``; nobody rates more than half the items."""
    rng = _rng(seed, 1)
    cap = shape.n_items // 2
    counts = np.full(shape.n_users, shape.min_per_user, dtype=np.int64)
    weights = rng.lognormal(0.0, shape.activity_sigma, shape.n_users)
    left = shape.n_interactions - int(counts.sum())
    while left > 0:  # a few rounds at most: what the capped users cannot take goes to the others
        open_ = counts < cap
        share = np.where(open_, weights, 0.0)
        counts += rng.multinomial(left, share / share.sum())
        counts = np.minimum(counts, cap)
        left = shape.n_interactions - int(counts.sum())
    return counts


def item_table(shape: Shape, seed: int = 0, genres: tuple[str, ...] = ML25M_GENRES) -> pd.DataFrame:
    """item_id (1..n_items), title ("Silent Harbor (1987)"), genres (1-3, frequent ones more often), year."""
    rng = _rng(seed, 2)
    n = shape.n_items
    adjective, noun, noun2 = (rng.integers(0, len(_ADJECTIVES), n), rng.integers(0, len(_NOUNS), n),
                              rng.integers(0, len(_NOUNS), n))
    name, form, sequel = rng.integers(0, len(_NAMES), n), rng.integers(0, 5, n), rng.integers(0, len(_SEQUELS), n)
    first_year = pd.Timestamp(shape.first_timestamp, unit="s").year
    last_year = pd.Timestamp(shape.last_timestamp, unit="s").year
    # release years lean recent (most MovieLens films are from the decades before the ratings)
    year = np.clip(last_year - rng.exponential(15.0, n).astype(int), 1902, last_year)
    year = np.where(rng.random(n) < 0.02, rng.integers(1902, first_year, n), year)
    titles = []
    for i in range(n):
        a, b, c = _ADJECTIVES[adjective[i]], _NOUNS[noun[i]], _NOUNS[noun2[i]]
        base = (f"The {a} {b}", f"{a} {b}", f"{b} of the {c}", f"{_NAMES[name[i]]}'s {b}", f"The {b}")[form[i]]
        titles.append(f"{base}{_SEQUELS[sequel[i]]} ({year[i]})")
    genre_p = 1.0 / np.arange(1, len(genres) + 1) ** 0.8
    genre_p /= genre_p.sum()
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.4, 0.35, 0.25])
    genre_lists = [sorted(rng.choice(len(genres), size=g, replace=False, p=genre_p).tolist()) for g in n_genres]
    return pd.DataFrame({
        "item_id": np.arange(1, n + 1, dtype=np.int64),
        "title": titles,
        "genres": [[genres[g] for g in gl] for gl in genre_lists],
        "year": year.astype(np.int64),
    })  # fmt: skip


def interaction_blocks(shape: Shape, seed: int = 0, item_ids: np.ndarray | None = None,
                       user_ids: np.ndarray | None = None) -> Iterator[pd.DataFrame]:
    """The interactions, ``BLOCK_USERS`` users at a time, sorted by user then time.

    item_ids, user_ids: the ids to use (default 1..n); popularity ranks are shuffled over the items, so an item's
    id says nothing about its popularity.
    """
    items = np.arange(1, shape.n_items + 1) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
    users = np.arange(1, shape.n_users + 1) if user_ids is None else np.asarray(user_ids, dtype=np.int64)
    if len(items) != shape.n_items or len(users) != shape.n_users:
        raise ValueError(f"{len(items)} item ids / {len(users)} user ids for a shape of {shape.n_items} / "
                         f"{shape.n_users}")
    rng = _rng(seed, 3)
    pdf = _popularity(shape)
    cdf = np.cumsum(pdf)
    cdf[-1] = 1.0
    rank_to_item = rng.permutation(shape.n_items)
    # item quality: popular films are rated a little higher, as in MovieLens
    quality = rng.normal(0.0, 0.4, shape.n_items) + 0.25 * (1 - np.arange(shape.n_items) / shape.n_items)
    counts = user_activity(shape, seed)
    for block, lo in enumerate(range(0, shape.n_users, BLOCK_USERS)):
        block_counts = counts[lo : lo + BLOCK_USERS]
        brng = _rng(seed, 4, block)
        owner, ranks = _distinct_ranks(brng, block_counts, pdf, cdf)
        in_time_order = np.lexsort((brng.random(len(owner)), owner))  # each user's items in a random order ...
        owner, ranks = owner[in_time_order], ranks[in_time_order]
        timestamps = _timestamps(brng, shape, block_counts)  # ... given the user's sorted times
        bias = brng.normal(0.0, 0.45, len(block_counts))
        latent = 3.55 + quality[ranks] + bias[owner] + brng.normal(0.0, 0.8, len(owner))
        if shape.half_stars:
            # half stars came to MovieLens in 2003: users who started before rate in whole stars
            halves = timestamps[np.cumsum(block_counts) - block_counts] >= 1_046_476_800
            step = np.where(halves[owner], 2.0, 1.0)
            rating = np.clip(np.round(latent * step) / step, np.where(halves[owner], 0.5, 1.0), 5.0)
        else:
            rating = np.clip(np.round(latent), 1.0, 5.0)
        yield pd.DataFrame({
            "user_id": users[lo + owner],
            "item_id": items[rank_to_item[ranks]],
            "rating": rating.astype(np.float32),
            "timestamp": timestamps,
        })  # fmt: skip


def _distinct_ranks(rng: np.random.Generator, counts: np.ndarray, pdf: np.ndarray, cdf: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(owner, rank) with ``counts[u]`` distinct popularity ranks per user u, drawn by popularity without
    replacement: draw with replacement, drop repeats, redraw what is missing; the rare heavy user still short
    after a few rounds gets the rest from ``rng.choice`` without replacement."""
    n_items = len(pdf)
    keys = np.zeros(0, dtype=np.int64)
    need = counts.copy()
    for _ in range(6):
        if not need.any():
            break
        owner = np.repeat(np.arange(len(counts)), need)
        ranks = np.searchsorted(cdf, rng.random(len(owner)), side="right")
        keys = np.unique(np.concatenate([keys, owner * n_items + ranks]))
        need = counts - np.bincount(keys // n_items, minlength=len(counts))
    extra = []
    for u in np.flatnonzero(need):
        p = pdf.copy()
        p[keys[keys // n_items == u] % n_items] = 0.0
        extra.append(u * n_items + rng.choice(n_items, size=int(need[u]), replace=False, p=p / p.sum()))
    keys = np.sort(np.concatenate([keys, *extra])) if extra else keys
    return keys // n_items, keys % n_items


def _timestamps(rng: np.random.Generator, shape: Shape, counts: np.ndarray) -> np.ndarray:
    """Per user, sorted times within the user's active span: 60% rate within one day (one session), the others
    over a log-normal span of days; starts spread over the whole period."""
    day = 86_400
    total = shape.last_timestamp - shape.first_timestamp
    span = np.where(rng.random(len(counts)) < 0.6, rng.uniform(600, day, len(counts)),
                    np.minimum(rng.lognormal(math.log(60 * day), 1.5, len(counts)), total))
    start = shape.first_timestamp + rng.random(len(counts)) * (total - span)
    owner = np.repeat(np.arange(len(counts)), counts)
    t = start[owner] + rng.random(len(owner)) * span[owner]
    t = t[np.lexsort((t, owner))]
    return t.astype(np.int64)


def write_parquet(folder: str | Path, size: str | Shape = "1m", *, seed: int = 0, chunk_rows: int = 1_000_000
                  ) -> SyntheticFiles:
    """``folder/interactions.parquet`` and ``folder/items.parquet`` for ``size`` ("1m", "5m", "25m" or a Shape),
    the interactions written one row group of ~``chunk_rows`` rows at a time."""
    shape = SIZES[size] if isinstance(size, str) else size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = item_table(shape, seed)[["item_id", "title", "genres"]]
    items_path = folder / "items.parquet"
    pq.write_table(pa.Table.from_pandas(items, preserve_index=False), items_path)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()),
                        ("timestamp", pa.int64())])
    path = folder / "interactions.parquet"
    rows = groups = 0
    pending: list[pd.DataFrame] = []
    with pq.ParquetWriter(path, schema) as writer:
        def flush() -> None:
            nonlocal groups
            table = pa.Table.from_pandas(pd.concat(pending), schema=schema, preserve_index=False)
            writer.write_table(table, row_group_size=len(table))
            pending.clear()
            groups += 1

        for block in interaction_blocks(shape, seed):
            pending.append(block)
            rows += len(block)
            if sum(len(b) for b in pending) >= chunk_rows:
                flush()
        if pending:
            flush()
    return SyntheticFiles(path, items_path, rows, shape.n_items, shape.n_users, groups)


def data_source(files: SyntheticFiles, name: str = "synthetic") -> dict:
    """The ``data.source`` block of a job spec that reads ``files`` (title and genres make the item text)."""
    return {
        "name": name,
        "interactions": {"path": str(files.interactions)},
        "items": {"path": str(files.items), "text_columns": ["title", "genres"]},
    }


def write_ml1m(folder: str | Path, shape: Shape = ML1M, *, seed: int = 0, real_folder: str | Path | None = None
               ) -> Path:
    """MovieLens 1M's original files in ``folder``: ratings.dat (``UserID::MovieID::Rating::Timestamp``),
    movies.dat (``MovieID::Title::Genres``, latin-1) and users.dat (``UserID::Gender::Age::Occupation::Zip-code``).

    real_folder: a folder with the real movies.dat and users.dat; they are copied and rated (shape.n_items and
    n_users then come from them). Otherwise both are synthetic, with ML-1M's codes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if real_folder is not None:
        movie_ids = _first_field_ids(Path(real_folder) / "movies.dat")
        user_ids = _first_field_ids(Path(real_folder) / "users.dat")
        for name in ("movies.dat", "users.dat"):
            shutil.copyfile(Path(real_folder) / name, folder / name)
        shape = replace(shape, n_items=len(movie_ids), n_users=len(user_ids))
    else:
        movie_ids = np.arange(1, shape.n_items + 1)
        user_ids = np.arange(1, shape.n_users + 1)
        items = item_table(shape, seed, genres=ML1M_GENRES)
        (folder / "movies.dat").write_bytes("".join(
            f"{i}::{t}::{'|'.join(g)}\n" for i, t, g in zip(items["item_id"], items["title"], items["genres"])
        ).encode("latin-1"))
        rng = _rng(seed, 5)
        ages, occupations = np.array(list(ML1M_AGE_GROUPS)), np.array(list(ML1M_OCCUPATIONS))
        gender = rng.choice(["M", "F"], size=shape.n_users, p=[0.717, 0.283])
        age = rng.choice(ages, size=shape.n_users)
        occupation = rng.choice(occupations, size=shape.n_users)
        zips = rng.integers(1000, 99999, size=shape.n_users)
        (folder / "users.dat").write_text("".join(
            f"{u}::{g}::{a}::{o}::{z:05d}\n" for u, g, a, o, z in zip(user_ids, gender, age, occupation, zips)
        ), encoding="ascii")
    with open(folder / "ratings.dat", "w", encoding="ascii") as out:
        for block in interaction_blocks(shape, seed, item_ids=movie_ids, user_ids=user_ids):
            columns = (block[c].tolist() for c in ("user_id", "item_id", "rating", "timestamp"))
            out.write("".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in zip(*columns)))
    return folder


def _first_field_ids(path: Path) -> np.ndarray:
    return np.array([int(line.split("::", 1)[0]) for line in path.read_text("latin-1").splitlines() if line.strip()])


def clustered_vectors(n_items: int, n_users: int, dim: int = 64, *, n_clusters: int | None = None,
                      spread: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors [n_items, dim], user vectors [n_users, dim]) float32, shaped like a trained two-tower's tables:
    items around ``n_clusters`` unit-length topic centres (default one per 1,000 items) with noise of norm ~``spread``
    and log-normal norms (popular items score higher everywhere), users a mix of one to three topics plus noise.
    For ANN tests: uniform random vectors have no neighbourhoods and flatter top-k lists than any trained model."""
    rng = _rng(seed, 6)
    n_clusters = n_clusters or max(1, n_items // 1000)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    items *= np.float32(spread / math.sqrt(dim))
    items += centres[rng.integers(0, n_clusters, n_items)]
    items *= rng.lognormal(0.0, 0.2, (n_items, 1)).astype(np.float32)
    topics = rng.integers(0, n_clusters, (n_users, 3))
    weights = rng.dirichlet(np.full(3, 0.5), n_users).astype(np.float32)
    users = np.einsum("uk,ukd->ud", weights, centres[topics])
    users += rng.standard_normal((n_users, dim), dtype=np.float32) * np.float32(spread / math.sqrt(dim))
    return items, users.astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic MovieLens-shaped data.")
    parser.add_argument("size", choices=[*SIZES, "ml-1m"], help="1m / 5m / 25m interactions (Parquet), or ml-1m "
                        "(the original .dat format)")
    parser.add_argument("out", help="folder to write into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-folder", help="ml-1m: the real movies.dat and users.dat to rate")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.size == "ml-1m":
        write_ml1m(args.out, seed=args.seed, real_folder=args.real_folder)
        print(f"wrote {args.out}/ratings.dat, movies.dat, users.dat in {time.perf_counter() - start:.1f} s")
        return
    files = write_parquet(args.out, args.size, seed=args.seed)
    print(f"wrote {files.n_interactions:,} interactions ({files.n_users:,} users, {files.n_items:,} items) to "
          f"{files.interactions} in {files.row_groups} row groups, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
