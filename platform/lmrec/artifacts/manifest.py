"""The manifest every artifact kind shares: ``manifest.json`` with the format (kind and version), the kind's own
fields, and the sha256 of every other file in the folder.

``verify_artifact`` checks the format and every hash (and that no file was added or removed) before a loader reads
any weights; manifest entries must be plain relative paths inside the folder (no ``..``, no absolute path) and the
folder may hold no symbolic links, so an artifact cannot make a loader read a file outside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact folder is incomplete, altered (sha256 mismatch) or of an unknown format."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_member_manifest(root: Path, fmt: str, *, user_ids, item_ids, item_texts: list[str] | None, n_items: int,
                          fields: dict, metrics: dict | None = None, params: dict | None = None,
                          fingerprint: str | None = None) -> None:
    """``id_maps.json`` and the manifest (format, ``fields``, ``params``, the dataset fingerprint, the numeric
    ``metrics``, sha256 of every file) of a collaborative member artifact (MF, EASE, item-kNN): written after its
    arrays, so the manifest covers them."""
    fields = {**fields, "params": params or {}, "dataset_fingerprint": fingerprint,
              "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}}
    plain = lambda ids: [v.item() if hasattr(v, "item") else v for v in list(ids)]  # noqa: E731
    texts = list(item_texts) if item_texts is not None else [""] * n_items
    (root / "id_maps.json").write_text(json.dumps(
        {"user_ids": plain(user_ids), "item_ids": plain(item_ids), "item_texts": texts}))
    write_manifest(root, fmt, fields)


def is_plain_relative(name: str) -> bool:
    """A manifest entry that names a file inside its folder: relative, no ``..``, no backslash or NUL byte."""
    pure = PurePosixPath(name)
    return bool(name) and "\\" not in name and "\x00" not in name and not pure.is_absolute() and ".." not in pure.parts


def _listed_files(root: Path) -> list[str]:
    manifest = root / MANIFEST
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != manifest)


def verify_artifact(directory: str | Path, expected_format: str) -> dict:
    """Return the manifest after checking the format and the sha256 of every file; raise ``ArtifactError``.

    Shared by every artifact kind: ``expected_format`` names the kind (``lmrec.<kind>/<version>``).
    """
    root = Path(directory)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{root}: unreadable {MANIFEST} ({e})") from None
    if manifest.get("format") != expected_format:
        raise ArtifactError(
            f"{root}: unknown artifact format {manifest.get('format')!r} (expected {expected_format})"
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ArtifactError(f"{root}: {MANIFEST} has no 'files' mapping")
    for rel in listed:
        if not is_plain_relative(rel):
            raise ArtifactError(f"{root}: manifest entry {rel!r} is not a relative path inside the artifact")
    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
    if links:  # a link could point the loader at any file on the host
        raise ArtifactError(f"{root}: symbolic links are not allowed in an artifact: {links}")
    present = set(_listed_files(root))
    if present != set(listed):
        raise ArtifactError(f"{root}: files differ from the manifest: missing {sorted(set(listed) - present)}, "
                            f"unlisted {sorted(present - set(listed))}")
    for rel, digest in listed.items():
        actual = sha256_file(root / rel)
        if actual != digest:
            raise ArtifactError(f"{root / rel}: sha256 {actual} does not match the manifest ({digest})")
    return manifest


def write_manifest(root: str | Path, fmt: str, fields: dict) -> dict:
    """Write ``manifest.json``: ``fmt``, the creation time, ``fields`` and the sha256 of every file already in
    ``root`` (write the manifest last). Returns it."""
    root = Path(root)
    manifest = {"format": fmt, "created_unix": int(time.time()), **fields,
                "files": {rel: sha256_file(root / rel) for rel in _listed_files(root)}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def artifact_format(directory: str | Path) -> str | None:
    """The ``format`` an artifact folder's manifest declares (unverified: for choosing the loader), or None."""
    try:
        return json.loads((Path(directory) / MANIFEST).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
