"""Meta-learning artifact: the cold-start user model (``lmrec.models.cold_start.ColdStartModel``) a meta-learning
run trained, verified and loadable like every other kind.

Layout::

    manifest.json       format, the run's spec (``config``), cold-user ``metrics``, per-epoch ``history``, timings,
                        the dataset fingerprint, and the sha256 of every other file
    model.safetensors   the model's state dict: item text vectors and seen-item mask (buffers), item side, and the
                        history-aggregate init of the fast user parameters
    id_maps.json        raw user and item ids in index order (when the writer had them)

The architecture is read back from the tensors' shapes, so nothing but JSON and safetensors is read (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmrec.artifacts.manifest import ArtifactError, verify_artifact, write_manifest
from lmrec.models.cold_start import ColdStartModel

FORMAT = "lmrec.meta_learning/1"


def _plain(ids) -> list:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(ids).tolist()]


def save_meta_artifact(directory: str | Path, model: ColdStartModel, *, config: dict, history: list[dict],
                       metrics: dict, fit_seconds: float = 0.0, encode_seconds: float = 0.0,
                       fingerprint: str | None = None, user_ids=None, item_ids=None) -> Path:
    """Write the artifact folder (see module docstring); returns its path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(root / "model.safetensors"))
    if item_ids is not None:
        (root / "id_maps.json").write_text(json.dumps(
            {"user_ids": _plain(user_ids) if user_ids is not None else [], "item_ids": _plain(item_ids)}))
    write_manifest(root, FORMAT, {
        "model_args": {"dim": model.dim, "n_items": model.n_items, "item_ids": model.item_id is not None},
        "config": config, "dataset_fingerprint": fingerprint,
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "history": json.loads(json.dumps(history, default=float)),
        "fit_seconds": float(fit_seconds), "encode_seconds": float(encode_seconds),
    })
    return root


@dataclass
class MetaArtifact:
    """A verified meta-learning artifact: the model (eval mode), its manifest and id maps."""

    model: ColdStartModel
    manifest: dict
    metrics: dict[str, float]
    history: list[dict]
    user_ids: list | None
    item_ids: list | None


def load_meta_artifact(directory: str | Path, device: str | torch.device = "cpu") -> MetaArtifact:
    """Verify hashes, rebuild the model from its tensors' shapes and load the weights (strict)."""
    root = Path(directory)
    manifest = verify_artifact(root, FORMAT)
    state = load_file(str(root / "model.safetensors"))
    try:
        model = ColdStartModel(state["item_features"], state["text_proj.weight"].shape[0],
                               float(state["global_mean"]), seen_items=state["seen"],
                               item_ids="item_id.weight" in state)
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as e:  # a state dict of another shape or kind
        raise ArtifactError(f"{root}: model.safetensors is not a cold-start model ({e})") from None
    args = manifest.get("model_args", {})
    if args and (args.get("dim"), args.get("n_items")) != (model.dim, model.n_items):
        raise ArtifactError(f"{root}: weights ({model.dim}-d, {model.n_items} items) differ from the manifest's "
                            f"model_args {args}")
    ids = json.loads((root / "id_maps.json").read_text()) if (root / "id_maps.json").exists() else {}
    return MetaArtifact(model=model.to(device).eval(), manifest=manifest, metrics=dict(manifest.get("metrics", {})),
                        history=list(manifest.get("history", [])), user_ids=ids.get("user_ids"),
                        item_ids=ids.get("item_ids"))
