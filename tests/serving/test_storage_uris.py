"""Serving loads artifacts from storage URIs: the same members and scorer swap logic as for local folders, with
the artifact fetched (and sha256-verified) from a ``file://`` URI through pyarrow and from an fsspec filesystem."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from lmrec.artifacts.manifest import ArtifactError
from lmrec.serving.app import ServeAppArgs, check_artifacts
from lmrec.serving.members import MFMember, TwoTowerMember
from lmrec.storage import StorageError, upload_dir


@pytest.fixture(scope="module")
def remotes(serving_artifacts, tmp_path_factory):
    """The v1/v2/MF artifacts uploaded to a ``file://`` URI and to an in-memory fsspec filesystem."""
    import fsspec

    base = tmp_path_factory.mktemp("remote")
    mem = f"memory://serving-{uuid.uuid4().hex[:8]}"
    out = {}
    for key in ("v1", "v2", "mf"):
        out[f"file-{key}"] = upload_dir(serving_artifacts[key], f"file://{base}/{key}")
        out[f"mem-{key}"] = upload_dir(serving_artifacts[key], f"{mem}/{key}")
    yield out
    fsspec.filesystem("memory").rm(mem, recursive=True)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("scheme", ["file", "mem"])
def test_members_from_uris_answer_like_local_folders(serving_artifacts, remotes, scheme):
    local, remote = TwoTowerMember(serving_artifacts["v1"]), TwoTowerMember(remotes[f"{scheme}-v1"])
    assert remote.sha256 == local.sha256
    items = np.arange(5)
    for user in local.users.ids[:3]:
        np.testing.assert_array_equal(remote.user_scores(user)["scores"], local.user_scores(user)["scores"])
        np.testing.assert_array_equal(remote.predict(user, items)["ratings"], local.predict(user, items)["ratings"])
    mf_local, mf_remote = MFMember(serving_artifacts["mf"]), MFMember(remotes[f"{scheme}-mf"])
    assert mf_remote.sha256 == mf_local.sha256 and mf_remote.item_ids == mf_local.item_ids
    user = mf_local.users.ids[0]
    np.testing.assert_array_equal(mf_remote.user_scores(user)["scores"], mf_local.user_scores(user)["scores"])


def test_scorer_swaps_between_uri_artifacts(remotes):
    """The Serve deployment's own ``reconfigure`` (its class, outside Serve) hot-swaps one URI for another."""
    from lmrec.serving.scorers import TwoTowerScorer

    scorer = TwoTowerScorer.func_or_class()
    asyncio.run(scorer.reconfigure({"artifact_dir": remotes["mem-v1"]}))
    first = asyncio.run(scorer.sha256())
    asyncio.run(scorer.reconfigure({"artifact_dir": remotes["mem-v2"]}))
    second = asyncio.run(scorer.sha256())
    assert first != second
    asyncio.run(scorer.reconfigure({"artifact_dir": remotes["mem-v1"]}))
    assert asyncio.run(scorer.sha256()) == first


def test_app_args_accept_uris_and_refuse_traversal(remotes, tmp_path):
    check_artifacts(ServeAppArgs(two_tower_artifact=remotes["file-v1"], mf_artifact=remotes["mem-mf"]))
    with pytest.raises(StorageError, match="traversal"):
        check_artifacts(ServeAppArgs(two_tower_artifact=remotes["mem-v1"] + "/../v2"))
    with pytest.raises(FileNotFoundError):
        check_artifacts(ServeAppArgs(two_tower_artifact=f"file://{tmp_path}/nothing-here"))


def test_a_tampered_remote_artifact_is_refused(serving_artifacts, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(serving_artifacts["v1"], bad)
    (bad / "id_maps.json").write_text('{"user_ids": [], "item_ids": []}')
    uri = upload_dir(bad, f"file://{tmp_path}/remote-bad")
    with pytest.raises(ArtifactError, match="sha256"):
        TwoTowerMember(uri)
