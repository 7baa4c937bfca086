"""Where a named dataset's files come from: a local data folder, the user's cache, or the publisher.

Resolution order for ``resolve_dataset_dir(name)``:
1. ``$LMREC_DATA_DIR/<name>/`` (developers and CI point this at a shared copy);
2. the cache, ``$LMREC_CACHE_DIR/<name>/`` or ``~/.cache/lmrec/<name>/``;
3. a download of the publisher's zip into the cache, checked against the published MD5 before unpacking.

A folder counts only when it holds every file the loader needs (a partial copy is skipped, and named in the
error if nothing else works). Downloads go to a temporary file that is renamed into place only after the
checksum matches, and unpack into a temporary folder that is renamed into place whole, so an interrupted or
concurrent download (several Ray workers) never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lmrec.data.parsing import find_file
from lmrec.data.schema import DataError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class DatasetSource:
    """How to find one dataset: folder names it may sit under, the files a complete copy has, its archive.

    md5: the publisher's checksum of ``archive``; None means "fetch ``<archive>.md5`` next to the archive".
    manual: for datasets with no download, where to get the files.
    """

    name: str
    folders: tuple[str, ...]
    required_files: tuple[str, ...]
    archive: str | None = None
    md5: str | None = None
    manual: str | None = None


SOURCES: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource("ml-100k", ("ml-100k",), ("u.data", "u.item", "u.user"), "ml-100k.zip",
                      "0e33842e24a9c977be4e0107933c0723"),
        DatasetSource("ml-1m", ("ml-1m",), ("ratings.dat", "movies.dat", "users.dat"), "ml-1m.zip",
                      "c4d9eecfca2ab87c1945afe126590906"),
        DatasetSource("ml-latest-small", ("ml-latest-small",), ("ratings.csv", "movies.csv", "tags.csv"),
                      "ml-latest-small.zip"),
        DatasetSource(
            "amazon-magazine",
            ("amazon-magazine", "amazon-2018-magazine-subscriptions"),
            ("Magazine_Subscriptions_5.json.gz", "meta_Magazine_Subscriptions.json.gz"),
            manual=(
                "Amazon Review Data (2018) has no automatic download: get the 'Magazine_Subscriptions' 5-core "
                "reviews and metadata files from https://nijianmo.github.io/amazon/index.html (Ni, Li & McAuley, "
                "EMNLP 2019) and put them in $LMREC_DATA_DIR/amazon-magazine/"
            ),
        ),
    )
}  # fmt: skip


def dataset_source(name: str) -> DatasetSource:
    """The source record for ``name``; an unknown name is a ``DataError`` listing the valid ones."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(SOURCES)}")
    return SOURCES[name]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The dataset cache: ``cache_dir``, else ``$LMREC_CACHE_DIR``, else ``~/.cache/lmrec``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LMREC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmrec"


def missing_files(folder: Path, source: DatasetSource) -> list[str]:
    """The required files ``folder`` lacks (a gzipped twin counts as present)."""
    return [f for f in source.required_files if find_file(folder, f) is None]


def resolve_dataset_dir(
    name: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    download: bool = True,
) -> Path:
    """The folder holding ``name``'s files, downloading it into the cache when no local copy exists.

    data_dir: look only here (a folder holding ``<name>/``, or the dataset folder itself) instead of the
    resolution chain; nothing is downloaded then.
    """
    source = dataset_source(name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        candidates = [root / folder for folder in source.folders] + [root]
        for folder in candidates:
            if folder.is_dir() and not missing_files(folder, source):
                return folder
        partial = [f"{c} lacks {missing_files(c, source)}" for c in candidates if c.is_dir() and c != root]
        detail = "; ".join(partial) or f"no folder {source.folders[0]!r} there"
        raise DataError(f"{name}: no complete copy in {root} ({detail})")

    skipped = []
    env_dir = os.environ.get("LMREC_DATA_DIR")
    roots = ([Path(env_dir).expanduser()] if env_dir else []) + [cache_root(cache_dir)]
    for root in roots:
        for folder in (root / f for f in source.folders):
            if folder.is_dir():
                lacking = missing_files(folder, source)
                if not lacking:
                    return folder
                skipped.append(f"{folder} lacks {lacking}")
    if source.archive is None or not download:
        reason = source.manual or f"no local copy of {name} and download=False"
        where = f" (looked in: {'; '.join(skipped)})" if skipped else ""
        raise DataError(f"{reason}{where}")
    try:
        return download_dataset(name, cache_dir=cache_dir, base_url=base_url)
    except DataError as err:
        if skipped:
            raise DataError(f"{err} (incomplete local copies: {'; '.join(skipped)})") from None
        raise


def download_dataset(
    name: str, *, cache_dir: str | Path | None = None, base_url: str | None = None, md5: str | None = None
) -> Path:
    """Download ``name``'s zip from the publisher, verify its MD5, unpack it into the cache; returns the folder.

    base_url: where the zip lives (default ``$LMREC_DATASET_BASE_URL``, else GroupLens). md5: the expected
    checksum (default: the published one).
    """
    source = dataset_source(name)
    if source.archive is None:
        raise DataError(source.manual or f"{name} has no download")
    base = (base_url or os.environ.get("LMREC_DATASET_BASE_URL") or GROUPLENS_URL).rstrip("/")
    url = f"{base}/{source.archive}"
    expected = (md5 or source.md5 or published_md5(f"{url}.md5")).lower()
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / source.archive
    _download_verified(url, archive, expected)
    try:
        return _unpack(archive, root / name, source)
    finally:
        archive.unlink(missing_ok=True)  # the unpacked folder is the cache; the zip is not needed again


def published_md5(url: str) -> str:
    """The checksum in a publisher's ``.md5`` file ("<md5>  file" or "MD5 (file) = <md5>")."""
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"could not fetch the published checksum {url}: {err}") from None
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if match is None:
        raise DataError(f"{url} does not contain an MD5 checksum: {text[:80]!r}")
    return match.group(0)


def _download_verified(url: str, target: Path, expected_md5: str) -> None:
    """Stream ``url`` to a temp file beside ``target`` while hashing it; rename into place only if it matches."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    from tqdm.auto import tqdm  # imported here: only downloads need it, and it costs ~0.15 s

    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            # disable=None: the bar shows on a terminal and stays out of logs and CI output.
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}", disable=None) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != expected_md5:
            raise DataError(
                f"checksum mismatch for {url}: MD5 {actual}, expected {expected_md5}; the download was deleted "
                "(a corrupted transfer or a changed file: retry, or check the base URL)"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"could not download {url}: {err} (set LMREC_DATA_DIR to a folder holding the dataset, "
            "or LMREC_DATASET_BASE_URL to a reachable mirror)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _unpack(archive: Path, target: Path, source: DatasetSource) -> Path:
    """Extract ``archive`` beside ``target`` and move its top folder (``ml-100k/`` ...) to ``target``."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                # Refuse paths that would land outside the work folder ("../", absolute names).
                if not (work / member).resolve().is_relative_to(work.resolve()):
                    raise DataError(f"{archive.name}: unsafe path {member!r} in the archive")
            zf.extractall(work)
        tops = [p for p in work.iterdir() if p.name != "__MACOSX"]  # resource forks from zips made on macOS
        unpacked = tops[0] if len(tops) == 1 and tops[0].is_dir() else work
        lacking = missing_files(unpacked, source)
        if lacking:
            raise DataError(f"{archive.name}: the archive lacks {lacking}")
        if target.exists():
            if not missing_files(target, source):
                return target  # another process finished first; its copy is as good as ours
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(unpacked, target)
        return target
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive.name}: not a valid zip archive ({err})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
