"""Packaged encoders: slices joined, unpacked into the cache, weights checked against the publisher's SHA-256."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from lmrec.models import packaged
from lmrec.models.packaged import PackagedEncoder, PackagedEncoderError


def _sliced_zip(tmp_path, weights: bytes, n: int = 3):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("enc/model.safetensors", weights)
        zf.writestr("enc/config.json", "{}")
        zf.writestr("enc/desktop.ini", "[.ShellClassInfo]")
    blob = buf.getvalue()
    step = -(-len(blob) // n)
    paths = []
    for i in range(n):
        p = tmp_path / f"enc.zip.{i + 1:03d}"
        p.write_bytes(blob[i * step:(i + 1) * step])
        paths.append(p)
    return paths


@pytest.fixture
def fake(tmp_path, monkeypatch):
    weights = b"pretend weights" * 1000
    slices = _sliced_zip(tmp_path, weights)

    def install(sha: str):
        enc = PackagedEncoder("org/fake-encoder", ("a", "b", "c"), "enc", sha, len(weights))
        monkeypatch.setitem(packaged.PACKAGED, "fake-encoder", enc)
        monkeypatch.setattr(packaged, "_slices", lambda e: slices)
        return enc

    return install, hashlib.sha256(weights).hexdigest(), tmp_path / "cache"


def test_joined_unpacked_and_verified(fake):
    install, sha, cache = fake
    install(sha)
    path = packaged.packaged_path("fake-encoder", cache)
    assert path == cache / "encoders" / "enc"
    assert (path / "model.safetensors").read_bytes() == b"pretend weights" * 1000
    assert (path / "config.json").exists() and not (path / "desktop.ini").exists()
    assert packaged.packaged_path("org/fake-encoder", cache) == path  # the hub name finds it too


def test_weights_not_the_publishers_are_refused(fake):
    install, sha, cache = fake
    install("0" * 64)
    with pytest.raises(PackagedEncoderError, match="refusing"):
        packaged.packaged_path("fake-encoder", cache)
    assert not (cache / "encoders" / "enc").exists()


def test_other_names_pass_through():
    assert packaged.resolve("bert-base-uncased") == "bert-base-uncased"
    assert packaged.resolve("/some/local/folder") == "/some/local/folder"
