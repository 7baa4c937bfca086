"""Checkpoint integrity: every rank seals what it wrote with a manifest of sha256s; resume loads only sealed folders.

Ray Train copies each rank's checkpoint files straight into ``<run>/epoch_NNNN`` and registers the checkpoint
only once every rank has reported, so a worker killed mid-upload leaves a torn folder that Ray does not hand
out. The manifest guards everything Ray cannot see: a folder truncated or altered on storage after it was
registered, a copy made by hand, a checkpoint path given directly. A rank writes its manifest after its own
files are complete; ``verify_checkpoint`` accepts a folder only when rank 0's manifest is there, every rank that
manifest expects has sealed its part, and every listed file hashes to its recorded sha256. The manifest is
JSON, and the torch checkpoint it guards is read with ``weights_only=True``: nothing in a checkpoint is executed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmrec.artifacts.manifest import is_plain_relative, sha256_file

FORMAT = "lmrec.checkpoint/1"
_MANIFEST_RE = re.compile(r"lmrec_manifest\.rank(\d+)\.json")


class CheckpointIntegrityError(ValueError):
    """A checkpoint folder is incomplete (a rank's manifest or file missing) or altered (sha256 mismatch)."""


def manifest_name(rank: int) -> str:
    return f"lmrec_manifest.rank{rank}.json"


def safe_relative(name: str, where: Path) -> Path:
    """``where / name`` for a manifest entry that is a plain relative path inside ``where`` (no ``..``, no root)."""
    if not is_plain_relative(name):
        raise CheckpointIntegrityError(f"{where}: manifest entry {name!r} is not a relative path inside the folder")
    return where / name


def write_manifest(directory: str | Path, rank: int, writer_ranks: list[int]) -> Path | None:
    """Seal the files this rank wrote into ``directory`` (nothing written: no manifest). Call after the files.

    ``writer_ranks``: the ranks whose parts make up a complete checkpoint (rank 0's manifest records it).
    """
    root = Path(directory)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and not _MANIFEST_RE.fullmatch(p.name))
    if not files:
        return None
    manifest = {"format": FORMAT, "rank": rank, "writer_ranks": sorted(writer_ranks),
                "files": {rel: sha256_file(root / rel) for rel in files}}
    path = root / manifest_name(rank)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)  # a manifest is either absent or complete
    return path


def _read(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointIntegrityError(f"{path}: unreadable checkpoint manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointIntegrityError(f"{path}: not an lmrec checkpoint manifest ({FORMAT})")
    return manifest


def verify_checkpoint(directory: str | Path) -> dict[int, dict]:
    """Check a checkpoint folder (see the module docstring); return the manifests by rank or raise."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointIntegrityError(f"{root}: no such checkpoint folder")
    first = root / manifest_name(0)
    if not first.is_file():
        raise CheckpointIntegrityError(f"{root}: no {first.name}: the checkpoint was never completed")
    manifests = {0: _read(first)}
    for rank in manifests[0].get("writer_ranks", [0]):
        path = root / manifest_name(int(rank))
        if not path.is_file():
            raise CheckpointIntegrityError(f"{root}: rank {rank} never sealed its part ({path.name} missing)")
        manifests[int(rank)] = manifests.get(int(rank)) or _read(path)
    for manifest in manifests.values():
        for rel, digest in manifest["files"].items():
            path = safe_relative(rel, root)
            if path.is_symlink() or not path.is_file():
                raise CheckpointIntegrityError(f"{path}: listed in the manifest but missing")
            actual = sha256_file(path)
            if actual != digest:
                raise CheckpointIntegrityError(f"{path}: sha256 {actual[:12]}… does not match the manifest "
                                               f"({str(digest)[:12]}…): torn or altered checkpoint")
    return manifests
