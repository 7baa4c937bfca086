"""``lmrec.data.synthetic``: seeded MovieLens-shaped data, written in row groups, read back by lmrec's own loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lmrec.data.movielens import load_ml1m
from lmrec.data.source import DataSource, load_source
from lmrec.data.synthetic import (
    ML1M,
    SIZES,
    Shape,
    clustered_vectors,
    data_source,
    interaction_blocks,
    user_activity,
    write_ml1m,
    write_parquet,
)

# 1,600 users: four generation blocks, so chunking and block seeds are exercised
SMALL = Shape(n_interactions=120_000, n_users=1_600, n_items=12_000)
SMALL_ML1M = Shape(30_000, 1_000, 600, first_timestamp=ML1M.first_timestamp, last_timestamp=ML1M.last_timestamp,
                   half_stars=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    files = write_parquet(folder, SMALL, seed=7, chunk_rows=25_000)
    return files, pd.read_parquet(files.interactions), pd.read_parquet(files.items)


def test_named_sizes_have_movielens_shape():
    assert SIZES["25m"].n_interactions == 25_000_000
    assert SIZES["25m"].n_items == 60_000 and 160_000 < SIZES["25m"].n_users < 165_000
    assert [SIZES[s].n_items for s in ("1m", "5m")] == [12_000, 26_833]
    assert SIZES["1m"].n_users == 6_500  # ML-1M has 6,040


def test_same_seed_same_data_other_seed_other_data(small, tmp_path):
    files, inter, items = small
    again = write_parquet(tmp_path / "again", SMALL, seed=7, chunk_rows=10**9)
    pd.testing.assert_frame_equal(pd.read_parquet(again.interactions), inter)
    pd.testing.assert_frame_equal(pd.read_parquet(again.items), items)
    other = write_parquet(tmp_path / "other", SMALL, seed=8)
    assert not pd.read_parquet(other.interactions).equals(inter)


def test_written_in_row_groups(small):
    files, inter, _ = small
    groups = pq.ParquetFile(files.interactions).metadata.num_row_groups
    assert files.row_groups == groups == 4  # one per 25,000-row chunk (whole blocks of 512 users)
    assert files.n_interactions == len(inter) == SMALL.n_interactions
    assert sum(len(b) for b in interaction_blocks(SMALL, seed=7)) == SMALL.n_interactions


def test_shape_statistics(small):
    _, inter, items = small
    per_user = inter.groupby("user_id").size()
    assert per_user.min() >= 20 and len(per_user) == SMALL.n_users
    np.testing.assert_array_equal(per_user.sort_index().to_numpy(), user_activity(SMALL, seed=7))
    assert per_user.median() < per_user.mean()  # heavy-tailed activity
    assert not inter.duplicated(["user_id", "item_id"]).any()
    counts = inter["item_id"].value_counts().to_numpy()
    top_1pct = counts[: SMALL.n_items // 100].sum() / counts.sum()
    assert top_1pct > 0.15  # a power law: 1% of the items hold a large share (uniform: 1%)
    assert set(np.unique(inter["rating"])) <= set(np.arange(1, 11) / 2)
    assert (inter["rating"] % 1 != 0).any() and inter["rating"].between(3, 4.5).mean() > 0.5
    assert inter["timestamp"].between(SMALL.first_timestamp, SMALL.last_timestamp).all()
    # rows sorted by user then time; item ids say nothing about the order
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()
    assert inter["user_id"].is_monotonic_increasing
    assert list(items.columns) == ["item_id", "title", "genres"] and len(items) == SMALL.n_items
    assert items["title"].str.match(r"^\S.* \(\d{4}\)$").all()
    assert items["genres"].map(len).between(1, 3).all()


def test_a_spec_reads_the_files_through_data_source(small):
    files, inter, _ = small
    source = DataSource.model_validate(data_source(files, name="synthetic-small"))
    dataset = load_source(source)
    assert len(dataset.interactions) == len(inter) and dataset.n_users == SMALL.n_users
    assert dataset.meta["items_without_text"] == 0
    assert isinstance(dataset.items["genres"].iat[0], list)


def test_ml1m_format_round_trips_through_the_ml1m_loader(tmp_path):
    folder = write_ml1m(tmp_path, SMALL_ML1M, seed=3)
    assert (folder / "ratings.dat").read_text().splitlines()[0].count("::") == 3
    dataset = load_ml1m(folder)
    expected = pd.concat(interaction_blocks(SMALL_ML1M, seed=3), ignore_index=True)
    loaded = dataset.interactions
    np.testing.assert_array_equal(loaded["user_id"], expected["user_id"])
    np.testing.assert_array_equal(loaded["item_id"], expected["item_id"])
    np.testing.assert_array_equal(loaded["rating"], expected["rating"])
    np.testing.assert_array_equal(loaded["timestamp"], expected["timestamp"])
    assert set(np.unique(loaded["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert dataset.n_users == 1_000 and dataset.n_items == 600
    assert dataset.items["year"].notna().all() and dataset.items["genres"].map(len).min() >= 1
    assert set(dataset.users["age"]) <= {"Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}


@pytest.mark.skipif(not (Path(os.environ.get("LMREC_DATA_DIR", "")) / "ml-1m" / "movies.dat").is_file(),
                    reason="needs the real ml-1m movies.dat and users.dat in $LMREC_DATA_DIR")
def test_ml1m_ratings_for_the_real_movies_and_users(tmp_path):
    real = Path(os.environ["LMREC_DATA_DIR"]) / "ml-1m"
    shape = Shape(125_000, 6_040, 3_883, first_timestamp=ML1M.first_timestamp, last_timestamp=ML1M.last_timestamp,
                  half_stars=False)
    dataset = load_ml1m(write_ml1m(tmp_path, shape, seed=0, real_folder=real))
    assert len(dataset.interactions) == 125_000 and dataset.n_users == 6_040 and dataset.n_items == 3_883
    assert dataset.interactions.groupby("user_id").size().min() >= 20
    assert dataset.items.set_index("item_id").loc[1, "title"] == "Toy Story"


def test_clustered_vectors_are_seeded_and_clustered():
    items, users = clustered_vectors(2_000, 10, 16, seed=1)
    again, _ = clustered_vectors(2_000, 10, 16, seed=1)
    assert items.dtype == users.dtype == np.float32 and items.shape == (2_000, 16) and users.shape == (10, 16)
    np.testing.assert_array_equal(items, again)
    # two topic clusters: an item's nearest neighbours share its topic far more than chance
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    nearest = np.argsort(-(unit[:50] @ unit.T), axis=1)[:, 1:11]
    assert (unit[:50, None] * unit[nearest]).sum(-1).mean() > 0.5
