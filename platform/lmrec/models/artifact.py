"""Serving artifact of a trained two-tower model: safetensors + tokenizer + JSON, never pickle.

Layout of an artifact folder::

    manifest.json             format, model arguments, encoder settings (pooling, normalisation, prompts;
                              absent from artifacts written before they existed: mean/CLS pooling of the raw
                              text), training config, dataset fingerprint, metrics, data_cutoff (newest
                              interaction timestamp trained on), lineage (parent artifact of an incremental
                              fine-tune), and the sha256 of every other file
    model.safetensors         TwoTowerModel state dict (encoder, towers, heads, item-text cache, histories)
    item_embeddings.safetensors  precomputed item/user vectors, item biases, interest-space vectors
    encoder_config.json       the backbone's HF config (rebuilds the architecture without the hub)
    id_maps.json              raw user/item ids in index order (and item_texts, when the writer passed them)
    tokenizer/                the tokenizer files

``load_artifact`` checks every hash (and that no file was added or removed) before it reads any weights; manifest
entries must be plain relative paths inside the folder (no ``..``, no absolute path) and the folder may hold no
symbolic links, so an artifact cannot make the loader read a file outside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmrec.models.encoder import encoder_from_config
from lmrec.models.st_settings import EncoderSettings
from lmrec.models.two_tower import TwoTowerModel, TwoTowerRecommender

FORMAT = "lmrec.two_tower/1"
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
    manifest = {"format": fmt, "created_unix": int(time.time()), **fields,
                "files": {rel: sha256_file(root / rel) for rel in _listed_files(root)}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def is_plain_relative(name: str) -> bool:
    """A manifest entry that names a file inside its folder: relative, no ``..``, no backslash or NUL byte."""
    pure = PurePosixPath(name)
    return bool(name) and "\\" not in name and "\x00" not in name and not pure.is_absolute() and ".." not in pure.parts


def _listed_files(root: Path) -> list[str]:
    manifest = root / MANIFEST
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != manifest)


def model_args(model: TwoTowerModel) -> dict:
    """Constructor arguments that rebuild ``model``'s architecture."""
    return {
        "n_users": model.n_users,
        "n_items": model.n_items,
        "dim": model.interest_proj.in_features,
        "user_tower": model.user_tower.kind,
        "item_id_embeddings": model.item_tower.id_embedding is not None,
        "user_id_embeddings": model.user_tower.id_embedding is not None,
        "user_text": bool(model.user_text.shape[0]),
        "max_history": model.max_history,
        "ranking_head": model.ranking_head,
        "rating_user": model.rating_user,
        "interest_bias": model.interest_bias,
        "pooling": model.encoder.pooling,
    }


def _plain(ids: np.ndarray) -> list:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(ids).tolist()]


def save_artifact(
    directory: str | Path,
    model: TwoTowerModel,
    tokenizer,
    *,
    spec: dict,
    fingerprint: str,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    metrics: dict | None = None,
    data_cutoff: int | None = None,
    lineage: dict | None = None,
    item_texts: list[str] | None = None,
) -> Path:
    """Write the artifact folder (see module docstring); returns its path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "model.safetensors"))
    tables = {k: v.detach().float().cpu().contiguous() for k, v in model.precompute().items()}
    save_file(tables, str(root / "item_embeddings.safetensors"))
    (root / "encoder_config.json").write_text(json.dumps(model.encoder.backbone.config.to_dict(), indent=1))
    # item_texts (optional, in item order): Serve shows and filters on them when no other member carries texts
    ids = {"user_ids": _plain(user_ids), "item_ids": _plain(item_ids)}
    if item_texts is not None:
        ids["item_texts"] = [str(t) for t in item_texts]
    (root / "id_maps.json").write_text(json.dumps(ids))
    tokenizer.save_pretrained(str(root / "tokenizer"))
    files = {rel: sha256_file(root / rel) for rel in _listed_files(root)}
    manifest = {
        "format": FORMAT,
        "created_unix": int(time.time()),
        "model_args": model_args(model),
        # resolved (never "auto"): serving encodes as training did without the encoder's folder or the hub
        "encoder": model.encoder.settings.to_dict(),
        "config": spec,
        "dataset_fingerprint": fingerprint,
        "data_cutoff": data_cutoff,
        "lineage": lineage or {},
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        "files": files,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return root


def verify_artifact(directory: str | Path, expected_format: str = FORMAT) -> dict:
    """Return the manifest after checking the format and the sha256 of every file; raise ``ArtifactError``.

    Shared by every artifact kind (two-tower, MF): ``expected_format`` names the kind.
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


@dataclass
class LoadedArtifact:
    """A verified artifact: the model (eval mode), its recommender view, tokenizer, id maps and manifest."""

    model: TwoTowerModel
    recommender: TwoTowerRecommender
    tokenizer: object
    manifest: dict
    user_ids: list
    item_ids: list
    embeddings: dict[str, torch.Tensor]
    item_texts: list[str] | None = None


def load_artifact(directory: str | Path, device: str | torch.device = "cpu") -> LoadedArtifact:
    """Verify hashes, rebuild the architecture from JSON, load safetensors weights (no pickle anywhere)."""
    from transformers import AutoTokenizer

    root = Path(directory)
    manifest = verify_artifact(root)
    args = dict(manifest["model_args"])
    pooling = args.pop("pooling")  # kept in model_args for readers that predate the "encoder" entry
    settings = EncoderSettings.from_dict(manifest.get("encoder", {"pooling": pooling}))
    encoder = encoder_from_config(json.loads((root / "encoder_config.json").read_text()), settings)
    model = TwoTowerModel(encoder, **args)
    state = load_file(str(root / "model.safetensors"))
    model.history = torch.empty_like(state["history"])  # data-dependent width
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    ids = json.loads((root / "id_maps.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    embeddings = load_file(str(root / "item_embeddings.safetensors"))
    # artifacts written before ``model.interest_bias`` carry no interest-score term: it was zero
    embeddings.setdefault("item_interest_bias", torch.zeros(len(embeddings["item_interest"])))
    return LoadedArtifact(
        model=model,
        recommender=TwoTowerRecommender(model, name=manifest["config"].get("name")),
        tokenizer=tokenizer,
        manifest=manifest,
        user_ids=ids["user_ids"],
        item_ids=ids["item_ids"],
        embeddings=embeddings,
        item_texts=ids.get("item_texts"),
    )
