"""Continuous fine-tuning: ``lmrec train SPEC --from-artifact URI``, the collect -> re-fine-tune -> promote loop.

One run (``run_incremental``), meant to be started on a schedule:

1. **Locate** the deployed artifact. ``URI`` is an artifact store (a folder or object-store URI holding version
   folders ``v0001/``, ``v0002/``, ... and a ``CURRENT`` file naming the served one), or one artifact folder
   (inside a store, or bare, in which case ``incremental.store`` says where promotions go).
2. **Select** the interactions newer than the artifact's ``data_cutoff`` (the newest timestamp it was trained
   on, in its manifest). The newest ``holdout_frac`` of them is held out; the rest, plus a seeded replay sample
   of older interactions (``replay_ratio`` per new row, against forgetting), is what the candidate trains on.
3. **Grow** the id space: the artifact's users and items keep their rows, users and items first seen in the
   new data are appended. A new item gets a row whose text is encoded and whose ID embedding trains from its
   new interactions (items seen only in the held-out slice are scored from their text, as serving scores an
   added item). A new user gets ID/bias rows trained on their new interactions and a history for the user
   tower; a user seen only in the held-out slice has untrained rows (near-zero vector: bias-only ratings,
   arbitrary ranking) until a later run trains them; ``/cold-start/recommend`` serves such users meanwhile.
4. **Fine-tune** from the artifact's weights on Ray Train (the same harness, worker loop and recipe as
   ``lmrec train``; ``optim``/``scaling`` come from the spec, the architecture from the artifact).
5. **Compare** the candidate with the deployed artifact on the same held-out slice. The deployed artifact is
   scored as it serves: its own weights, histories and seen-item gate; items it does not know by their text
   through its encoder; users it does not know from untrained (near-zero) rows.
6. **Promote** only if ``incremental.metric`` is not worse by more than ``incremental.tolerance``: the
   candidate becomes the store's next version, ``CURRENT`` moves to it, and when ``incremental.serve_config``
   names the running Serve application's config, its two-tower members are hot-swapped to the new version
   (Serve reconfigures the replicas in place; see ``lmrec.serving.cli.with_artifacts``).

A report (``incremental.json``: selection sizes, both metric sets, the decision) is written beside the run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lmrec import storage
from lmrec.config.base import SpecError, load_spec
from lmrec.config.train import TrainSpec
from lmrec.data.schema import DataError, Dataset

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
REPORT = "incremental.json"
# State-dict entries with one row per user / per item: they grow when the id space grows.
USER_ROWS = ("user_bias.weight", "user_tower.id_embedding.weight", "user_text", "history")
ITEM_ROWS = ("item_bias.weight", "item_tower.id_embedding.weight", "item_tower.seen", "item_text",
             "interest_item_bias.weight")


# ---- the artifact store ----
class ArtifactStore:
    """Version folders ``vNNNN/`` and a ``CURRENT`` file under a local folder or URI (``lmrec.storage``)."""

    def __init__(self, location: str) -> None:
        self.uri = storage.normalize(location)
        self.fs, self.path = storage.filesystem(self.uri)

    def has(self, name: str) -> bool:
        return storage.exists(storage.join(self.uri, name))

    def current(self) -> str | None:
        """The served version's folder name, or None when nothing was published yet."""
        if not self.has(CURRENT):
            return None
        with self.fs.open_input_stream(f"{self.path}/{CURRENT}") as f:
            return f.read().decode().strip() or None

    def versions(self) -> list[str]:
        import pyarrow.fs

        if not storage.exists(self.uri):
            return []
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path))
        names = [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]
        return sorted(n for n in names if n[:1] == "v" and n[1:].isdigit())

    def location(self, version: str) -> str:
        return storage.join(self.uri, version)

    def publish(self, artifact_dir: str | Path) -> str:
        """Copy a local artifact folder in as the next version and point ``CURRENT`` at it; returns the name."""
        version = f"v{max((int(v[1:]) for v in self.versions()), default=0) + 1:04d}"
        storage.upload_dir(artifact_dir, self.location(version))
        # write-then-rename: a reader sees the old CURRENT or the new one, never a partial file
        with self.fs.open_output_stream(f"{self.path}/{CURRENT}.tmp") as f:
            f.write(f"{version}\n".encode())
        self.fs.move(f"{self.path}/{CURRENT}.tmp", f"{self.path}/{CURRENT}")
        return version


def locate(location: str) -> tuple[str, ArtifactStore | None]:
    """(artifact location, its store or None) for a store or an artifact folder (local path or URI)."""
    store = ArtifactStore(location)
    version = store.current()
    if version is not None:
        return store.location(version), store
    if not store.has("manifest.json"):
        raise SpecError(f"--from-artifact {location}: neither an artifact folder (manifest.json) nor a store "
                        f"(CURRENT)")
    parent = ArtifactStore(store.uri.rstrip("/").rsplit("/", 1)[0])
    return store.uri, (parent if parent.current() is not None else None)


# ---- growing the id space ----
def union_dataset(dataset: Dataset, user_ids: list, item_ids: list) -> Dataset:
    """``dataset`` re-indexed: the artifact's users/items keep their indices, new ones are appended after them."""

    def order(known: list, current: np.ndarray, what: str) -> np.ndarray:
        known_ix, current_ix = pd.Index(known), pd.Index(current)
        gone = known_ix.difference(current_ix)
        if len(gone):
            raise DataError(f"{len(gone)} {what} of the artifact are not in {dataset.name} any more "
                            f"(e.g. {list(gone[:3])}): the id space can only grow")
        union = known_ix.append(current_ix[~current_ix.isin(known_ix)])
        return union.get_indexer(current_ix)  # old dataset index -> union index

    users = order(user_ids, dataset.user_ids, "users")
    items = order(item_ids, dataset.item_ids, "items")
    inter = dataset.interactions.copy()
    inter["user_idx"] = users[inter["user_idx"].to_numpy()]
    inter["item_idx"] = items[inter["item_idx"].to_numpy()]
    item_table = dataset.items.assign(item_idx=items[dataset.items["item_idx"].to_numpy()])
    user_table = dataset.users.assign(user_idx=users[dataset.users["user_idx"].to_numpy()])
    return Dataset(dataset.name, inter, item_table.sort_values("item_idx", ignore_index=True),
                   user_table.sort_values("user_idx", ignore_index=True), dict(dataset.meta))


def expand_state(state: dict[str, torch.Tensor], n_users: int, n_items: int, seed: int = 0) -> dict:
    """The artifact's state dict with rows appended for new users/items, initialised as a fresh model would be.

    ID embeddings get small random rows, biases and cached texts zeros, the seen gate False, histories -1.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        rows = n_users if key in USER_ROWS else n_items if key in ITEM_ROWS else None
        if rows is None or (key == "user_text" and value.shape[0] == 0):  # no user-text tower
            out[key] = value
            continue
        extra = rows - value.shape[0]
        if extra < 0:
            raise ValueError(f"{key}: {value.shape[0]} rows, cannot shrink to {rows}")
        shape = (extra, *value.shape[1:])
        if key.endswith("id_embedding.weight"):
            pad = torch.randn(shape, generator=gen, dtype=value.dtype) * 0.01
        elif key == "history":
            pad = torch.full(shape, -1, dtype=value.dtype)
        else:
            pad = torch.zeros(shape, dtype=value.dtype)
        out[key] = torch.cat([value, pad])
    return out


# ---- selecting the new interactions ----
@dataclass
class Selection:
    """Index frames (union id space) of one incremental run."""

    cutoff: int
    old: pd.DataFrame  # at or before the cutoff
    fit: pd.DataFrame  # new rows trained on
    valid: pd.DataFrame | None  # new rows for the fine-tune's early stopping
    holdout: pd.DataFrame  # the newest new rows: old vs candidate
    replay: pd.DataFrame

    @property
    def known(self) -> pd.DataFrame:
        """What the candidate may know (histories, seen items, exclusions at evaluation): old + new fit rows."""
        return pd.concat([self.old, self.fit], ignore_index=True)

    def stats(self) -> dict:
        return {"cutoff": self.cutoff, "old": len(self.old), "new_fit": len(self.fit),
                "new_valid": 0 if self.valid is None else len(self.valid), "holdout": len(self.holdout),
                "replay": len(self.replay), "holdout_from": int(self.holdout["timestamp"].min())}


def select_new(interactions: pd.DataFrame, cutoff: int, spec: TrainSpec) -> Selection | str:
    """Split by the cut-off (see the module docstring); a string says why there is nothing to train."""
    inc = spec.incremental
    ts = interactions["timestamp"].to_numpy()
    if not ts.any():
        raise DataError("the dataset has no timestamps: new interactions cannot be told from old ones")
    old, new = interactions[ts <= cutoff], interactions[ts > cutoff]
    if len(new) < inc.min_new_interactions:
        return f"{len(new)} interactions after {cutoff} (incremental.min_new_interactions={inc.min_new_interactions})"
    stamps = np.sort(new["timestamp"].to_numpy(), kind="stable")
    first_held = stamps[len(stamps) - max(1, round(inc.holdout_frac * len(stamps)))]
    holdout, rest = new[new["timestamp"] >= first_held], new[new["timestamp"] < first_held]
    if len(rest) == 0:
        return "every new interaction falls in the held-out slice (one timestamp)"
    rng = np.random.default_rng([spec.seed, 11])
    valid = None
    if spec.data.valid_from_train > 0:
        is_valid = rng.random(len(rest)) < spec.data.valid_from_train
        rest, valid = rest[~is_valid], rest[is_valid]
    n_replay = min(len(old), round(inc.replay_ratio * len(rest)))
    replay = old.iloc[np.sort(rng.choice(len(old), n_replay, replace=False))]
    return Selection(cutoff, old, rest, valid, holdout, replay)


# ---- evaluation ----
def holdout_metrics(recommender, known: pd.DataFrame, holdout: pd.DataFrame, n_items: int,
                    rating: bool) -> dict[str, float]:
    """The recipe's validation metrics on the held-out slice (ranking excludes the ``known`` items)."""
    from lmrec.evaluation.evaluate import validation_metrics

    return validation_metrics(recommender, known, holdout, n_items, ratings=rating)


def deployed_recommender(art, data, seed: int = 0):
    """The deployed artifact in the grown id space, answering as it serves (see the module docstring)."""
    from lmrec.models.encoder import encode_all
    from lmrec.models.two_tower import TwoTowerModel, TwoTowerRecommender

    state = expand_state(art.model.state_dict(), data.n_users, data.n_items, seed)
    args = {k: v for k, v in art.manifest["model_args"].items() if k not in ("pooling", "n_users", "n_items")}
    model = TwoTowerModel(art.model.encoder, data.n_users, data.n_items, **args)
    model.history = torch.empty_like(state["history"])
    model.load_state_dict(state, strict=True)
    n_old = art.model.n_items
    if data.n_items > n_old:  # items it never saw: their text through its encoder, as serving adds an item
        model.item_text[n_old:] = encode_all(model.encoder, torch.as_tensor(data.item_tokens[n_old:]),
                                             torch.as_tensor(data.item_lengths[n_old:]))
    return TwoTowerRecommender(model.eval(), name="deployed")


# ---- the job ----
@dataclass
class IncrementalResult:
    status: str  # "promoted", "refused" or "skipped"
    reason: str
    deployed: dict  # location, sha256, metrics on the held-out slice
    candidate: dict = field(default_factory=dict)  # artifact, metrics, training summary
    selection: dict = field(default_factory=dict)
    new_users: int = 0
    new_items: int = 0
    promoted_version: str | None = None
    promoted_location: str | None = None
    serve_swapped: bool = False
    seconds: float = 0.0


def check_compatible(spec: TrainSpec, manifest: dict) -> None:
    """The spec must describe the artifact's architecture (its weights fix it); raise ``SpecError`` otherwise."""
    config = manifest.get("config", {})
    deployed_model = config.get("model", {})
    diffs = [f"model.{k}" for k, v in spec.model.model_dump(mode="json").items() if deployed_model.get(k, v) != v]
    if config.get("data", {}).get("dataset", spec.data.dataset) != spec.data.dataset:
        diffs.append("data.dataset")
    head = "interest" if spec.tasks.click.weight > 0 or spec.tasks.related.weight > 0 else "rating"
    if manifest["model_args"].get("ranking_head") != head:
        diffs.append("tasks (ranking head)")
    if diffs:
        raise SpecError(f"the spec does not match the artifact's architecture: {', '.join(diffs)} differ")
    if spec.incremental.metric in ("val_rmse", "val_mae") and spec.tasks.rating.weight == 0:
        raise SpecError(f"incremental.metric {spec.incremental.metric} needs the rating task")


def _prepare(spec: TrainSpec, selection: Selection, dataset: Dataset, lineage: dict):
    from lmrec.data.text import default_item_template, render_item_texts
    from lmrec.training.data import build_prepared

    texts = render_item_texts(dataset.items, spec.data.item_template or default_item_template(dataset.name))
    train = pd.concat([selection.fit, selection.replay], ignore_index=True)
    data = build_prepared(spec, dataset, train, selection.valid, selection.holdout, texts,
                          split_params={"incremental": selection.stats(), "parent": lineage["parent"]["sha256"]},
                          context=selection.known)
    data.lineage = lineage
    return data


def run_incremental(spec: TrainSpec, from_artifact: str, *, spec_path: str | Path | None = None) -> IncrementalResult:
    """One collect -> fine-tune -> compare -> promote round (see the module docstring)."""
    from lmrec.artifacts.manifest import sha256_file
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.training.data import load_spec_dataset
    from lmrec.training.ray_train import train

    started = time.perf_counter()
    inc = spec.incremental
    location, store = locate(from_artifact)
    store = ArtifactStore(inc.store) if inc.store is not None else store
    if store is None:
        raise SpecError(f"{from_artifact} is not in an artifact store: set incremental.store for promotions")
    art_dir = storage.local_artifact(location)  # a URI is downloaded into the manifest-keyed cache
    art = load_artifact(art_dir)
    check_compatible(spec, art.manifest)
    sha = sha256_file(art_dir / "manifest.json")
    cutoff = inc.after_timestamp if inc.after_timestamp is not None else art.manifest.get("data_cutoff")
    if cutoff is None:
        raise SpecError(f"{location}: the manifest has no data_cutoff; set incremental.after_timestamp")
    deployed = {"location": location, "sha256": sha, "data_cutoff": int(cutoff)}

    dataset = union_dataset(load_spec_dataset(spec), art.user_ids, art.item_ids)
    selection = select_new(dataset.interactions, int(cutoff), spec)
    if isinstance(selection, str):
        log.info("nothing to fine-tune: %s", selection)
        return IncrementalResult("skipped", selection, deployed, seconds=time.perf_counter() - started)
    lineage = {"parent": {"sha256": sha, "location": location, "dataset_fingerprint":
                          art.manifest.get("dataset_fingerprint"), "data_cutoff": int(cutoff)},
               "selection": selection.stats()}
    data = _prepare(spec, selection, dataset, lineage)
    result = IncrementalResult("refused", "", deployed, selection=selection.stats(),
                               new_users=dataset.n_users - len(art.user_ids),
                               new_items=dataset.n_items - len(art.item_ids))
    log.info("incremental: %s; %d new users, %d new items", result.selection, result.new_users, result.new_items)
    rating = spec.tasks.rating.weight > 0
    deployed["metrics"] = holdout_metrics(deployed_recommender(art, data, spec.seed), data.known(), data.test,
                                         data.n_items, rating)

    init_state = expand_state(art.model.state_dict(), data.n_users, data.n_items, spec.seed)
    init_state.pop("history")  # rebuilt from the known interactions
    trained = train(spec, spec_path=spec_path, resume=False, data=data, init_state=init_state)
    cand_dir = storage.local_artifact(trained.artifact_path)
    result.candidate = {
        "artifact": trained.artifact_path, "run_path": trained.run_path,
        "sha256": sha256_file(cand_dir / "manifest.json"), "epochs": len(trained.history),
        "train_seconds": round(trained.seconds, 1),
        "metrics": holdout_metrics(load_artifact(cand_dir).recommender, data.known(), data.test, data.n_items,
                                   rating),
    }
    new, old = result.candidate["metrics"][inc.metric], deployed["metrics"][inc.metric]
    result.reason = (f"{inc.metric} {new:.4f} vs deployed {old:.4f} ({'lower' if inc.mode == 'min' else 'higher'} "
                     f"is better, tolerance {inc.tolerance})")
    if np.isfinite(new) and inc.not_worse(new, old):
        result.status = "promoted"
        result.promoted_version = store.publish(cand_dir)
        result.promoted_location = store.location(result.promoted_version)
        if inc.serve_config is not None:
            hot_swap(inc.serve_config, result.promoted_location)
            result.serve_swapped = True
    result.seconds = time.perf_counter() - started
    log.info("incremental %s: %s", result.status, result.reason)
    _write_report(trained.run_path, result)
    return result


def hot_swap(serve_config: str, artifact_location: str) -> None:
    """Redeploy ``serve_config`` with its two-tower members' ``user_config`` on the new artifact (in place)."""
    from lmrec.config.base import load_yaml
    from lmrec.serving.cli import deploy_config, load_serve_config, with_artifacts

    raw = with_artifacts(load_yaml(serve_config), two_tower_artifact=artifact_location)
    deploy_config(load_serve_config(raw, resolve_from=Path(serve_config).resolve().parent))
    log.info("Serve application(s) of %s now serve %s", serve_config, artifact_location)


def _write_report(run_path: str, result: IncrementalResult) -> None:
    fs, path = storage.filesystem(storage.normalize(run_path))
    with fs.open_output_stream(f"{path}/{REPORT}") as f:
        f.write(json.dumps(asdict(result), indent=1, default=float).encode())


def main_incremental(spec_path: str, overrides: dict | None, from_artifact: str) -> int:
    """``lmrec train SPEC --from-artifact URI``: 0 promoted/refused/skipped (the JSON says which), 2 bad input,
    1 training failed."""
    from ray.train import TrainingFailedError

    from lmrec.artifacts.manifest import ArtifactError

    try:
        spec = load_spec(TrainSpec, spec_path, overrides)
        result = run_incremental(spec, from_artifact, spec_path=spec_path)
    except (SpecError, DataError, ArtifactError) as e:
        print(f"lmrec train: error: {e}", file=sys.stderr)
        return 2
    except TrainingFailedError as e:
        print(f"lmrec train: error: training failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result), default=float))
    return 0
