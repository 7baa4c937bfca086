"""The pieces of the incremental job that need no Ray: the artifact store, growing the id space, selecting new data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lmrec.config.base import SpecError
from lmrec.config.train import TrainSpec
from lmrec.data.schema import DataError, Dataset
from lmrec.pipelines.incremental import (
    ArtifactStore,
    expand_state,
    locate,
    select_new,
    union_dataset,
)


def _artifact(folder, text="{}"):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(text)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_store_publishes_versions_and_moves_current(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    assert store.current() is None and store.versions() == []
    assert store.publish(_artifact(tmp_path / "a")) == "v0001"
    assert store.publish(_artifact(tmp_path / "b", '{"b": 1}')) == "v0002"
    assert store.current() == "v0002" and store.versions() == ["v0001", "v0002"]
    assert (tmp_path / "store" / "v0002" / "manifest.json").read_text() == '{"b": 1}'
    assert not (tmp_path / "store" / "CURRENT.tmp").exists()
    # a store, an artifact inside it, and a bare artifact
    location, found = locate(str(tmp_path / "store"))
    assert location == store.location("v0002") and found.uri == store.uri
    location, found = locate(store.location("v0001"))
    assert location == store.location("v0001") and found.uri == store.uri
    location, found = locate(str(tmp_path / "a"))
    assert found is None
    with pytest.raises(SpecError, match="neither an artifact"):
        locate(str(tmp_path / "nothing"))


def test_store_on_a_remote_like_filesystem(tmp_path):
    """The same store through a pyarrow URI (``file://``), as an object store would be addressed."""
    store = ArtifactStore(f"file://{tmp_path}/remote")
    assert store.publish(_artifact(tmp_path / "a")) == "v0001"
    assert store.current() == "v0001" and store.location("v0001").startswith("file://")
    assert (tmp_path / "remote" / "v0001" / "model.safetensors").read_bytes() == b"weights"


def test_expand_state_keeps_old_rows_and_initialises_new_ones():
    state = {"user_bias.weight": torch.ones(3, 1), "item_tower.id_embedding.weight": torch.ones(2, 4),
             "item_tower.seen": torch.ones(2, dtype=torch.bool), "history": torch.zeros(3, 5, dtype=torch.long),
             "user_text": torch.zeros(0, 8), "interest_proj.weight": torch.ones(4, 4)}
    out = expand_state(state, n_users=5, n_items=4)
    assert out["user_bias.weight"].shape == (5, 1) and torch.equal(out["user_bias.weight"][:3], torch.ones(3, 1))
    assert torch.equal(out["user_bias.weight"][3:], torch.zeros(2, 1))
    emb = out["item_tower.id_embedding.weight"]
    assert emb.shape == (4, 4) and torch.equal(emb[:2], torch.ones(2, 4)) and 0 < emb[2:].abs().max() < 0.1
    assert out["item_tower.seen"].tolist() == [True, True, False, False]
    assert out["history"].shape == (5, 5) and (out["history"][3:] == -1).all()
    assert out["user_text"].shape == (0, 8) and out["interest_proj.weight"] is state["interest_proj.weight"]
    with pytest.raises(ValueError, match="shrink"):
        expand_state(state, n_users=2, n_items=4)


def _dataset(rows) -> Dataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": sorted(inter["item_id"].unique())})
    items["title"] = [f"item {i}" for i in items["item_id"]]
    return Dataset.build("toy", inter, items)


def test_union_dataset_keeps_the_artifact_indices():
    ds = _dataset([(10, "a", 4, 1), (20, "b", 3, 2), (5, "c", 5, 3), (10, "c", 2, 4)])
    # the artifact knew users [20, 10] and items ["b", "a"] in that order; 5 and "c" are new
    out = union_dataset(ds, [20, 10], ["b", "a"])
    assert out.user_ids.tolist() == [20, 10, 5] and out.item_ids.tolist() == ["b", "a", "c"]
    assert out.items["title"].tolist() == ["item b", "item a", "item c"]
    got = out.interactions[["user_idx", "item_idx"]].to_numpy().tolist()
    assert got == [[1, 1], [0, 0], [2, 2], [1, 2]]
    with pytest.raises(DataError, match="only grow"):
        union_dataset(ds, [20, 10, 99], ["b", "a"])


def test_select_new_holds_out_the_newest_and_samples_replay():
    n = 200
    inter = pd.DataFrame({"user_idx": np.arange(n) % 7, "item_idx": np.arange(n) % 11, "rating": 3.0,
                          "timestamp": np.arange(1, n + 1)})
    spec = TrainSpec.model_validate({"data": {"valid_from_train": 0.0},
                                     "incremental": {"holdout_frac": 0.25, "replay_ratio": 0.5}})
    sel = select_new(inter, cutoff=120, spec=spec)
    assert len(sel.old) == 120 and len(sel.holdout) == 20 and len(sel.fit) == 60 and len(sel.replay) == 30
    assert sel.fit["timestamp"].max() < sel.holdout["timestamp"].min() and sel.old["timestamp"].max() == 120
    assert sel.replay["timestamp"].max() <= 120 and sel.valid is None and len(sel.known) == 180
    assert isinstance(select_new(inter, cutoff=199, spec=spec), str)  # 1 new row < min_new_interactions
    with pytest.raises(DataError, match="timestamps"):
        select_new(inter.assign(timestamp=0), cutoff=0, spec=spec)


def test_spec_must_match_the_artifact_architecture():
    from lmrec.pipelines.incremental import check_compatible

    spec = TrainSpec.model_validate({"model": {"dim": 16}})
    manifest = {"config": spec.model_dump(mode="json"), "model_args": {"ranking_head": "interest"}}
    check_compatible(spec, manifest)
    with pytest.raises(SpecError, match="model.dim"):
        check_compatible(TrainSpec.model_validate({"model": {"dim": 32}}), manifest)
    rating_only = {"tasks": {"click": {"weight": 0}, "related": {"weight": 0}}, "model": {"dim": 16}}
    with pytest.raises(SpecError, match="ranking head"):
        check_compatible(TrainSpec.model_validate(rating_only), manifest)


def test_cli_refuses_a_missing_artifact_before_any_work(tmp_path, capsys):
    from lmrec.cli import main

    spec = Path(__file__).resolve().parents[3] / "jobs" / "ml100k-incremental.yaml"
    assert main(["train", str(spec), "--from-artifact", str(tmp_path / "nope")]) == 2
    assert "neither an artifact folder" in capsys.readouterr().err
