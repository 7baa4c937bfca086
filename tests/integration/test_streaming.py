"""``data.streaming``: Ray Data reads, splits and summarises the files; Train workers read their own shards.

The small-shape version of the scale benchmark (``benchmarks/scale.py --part train``): a synthetic
MovieLens-shaped file, read by a real local Ray, summarised without pandas on the driver, and trained one epoch
on two Ray Train workers (``heavy``: ``make test-heavy``). ``tests/integration/test_multinode.py`` runs the same
job on two nodes.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lmrec.config.base import SpecError, load_spec
from lmrec.config.train import TrainSpec
from lmrec.data.schema import DataError
from lmrec.data.stream import TEST, TRAIN, VALID, row_fold, stream_source
from lmrec.data.synthetic import data_source, scaled_shape, write_parquet

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("synthetic"), scaled_shape(20_000), chunk_rows=2_500)


def _spec(files, tmp_path, **data) -> TrainSpec:
    return TrainSpec.model_validate({
        "name": "streamed",
        "data": {"source": data_source(files), "streaming": True, "split": {"kind": "random", "test_frac": 0.1},
                 "eval_users": 60, **data},
        "model": {"max_history": 40, "dim": 16},
        "optim": {"epochs": 1, "lr_encoder": 0, "batch_size": 512},
        # batch-bound (rating + sampled click): the ID rows train sparse, as streamed jobs get them by default
        "tasks": {"related": {"weight": 0}, "click": {"negatives": "sampled", "num_negatives": 64}},
        "scaling": {"num_workers": 2, "storage_path": str(tmp_path / "runs")},
    })


def test_row_fold_is_a_seeded_hash_of_the_row():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 10_000, 200_000), rng.integers(0, 50_000, 200_000)
    fold = row_fold(users, items, 3, 0.2, 0.0, 0.05)
    share = np.bincount(fold, minlength=3) / len(fold)
    assert share[TEST] == pytest.approx(0.2, abs=0.005)
    assert share[VALID] == pytest.approx(0.8 * 0.05, abs=0.003)
    # the same row gets the same part in any batch layout; another seed moves rows
    again = np.concatenate([row_fold(users[i:i + 777], items[i:i + 777], 3, 0.2, 0.0, 0.05)
                            for i in range(0, len(users), 777)])
    assert np.array_equal(fold, again)
    assert (row_fold(users, items, 4, 0.2, 0.0, 0.05) != fold).mean() > 0.2


def test_streamed_summaries_equal_the_in_memory_ones(files):
    """Every summary the model needs equals what the in-memory path computes from the same training rows."""
    from lmrec.models.two_tower import history_matrix

    source = TrainSpec.model_validate({"data": {"source": data_source(files), "split": "random-80-20"}}).data.source
    tables = stream_source(source, item_template="[{title}.] [{genres}.]", seed=1, test_frac=0.1,
                           valid_from_train=0.05, max_history=30, eval_users=40, eval_seed=0)
    train = tables.train.to_pandas()  # small here; the job never does this
    raw = pd.read_parquet(files.interactions)
    assert len(tables.user_ids) == raw["user_id"].nunique() and len(tables.item_ids) == files.n_items
    s = tables.summary
    assert s["rows"] == len(train) and s["rows"] + s["valid_rows"] + s["test_rows"] == len(raw)
    assert s["rating_sum"] / s["rows"] == pytest.approx(train["rating"].mean(), rel=1e-6)
    assert np.array_equal(s["item_counts"], np.bincount(train["item_idx"], minlength=files.n_items))
    assert np.array_equal(tables.history, history_matrix(train, len(tables.user_ids), 30).numpy())
    # ids map back to the file's rows: train rows are the file's rows, re-indexed
    back = pd.DataFrame({"user_id": tables.user_ids[train["user_idx"]], "item_id": tables.item_ids[train["item_idx"]]})
    assert back.merge(raw, on=["user_id", "item_id"]).shape[0] == len(train)
    # evaluation: only the sampled users' rows, each in the part its hash gave it
    assert len(tables.eval_users) == 40
    for fold in (TRAIN, VALID, TEST):
        part = tables.parts[fold]
        assert set(part["user_idx"]) <= set(tables.eval_users)
        got = row_fold(part["user_idx"].to_numpy(), part["item_idx"].to_numpy(), 1, 0.1, 0.0, 0.05)
        assert (got == fold).all()
    assert len(tables.parts[TRAIN]) == train["user_idx"].isin(tables.eval_users).sum()
    assert tables.items["text"].iat[0]  # rendered from the items file, in item_ids order


@pytest.mark.heavy
def test_an_item_missing_from_the_items_file_is_refused(files, tmp_path):
    items = pd.read_parquet(files.items)
    items.iloc[1:].to_parquet(tmp_path / "items.parquet")
    source = dict(data_source(files), items={"path": str(tmp_path / "items.parquet"),
                                             "text_columns": ["title", "genres"]})
    spec = TrainSpec.model_validate({"data": {"source": source, "split": "random-80-20", "streaming": True}})
    with pytest.raises(DataError, match="name items that"):
        stream_source(spec.data.source, item_template=spec.data.item_template, seed=0, test_frac=0.2)


@pytest.mark.parametrize("data, match", [
    ({"split": "per-user-80-20"}, "split kind 'random'"),
    ({"max_users": 10}, "max_users"),
])
def test_streaming_refuses_what_it_cannot_do(files, tmp_path, data, match):
    raw = _spec(files, tmp_path).model_dump(mode="json")
    raw["data"].update(data)
    with pytest.raises(ValueError, match=match):
        TrainSpec.model_validate(raw)
    raw = _spec(files, tmp_path).model_dump(mode="json")
    raw["strategy"] = {"name": "curriculum"}
    with pytest.raises(ValueError, match="whole training frame"):
        TrainSpec.model_validate(raw)


@pytest.mark.heavy  # ~100 s: make test-heavy (CI runs it)
def test_a_streamed_job_trains_on_two_workers_each_reading_its_shard(files, tmp_path):
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.training.ray_train import train

    import ray
    from packaging.version import Version

    from lmrec.training.data import STREAMING_MIN_RAY

    spec = _spec(files, tmp_path)
    if Version(ray.__version__) < Version(STREAMING_MIN_RAY):  # make test-ray-lowest: refused before any work
        with pytest.raises(SpecError, match=f"Ray >= {STREAMING_MIN_RAY}"):
            train(spec, resume=False)
        return
    result = train(spec, resume=False)
    epoch = result.history[-1]
    rows = [epoch["interactions_rank0"], epoch["interactions_rank1"]]
    raw = pd.read_parquet(files.interactions)
    users = np.searchsorted(np.unique(raw["user_id"]), raw["user_id"])
    items = np.searchsorted(np.sort(pd.read_parquet(files.items)["item_id"]), raw["item_id"])
    expected = int((row_fold(users, items, 0, 0.1, 0.0, 0.05) == TRAIN).sum())
    assert expected - 2 <= sum(rows) <= expected  # every training row once (an equal split drops a remainder)
    assert abs(rows[0] - rows[1]) <= 0.2 * sum(rows) / 2  # each rank its share, not the whole file
    assert np.isfinite(result.best_metrics["val_rmse"]) and result.test_metrics["test_ndcg@10"] > 0
    loaded = load_artifact(result.artifact_path)
    assert len(loaded.seen_items) == expected  # streamed back whole by rank 0
    # the ID rows trained sparse (DDP all-reduced sparse gradients, SparseAdam stepped them)
    assert loaded.manifest["lineage"]["sparse_id_grads"]["on"] is True
    metrics = json.loads((tmp_path / "runs" / result.name / "lmrec_metrics.json").read_text())
    assert metrics["fingerprint"] == result.fingerprint


def test_the_spec_file_form_loads(files, tmp_path):
    path = tmp_path / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_spec(files, tmp_path).model_dump(mode="json")))
    assert load_spec(TrainSpec, path).data.streaming
    named = load_spec(TrainSpec, path, {"data.source": None, "data.dataset": "ml-100k"})
    assert named.data.streaming and named.data.dataset == "ml-100k"  # a named dataset streams too
    with pytest.raises(SpecError, match="split kind 'random'"):
        load_spec(TrainSpec, path, {"data.source": None, "data.dataset": "ml-100k", "data.split": "u1"})


@pytest.mark.heavy  # ~30 s
def test_a_named_dataset_streams_through_the_same_path(data_dir, tmp_path, monkeypatch):
    """ML-100K by name: written once as Parquet in the cache, then read, split and summarised by Ray Data; the
    summaries equal what the in-memory loader gives for the same rows."""
    import ray
    from packaging.version import Version

    from lmrec.data.registry import load_dataset
    from lmrec.data.text import default_item_template, render_item_texts
    from lmrec.training.data import STREAMING_MIN_RAY, prepare_streamed

    if Version(ray.__version__) < Version(STREAMING_MIN_RAY):
        pytest.skip(f"streaming needs Ray >= {STREAMING_MIN_RAY} (the two-worker test checks the refusal)")
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    spec = TrainSpec.model_validate({"data": {"dataset": "ml-100k", "streaming": True, "split": "random-80-20",
                                              "eval_users": 50}, "model": {"max_history": 20}})
    data = prepare_streamed(spec)
    dataset = load_dataset("ml-100k")
    assert (data.n_users, data.n_items) == (943, 1682) and data.dataset == "ml-100k"
    assert data.item_ids.tolist() == sorted(dataset.item_ids.tolist())
    texts = dict(zip(dataset.item_ids, render_item_texts(dataset.items, default_item_template("ml-100k"))))
    assert list(data.item_texts) == [texts[i] for i in data.item_ids]  # the dataset's default template
    assert 0.75 * 100_000 < data.n_train() < 0.8 * 100_000
    assert data.item_counts().sum() == data.n_train()
    assert len(list((tmp_path / "cache" / "streaming").iterdir())) == 1

