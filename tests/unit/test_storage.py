"""``lmrec.storage``: locations (local, pyarrow URIs, fsspec URIs), copies both ways, the artifact cache, and
the refusal of path traversal."""

from __future__ import annotations

import pytest

from lmrec.storage import (StorageError, check_uri, download_dir, exists, filesystem, join, local_artifact,
                           normalize, upload_dir)


def make_folder(root, manifest: str = '{"v": 1}'):
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(manifest)
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return root


@pytest.fixture
def memory_root():
    """A fresh folder on fsspec's in-memory filesystem (a scheme pyarrow has no native filesystem for)."""
    import uuid

    import fsspec

    base = f"memory://lmrec-test-{uuid.uuid4().hex[:8]}"
    yield base
    fs = fsspec.filesystem("memory")
    if fs.exists(base):
        fs.rm(base, recursive=True)


@pytest.mark.parametrize("bad", [
    "s3://bucket/runs/../secrets", "s3://bucket/../x", "file:///tmp/a/./b", "gs://b/a\\..\\c",
    "memory://b/x\x00y", "s3:///", "://nothing",
])
def test_traversal_and_malformed_uris_are_rejected(bad):
    with pytest.raises(StorageError):
        normalize(bad)


def test_join_takes_single_segments_only():
    assert join("s3://bucket/lmrec", "run-1", "artifact") == "s3://bucket/lmrec/run-1/artifact"
    for name in ("..", ".", "a/b", "", "a\\b"):
        with pytest.raises(StorageError):
            join("s3://bucket/lmrec", name)


def test_local_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize("runs") == str(tmp_path / "runs")
    assert normalize("../x") == str(tmp_path.parent / "x")  # a local path may go up: it is the user's own disk
    assert check_uri("s3://bucket/a/b") == "s3://bucket/a/b"


@pytest.mark.parametrize("kind", ["file-uri", "fsspec-memory"])
def test_upload_download_round_trip(tmp_path, memory_root, kind):
    src = make_folder(tmp_path / "src")
    remote = f"file://{tmp_path}/remote/art" if kind == "file-uri" else f"{memory_root}/art"
    import pyarrow.fs

    fs, _ = filesystem(remote)
    assert isinstance(fs, pyarrow.fs.LocalFileSystem if kind == "file-uri" else pyarrow.fs.PyFileSystem)
    assert not exists(remote)
    upload_dir(src, remote)
    assert exists(remote) and exists(join(remote, "manifest.json"))
    out = download_dir(remote, tmp_path / "out")
    for rel in ("manifest.json", "tokenizer/vocab.txt", "model.safetensors"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()


def test_local_artifact_caches_by_manifest_and_refreshes(tmp_path, memory_root):
    remote = f"{memory_root}/two-tower"
    upload_dir(make_folder(tmp_path / "v1"), remote)
    cache = tmp_path / "cache"
    first = local_artifact(remote, cache)
    assert first.parent == cache and (first / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert local_artifact(remote, cache) == first  # unchanged manifest: no download
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    v2 = make_folder(tmp_path / "v2", manifest='{"v": 2}')
    (v2 / "model.safetensors").write_bytes(b"new weights")
    upload_dir(v2, remote)
    again = local_artifact(remote, cache)
    assert again == first and (again / "manifest.json").read_text() == '{"v": 2}'
    assert (again / "model.safetensors").read_bytes() == b"new weights"
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # staging folders cleaned up


def test_local_artifact_of_a_local_path_is_that_path(tmp_path):
    folder = make_folder(tmp_path / "a")
    assert local_artifact(str(folder)) == folder


def test_local_artifact_without_manifest_is_an_error(tmp_path, memory_root):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("1")
    upload_dir(tmp_path / "x", f"{memory_root}/x")
    with pytest.raises(StorageError, match="manifest.json"):
        local_artifact(f"{memory_root}/x", tmp_path / "cache")
    with pytest.raises(StorageError, match="traversal"):
        local_artifact(f"{memory_root}/x/../x", tmp_path / "cache")


def test_a_run_cannot_leave_its_storage(tmp_path):
    """The training driver builds ``<storage>/<name>`` with ``join``: traversal in either is a spec error."""
    from lmrec.config.base import SpecError
    from lmrec.config.train import TrainSpec
    from lmrec.training.ray_train import run_location

    ok = TrainSpec.model_validate({"name": "run-1", "scaling": {"storage_path": f"file://{tmp_path}/runs"}})
    assert run_location(ok, resume=True) == (f"file://{tmp_path}/runs", "run-1")
    local = TrainSpec.model_validate({"name": "run-1", "scaling": {"storage_path": str(tmp_path / "runs")}})
    assert run_location(local, resume=True) == (str(tmp_path / "runs"), "run-1")
    for name, storage in (("../escape", str(tmp_path)), ("a/b", str(tmp_path)), ("run", "s3://bucket/x/../y")):
        bad = TrainSpec.model_validate({"name": name, "scaling": {"storage_path": storage}})
        with pytest.raises(SpecError):
            run_location(bad, resume=True)
