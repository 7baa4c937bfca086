"""Ensemble artifact: the fusion weights ``lmrec ensemble`` fitted, and the member artifacts they belong to.

Layout::

    manifest.json   format, name, the job spec, dataset fingerprint, test metrics, sha256 of ensemble.json
    ensemble.json   the ``FusedEnsemble.save_weights`` JSON: ranking ``weights`` (what Serve fuses), ``rating_weights``,
                    member ``artifacts`` (locations) and ``artifact_sha256`` (sha256 of each member's manifest.json)

Loading checks the manifest as for every artifact kind (``verify_artifact``: format, every sha256, no file added or
removed, no link), then that each member location is an absolute path or a URI with no ``.`` or ``..`` segment (so
an ensemble cannot point the loader at a path relative to wherever it runs), and that each member's manifest.json
still has the recorded sha256: weights fitted for one pair of members mean nothing for a retrained one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lmrec.artifacts.manifest import ArtifactError, sha256_file, verify_artifact
from lmrec.storage import StorageError, check_uri, is_uri

ENSEMBLE_FORMAT = "lmrec.ensemble/1"
WEIGHTS_FORMAT = "lmrec.ensemble_weights/1"  # ensemble.json (``FusedEnsemble.save_weights``)
MANIFEST = "manifest.json"
WEIGHTS_FILE = "ensemble.json"


@dataclass
class EnsembleArtifact:
    """A verified ensemble artifact: fusion weights and the members' locations and manifest hashes."""

    manifest: dict
    weights: dict[str, float]  # ranking weights: what Serve's fusion uses
    rating_weights: dict[str, float]
    members: dict[str, str]  # member name -> artifact location (absolute path or URI)
    member_sha256: dict[str, str]  # member name -> sha256 of its manifest.json when the weights were fitted
    metrics: dict[str, float]
    sha256: str  # of this artifact's manifest.json


def check_member_location(location: str) -> str:
    """``location`` if it is a URI or an absolute local path without ``.``/``..`` segments; else ``ArtifactError``."""
    text = str(location)
    if is_uri(text):
        try:
            return check_uri(text)
        except StorageError as e:
            raise ArtifactError(f"member location: {e}") from None
    if "\\" in text or "\x00" in text or any(seg in (".", "..") for seg in text.split("/")):
        raise ArtifactError(f"member location {text!r}: '.', '..', backslashes and NUL are not allowed")
    if not PurePosixPath(text).is_absolute():
        raise ArtifactError(f"member location {text!r} is relative: an ensemble names its members by absolute path "
                            f"or URI")
    return text


def member_manifest_sha256(location: str) -> str:
    """sha256 of the manifest.json of the artifact at ``location`` (local folder or URI)."""
    from lmrec.storage import filesystem, normalize

    fs, path = filesystem(normalize(location))
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{MANIFEST}") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, FileNotFoundError) as e:
        raise ArtifactError(f"{location}: no readable {MANIFEST} ({e})") from None


def save_ensemble_artifact(directory: str | Path, ensemble, *, members: dict[str, str],
                           member_sha256: dict[str, str], name: str, config: dict | None = None,
                           fingerprint: str = "", metrics: dict[str, float] | None = None) -> Path:
    """Write the artifact folder (see module docstring); ``members`` must already be absolute paths or URIs.
    ``ensemble``: a fitted ``lmrec.strategies.ensemble.FusedEnsemble`` (its ``members`` and ``save_weights``)."""
    if set(members) != set(ensemble.members) or set(member_sha256) != set(ensemble.members):
        raise ValueError(f"members {sorted(members)} / hashes {sorted(member_sha256)} differ from the ensemble's "
                         f"{sorted(ensemble.members)}")
    for location in members.values():
        check_member_location(location)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    ensemble.save_weights(root / WEIGHTS_FILE, artifacts=members, metrics=metrics, artifact_sha256=member_sha256)
    manifest = {
        "format": ENSEMBLE_FORMAT,
        "name": name,
        "created_unix": int(time.time()),
        "config": config or {},
        "dataset_fingerprint": fingerprint,
        "metrics": metrics,
        "files": {WEIGHTS_FILE: sha256_file(root / WEIGHTS_FILE)},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return root


def load_ensemble_artifact(location: str | Path, *, check_members: bool = True) -> EnsembleArtifact:
    """Verify and read an ensemble artifact (folder or URI); ``check_members``: members' manifests unchanged."""
    from lmrec.storage import local_artifact

    root = local_artifact(location)
    manifest = verify_artifact(root, ENSEMBLE_FORMAT)
    try:
        doc = load_weights(root / WEIGHTS_FILE)
    except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
        raise ArtifactError(f"{root / WEIGHTS_FILE}: {e}") from None
    weights, members = doc.get("weights") or {}, doc.get("artifacts") or {}
    pins = doc.get("artifact_sha256") or {}
    if not weights or set(weights) != set(members) or set(pins) != set(members):
        raise ArtifactError(f"{root / WEIGHTS_FILE}: weights for {sorted(weights)}, artifacts for {sorted(members)} "
                            f"and hashes for {sorted(pins)} must name the same members")
    for location_ in members.values():
        check_member_location(location_)
    art = EnsembleArtifact(
        manifest=manifest, weights={m: float(w) for m, w in weights.items()},
        rating_weights={m: float(w) for m, w in (doc.get("rating_weights") or {}).items()}, members=dict(members),
        member_sha256=dict(pins), metrics=dict(doc.get("metrics") or {}), sha256=sha256_file(root / MANIFEST))
    if check_members:
        for member, location_ in art.members.items():
            actual = member_manifest_sha256(location_)
            if actual != art.member_sha256[member]:
                raise ArtifactError(
                    f"member {member} at {location_} changed since the ensemble was fitted (manifest sha256 "
                    f"{actual[:12]}, fitted for {art.member_sha256[member][:12]}): run `lmrec ensemble` again")
    return art


def load_weights(path: str | Path) -> dict:
    """Read a weights JSON written by ``FusedEnsemble.save_weights`` (checks the format tag)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: not an ensemble weights file (format {doc.get('format')!r}, expected {WEIGHTS_FORMAT})")
    return doc
