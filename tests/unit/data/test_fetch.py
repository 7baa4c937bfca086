"""Dataset resolution and download against a real HTTP server on 127.0.0.1 serving zips built from the shared
files: download + MD5 check + unpack + load, a wrong checksum rejected, the cache reused without network."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lmrec.data import DataError, download_dataset, load_dataset, resolve_dataset_dir


class _CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def mirror(tmp_path):
    """A GroupLens-like mirror: (folder served over HTTP, base URL, list of requested paths)."""
    served = tmp_path / "mirror"
    served.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def isolated_env(tmp_path, monkeypatch) -> Path:
    """No local data folder and an empty cache, so resolution has to download. Returns the cache folder."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("LMREC_DATA_DIR", str(empty))
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LMREC_DATASET_BASE_URL", raising=False)
    return tmp_path / "cache"


def _zip_folder(source: Path, top: str, target: Path, names: list[str]) -> str:
    """Zip ``names`` from ``source`` under ``top/`` (as GroupLens does); returns the zip's MD5."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in names:
            zf.write(source / name, f"{top}/{name}")
    return hashlib.md5(target.read_bytes()).hexdigest()


def test_download_verify_unpack_load_then_cache(mirror, isolated_env, data_dir, monkeypatch):
    served, base_url, requests = mirror
    names = ["ratings.csv", "movies.csv", "tags.csv", "links.csv", "README.txt"]
    md5 = _zip_folder(data_dir / "ml-latest-small", "ml-latest-small", served / "ml-latest-small.zip", names)
    # The publisher's own .md5 file format (fetched, since there is no published constant for latest-small).
    (served / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {md5}\n")
    monkeypatch.setenv("LMREC_DATASET_BASE_URL", base_url)

    ds = load_dataset("ml-latest-small")
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100_836, 610, 9_742)
    assert sorted(requests) == ["/ml-latest-small.zip", "/ml-latest-small.zip.md5"]
    folder = isolated_env / "ml-latest-small"
    assert ds.meta["source"] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert [p.name for p in isolated_env.iterdir()] == ["ml-latest-small"]  # no zip, temp or partial files left

    # Second call: served from the cache, no request at all (even with the server gone).
    monkeypatch.setenv("LMREC_DATASET_BASE_URL", "http://127.0.0.1:9")
    assert len(load_dataset("ml-latest-small").interactions) == 100_836
    assert len(requests) == 2


def test_wrong_checksum_is_rejected_and_deleted(mirror, isolated_env, data_dir):
    served, base_url, requests = mirror
    names = ["u.data", "u.item", "u.user"]
    # Our zip of the shared files is not GroupLens's zip, so the published MD5 cannot match.
    actual = _zip_folder(data_dir / "ml-100k", "ml-100k", served / "ml-100k.zip", names)
    expected = f"checksum mismatch for {base_url}/ml-100k.zip: MD5 {actual}, expected 0e33842e24a9c977be4e0107933c0723"
    with pytest.raises(DataError, match=f"^{re.escape(expected)}; the download was deleted"):
        resolve_dataset_dir("ml-100k", base_url=base_url)
    assert list(isolated_env.iterdir()) == []
    # With the checksum given explicitly the same zip is accepted, unpacked and loadable.
    folder = download_dataset("ml-100k", base_url=base_url, md5=actual)
    assert folder == isolated_env / "ml-100k" and sorted(p.name for p in folder.iterdir()) == names
    assert len(load_dataset("ml-100k").interactions) == 100_000
    assert requests == ["/ml-100k.zip", "/ml-100k.zip"]


def test_resolution_order_and_failures(tmp_path, isolated_env, mirror, data_dir, monkeypatch):
    served, base_url, requests = mirror
    # LMREC_DATA_DIR/ml-1m lacks ratings.dat (like the shared copy): skipped for the complete cache copy.
    local = Path(str(tmp_path / "no-data")) / "ml-1m"
    local.mkdir()
    cached = isolated_env / "ml-1m"
    cached.mkdir(parents=True)
    for name in ("movies.dat", "users.dat"):
        shutil.copy(data_dir / "ml-1m" / name, local / name)
        shutil.copy(data_dir / "ml-1m" / name, cached / name)
    (cached / "ratings.dat").write_text("1::1193::5::978300760\n")
    assert resolve_dataset_dir("ml-1m", base_url=base_url) == cached
    shutil.copy(cached / "ratings.dat", local / "ratings.dat")
    assert resolve_dataset_dir("ml-1m", base_url=base_url) == local  # LMREC_DATA_DIR comes first
    assert requests == []

    # Nothing local, and the mirror lacks the file: a clear error naming the URL and the incomplete copy.
    (local / "ratings.dat").unlink()
    (cached / "ratings.dat").unlink()
    not_found = rf"could not download {base_url}/ml-1m.zip: HTTP Error 404"
    with pytest.raises(DataError, match=rf"{not_found}.*incomplete local copies: .*lacks \['ratings.dat'\]"):
        resolve_dataset_dir("ml-1m", base_url=base_url)
    with pytest.raises(DataError, match="no local copy of ml-1m and download=False"):
        resolve_dataset_dir("ml-1m", download=False)
    with pytest.raises(DataError, match=r"could not download http://127.0.0.1:9/ml-100k.zip"):
        resolve_dataset_dir("ml-100k", base_url="http://127.0.0.1:9")

    # Amazon has no download: the error says where to get the files.
    with pytest.raises(DataError, match=r"no automatic download.*https://nijianmo.github.io/amazon/index.html"):
        load_dataset("amazon-magazine")
    # ... and it is found under the shared folder's longer name too.
    monkeypatch.setenv("LMREC_DATA_DIR", str(data_dir))
    assert resolve_dataset_dir("amazon-magazine").name == "amazon-2018-magazine-subscriptions"
    with pytest.raises(DataError, match="unknown dataset 'ml-10m'; valid names: ml-100k, ml-1m"):
        resolve_dataset_dir("ml-10m")
