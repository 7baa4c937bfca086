"""Serving artifact of a trained two-tower model: safetensors + tokenizer + JSON, never pickle.

Layout of an artifact folder::

    manifest.json             format, model arguments, encoder settings (pooling, normalisation, prompts;
                              absent from artifacts written before they existed: mean/CLS pooling of the raw
                              text), training config, dataset fingerprint, metrics, data_cutoff (newest
                              interaction timestamp trained on), lineage (parent artifact of an incremental
                              fine-tune), and the sha256 of every other file
    model.safetensors         TwoTowerModel state dict (encoder, towers, heads, item-text cache, histories)
    item_embeddings.safetensors  precomputed item/user vectors, item biases, interest-space vectors
    seen.safetensors          every training (user, item) pair as CSR (seen_indptr, seen_items): what a service
                              excludes from a user's recommendations (absent from artifacts written before it)
    encoder_config.json       the backbone's HF config (rebuilds the architecture without the hub)
    id_maps.json              raw user/item ids in index order (and item_texts, when the writer passed them)
    tokenizer/                the tokenizer files

``load_artifact`` checks the manifest (``lmrec.artifacts.manifest.verify_artifact``: every hash, no file added or
removed, no link) before it reads any weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmrec.artifacts.manifest import ArtifactError, verify_artifact, write_manifest
from lmrec.models.encoder import encoder_from_config
from lmrec.models.st_settings import EncoderSettings
from lmrec.models.two_tower import TwoTowerModel, TwoTowerRecommender

FORMAT = "lmrec.two_tower/1"


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
    seen: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write the artifact folder (see module docstring); returns its path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "model.safetensors"))
    tables = {k: v.detach().float().cpu().contiguous() for k, v in model.precompute().items()}
    save_file(tables, str(root / "item_embeddings.safetensors"))
    if seen is not None:  # (user_idx, item_idx) of the training rows
        users, items = (np.asarray(a, dtype=np.int64) for a in seen)
        order = np.lexsort((items, users))
        save_file({"seen_indptr": torch.from_numpy(np.concatenate(
                       [[0], np.cumsum(np.bincount(users, minlength=model.n_users))]).astype(np.int64)),
                   "seen_items": torch.from_numpy(np.ascontiguousarray(items[order]))}, str(root / "seen.safetensors"))
    (root / "encoder_config.json").write_text(json.dumps(model.encoder.backbone.config.to_dict(), indent=1))
    # item_texts (optional, in item order): Serve shows and filters on them when no other member carries texts
    ids = {"user_ids": _plain(user_ids), "item_ids": _plain(item_ids)}
    if item_texts is not None:
        ids["item_texts"] = [str(t) for t in item_texts]
    (root / "id_maps.json").write_text(json.dumps(ids))
    tokenizer.save_pretrained(str(root / "tokenizer"))
    write_manifest(root, FORMAT, {
        "model_args": model_args(model),
        # resolved (never "auto"): serving encodes as training did without the encoder's folder or the hub
        "encoder": model.encoder.settings.to_dict(),
        "text": {"max_length": (spec.get("model") or {}).get("max_length")},
        "config": spec,
        "dataset_fingerprint": fingerprint,
        "data_cutoff": data_cutoff,
        "lineage": lineage or {},
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
    })
    return root


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
    seen_indptr: np.ndarray | None = None  # every training row as CSR (None: an artifact written before them)
    seen_items: np.ndarray | None = None

    @property
    def max_length(self) -> int:
        """Token limit the model was trained with (serving truncates new texts the same way): the manifest's
        ``text.max_length``, or the training spec's ``model.max_length`` in artifacts written before it."""
        value = (self.manifest.get("text") or {}).get("max_length")
        if value is None:
            value = ((self.manifest.get("config") or {}).get("model") or {}).get("max_length")
        if value is None:
            raise ArtifactError("the manifest records no token limit (text.max_length or config.model.max_length)")
        return int(value)


def load_artifact(directory: str | Path, device: str | torch.device = "cpu") -> LoadedArtifact:
    """Verify hashes, rebuild the architecture from JSON, load safetensors weights (no pickle anywhere)."""
    from transformers import AutoTokenizer

    root = Path(directory)
    manifest = verify_artifact(root, FORMAT)
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
    seen = load_file(str(root / "seen.safetensors")) if (root / "seen.safetensors").exists() else {}
    return LoadedArtifact(
        model=model,
        recommender=TwoTowerRecommender(model, name=manifest["config"].get("name")),
        tokenizer=tokenizer,
        manifest=manifest,
        user_ids=ids["user_ids"],
        item_ids=ids["item_ids"],
        embeddings=embeddings,
        item_texts=ids.get("item_texts"),
        seen_indptr=seen["seen_indptr"].numpy() if seen else None,
        seen_items=seen["seen_items"].numpy() if seen else None,
    )
