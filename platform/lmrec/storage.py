"""Where runs live: a local folder, a shared-filesystem mount or a URI, resolved the way Ray Train resolves
``RunConfig.storage_path``.

A location is either a local path (``/mnt/shared/lmrec``, ``runs``; ``~`` expanded, made absolute) or a URI
(``s3://bucket/lmrec``, ``gs://…``, ``file:///mnt/shared/lmrec``, ``hdfs://…``). URIs go through
``pyarrow.fs.FileSystem.from_uri`` exactly as Ray Train does, so a ``scaling.storage_path`` that Ray can write
checkpoints to is one lmrec can write artifacts to and Serve can read them from. Schemes pyarrow does not know
(``memory://``, ``abfs://``, ``gcs`` through gcsfs, …) are served by the matching fsspec implementation wrapped in
``pyarrow.fs.PyFileSystem``, which is also what Ray accepts as ``RunConfig(storage_filesystem=...)``.

Serving needs a folder on local disk (safetensors are memory-mapped): ``local_artifact`` downloads a remote
artifact into a cache keyed by its URI and refreshes it when the remote ``manifest.json`` changes. The loaders
then verify every file's sha256 against that manifest, as for a local folder.

Locations are checked for path traversal: a URI with a ``..`` (or ``.``) segment, a backslash or a NUL is
rejected, and so is a remote listing entry that would land outside the download folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

MANIFEST = "manifest.json"


class StorageError(ValueError):
    """A storage location is malformed, escapes its root, or cannot be read."""


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _check_segments(text: str, what: str) -> None:
    if "\\" in text or "\x00" in text:
        raise StorageError(f"{what} {text!r}: backslashes and NUL are not allowed")
    if any(seg in ("..", ".") for seg in text.split("/")):
        raise StorageError(f"{what} {text!r}: '.' and '..' segments are not allowed (path traversal)")


def check_uri(uri: str) -> str:
    """``uri`` if it is a well-formed URI without traversal; raise ``StorageError`` otherwise."""
    parts = urlsplit(uri)
    if not parts.scheme or not (parts.netloc + parts.path).strip("/"):
        raise StorageError(f"{uri!r} is not a URI (scheme://[bucket]/path)")
    _check_segments(parts.netloc + parts.path, "URI")
    return uri


def normalize(location: str | os.PathLike) -> str:
    """A local path made absolute (``~`` expanded), or a checked URI. Traversal in a URI is an error."""
    text = str(location)
    if is_uri(text):
        return check_uri(text)
    return str(Path(text).expanduser().resolve())


def join(base: str, *names: str) -> str:
    """``base/names…`` where each name is one plain path segment (a run name, ``artifact``, ``epoch_0001``)."""
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            raise StorageError(f"{name!r} is not a single path segment (no '/', '.' or '..')")
        _check_segments(name, "name")
    base = normalize(base)
    return "/".join([base.rstrip("/"), *names])


def filesystem(location: str):
    """``(pyarrow FileSystem, path on it)`` for a normalized location (``normalize``)."""
    import pyarrow
    import pyarrow.fs

    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), location
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except pyarrow.ArrowInvalid:
        pass  # a scheme pyarrow has no native filesystem for: ask fsspec
    import fsspec

    protocol = urlsplit(location).scheme
    try:
        fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        raise StorageError(f"{location}: no filesystem for scheme {protocol!r} ({e})") from None
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), fs._strip_protocol(location)


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = filesystem(normalize(location))
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def upload_dir(local_dir: str | Path, location: str) -> str:
    """Copy a local folder to ``location`` (local or URI); returns the normalized location."""
    import pyarrow.fs

    location = normalize(location)
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local_dir), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)
    return location


def _read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str | None:
    """The UTF-8 text of the file at ``location`` (local or URI); ``None`` when there is no such file."""
    import pyarrow.fs

    fs, path = filesystem(normalize(location))
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    return _read_bytes(fs, path).decode("utf-8")


def write_text(location: str, text: str) -> str:
    """Write ``text`` (UTF-8) to the file at ``location`` (local or URI), creating its folder."""
    location = normalize(location)
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))
    return location


def download_dir(location: str, local_dir: str | Path) -> Path:
    """Copy every file under ``location`` into ``local_dir``; entries that would leave it are rejected."""
    import pyarrow.fs

    fs, root = filesystem(normalize(location))
    root = root.rstrip("/")
    target = Path(local_dir).resolve()
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    if not infos and fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        raise StorageError(f"{location}: not found")
    for info in infos:
        if info.type != pyarrow.fs.FileType.File:
            continue
        rel = info.path[len(root):].lstrip("/") if info.path.startswith(root) else None
        if not rel:
            raise StorageError(f"{location}: listing entry {info.path!r} is outside the folder")
        _check_segments(rel, "listed file")
        dest = (target / PurePosixPath(rel)).resolve()
        if not dest.is_relative_to(target):
            raise StorageError(f"{location}: listed file {rel!r} escapes the download folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_read_bytes(fs, info.path))
    return target


def cache_dir() -> Path:
    """``$LMREC_CACHE_DIR/artifacts`` or ``~/.cache/lmrec/artifacts``."""
    env = os.environ.get("LMREC_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "lmrec") / "artifacts"


def local_artifact(location: str | os.PathLike, cache: str | Path | None = None) -> Path:
    """A local folder holding the artifact at ``location``.

    A local path is returned as is (absolute). A URI is downloaded into ``<cache>/<sha256(uri)[:20]>/`` unless
    the cached copy's ``manifest.json`` is byte-identical to the remote one (the manifest lists the sha256 of
    every other file, which the artifact loaders check). A changed artifact is downloaded beside the cached one
    and swapped in by a rename, so a reader never sees a half-written folder.
    """
    location = normalize(location)
    if not is_uri(location):
        return Path(location)
    fs, path = filesystem(location)
    try:
        remote_manifest = _read_bytes(fs, f"{path.rstrip('/')}/{MANIFEST}")
    except (OSError, FileNotFoundError) as e:
        raise StorageError(f"{location}: no readable {MANIFEST} ({e})") from None
    root = Path(cache) if cache is not None else cache_dir()
    dest = root / hashlib.sha256(location.encode()).hexdigest()[:20]
    cached = dest / MANIFEST
    if cached.is_file() and cached.read_bytes() == remote_manifest:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=root))
    try:
        download_dir(location, staging)
        if (staging / MANIFEST).read_bytes() != remote_manifest:
            raise StorageError(f"{location}: the artifact changed while it was downloaded; try again")
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}-old-", dir=root))
            dest.rename(old / "a")
        staging.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
