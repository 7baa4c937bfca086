"""``lmrec ensemble SPEC``: fit a fused ensemble's weights on validation and write the artifact Serve loads.

    lmrec ensemble jobs/ensemble.yaml [--set fit.steps=500 ...]
    ray job submit --working-dir . -- lmrec ensemble jobs/ensemble.yaml

Before any compute: the spec validates, every member location is well formed and holds an artifact, and the output
folder is empty or an earlier ensemble artifact. Then the members' artifacts are loaded (every sha256 checked), the
split is rebuilt from the spec's ``data`` and ``seed`` and must be the one each member was trained on (dataset
fingerprint and id maps), ``FusedEnsemble.fit_weights`` learns ranking weights (listwise, on validation, train
items excluded) and rating weights (NNLS on validation ratings), and the ensemble and each member are scored on
test (RMSE; NDCG@10 over all items, train and validation items excluded). The artifact (``ensemble_artifact``)
records the weights, the members' locations and their manifests' sha256. Runs in the driver process: no Ray.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmrec.config.base import SpecError, load_spec
from lmrec.config.ensemble import EnsembleSpec
from lmrec.artifacts.manifest import ArtifactError
from lmrec.storage import StorageError, exists, is_uri, join, normalize

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    """What ``run_ensemble`` leaves behind."""

    artifact_path: str
    weights: dict[str, float]
    rating_weights: dict[str, float]
    metrics: dict[str, float]  # the ensemble on test
    member_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"artifact": self.artifact_path, "weights": self.weights, "rating_weights": self.rating_weights,
                "test": self.metrics, "members_test": self.member_metrics, "validation": self.validation,
                "seconds": round(self.seconds, 1)}


def member_locations(spec: EnsembleSpec) -> dict[str, str]:
    """Each member's normalized location (absolute path or checked URI), which must hold a manifest.json."""
    out = {}
    for member, location in spec.members.items():
        try:
            out[member] = normalize(location)
            found = exists(join(out[member], "manifest.json"))
        except StorageError as e:
            raise SpecError(f"members.{member}: {e}") from None
        if not found:
            raise SpecError(f"members.{member}: no artifact at {out[member]} (no manifest.json); train the member "
                            f"first (the header of jobs/ensemble.yaml says how)")
    return out


def check_output(location: str) -> None:
    """A local output folder must be absent, empty or an earlier ensemble artifact (it is overwritten)."""
    from lmrec.artifacts.ensemble import MANIFEST, WEIGHTS_FILE

    root = Path(location)
    if is_uri(location) or not root.exists():
        return
    if not root.is_dir():
        raise SpecError(f"output_dir {location} is a file")
    other = sorted(p.name for p in root.iterdir() if p.name not in (MANIFEST, WEIGHTS_FILE))
    if other:
        raise SpecError(f"output_dir {location} holds other files ({', '.join(other[:5])}): give an empty folder")


def load_member(member: str, location: str):
    """(``Recommender``, sha256 of its manifest.json, manifest, raw user ids, raw item ids) of a verified artifact.

    The member's name says which kind of artifact it must be (``lmrec.config.ensemble.MEMBERS``); another kind is
    an ``ArtifactError`` from the loader (wrong format) or here (an item-item artifact of the other kind).
    """
    from lmrec.storage import local_artifact

    root = local_artifact(location)
    if member == "two_tower":
        from lmrec.artifacts.manifest import sha256_file
        from lmrec.artifacts.two_tower import load_artifact

        art = load_artifact(root)
        return art.recommender, sha256_file(root / "manifest.json"), art.manifest, art.user_ids, art.item_ids
    if member in ("ease", "item_knn"):
        from lmrec.artifacts.item_item import load_item_item_artifact

        art = load_item_item_artifact(root)
        if art.kind != member:
            raise ArtifactError(f"members.{member}: {location} is an item-item artifact of kind {art.kind}")
        return art.recommender, art.sha256, art.manifest, art.user_ids, art.item_ids
    from lmrec.artifacts.mf import load_mf_artifact

    art = load_mf_artifact(root)
    return art.recommender, art.sha256, art.manifest, art.user_ids, art.item_ids


def _same_ids(a, b) -> bool:
    return len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a, b))


def check_member_data(member: str, manifest: dict, user_ids, item_ids, data) -> None:
    """The member was trained on ``data``'s training part: same fingerprint (when recorded) and id maps.

    A member trained on another split may have seen the validation or test rows: its weights and scores would be
    optimistic, so this is an error, not a warning.
    """
    recorded = manifest.get("dataset_fingerprint")
    if recorded and recorded != data.fingerprint:
        raise SpecError(f"members.{member}: trained on data {recorded}, the spec's data section and seed give "
                        f"{data.fingerprint}; use the members' job spec's data section and seed")
    if not (_same_ids(user_ids, data.user_ids) and _same_ids(item_ids, data.item_ids)):
        raise SpecError(f"members.{member}: its user/item id maps ({len(user_ids)} x {len(item_ids)}) differ from "
                        f"the spec's data ({data.n_users} x {data.n_items})")


def score_on_test(rec, data) -> dict[str, float]:
    """RMSE (when the model rates) and NDCG@10 over all items on ``data.test``, train and valid items excluded."""
    from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings

    out = {}
    if getattr(rec, "rates", True):
        out["test_rmse"] = float(evaluate_ratings(rec, data.test)["rmse"])
    out["test_ndcg@10"] = float(evaluate_ranking(rec, data.train, data.test, data.n_items, ks=(10,),
                                                 exclude_df=data.valid)["ndcg@10"])
    return out


def run_ensemble(spec: EnsembleSpec) -> EnsembleResult:
    """Fit, score and write the ensemble of ``spec`` (see the module docstring)."""
    from lmrec.config.train import TrainSpec
    from lmrec.storage import upload_dir
    from lmrec.strategies.ensemble import FusedEnsemble
    from lmrec.artifacts.ensemble import save_ensemble_artifact
    from lmrec.training.data import prepare_data

    start = time.perf_counter()
    locations = member_locations(spec)
    try:
        output = normalize(spec.output_dir)
    except StorageError as e:
        raise SpecError(f"output_dir: {e}") from None
    check_output(output)
    loaded = {m: load_member(m, loc) for m, loc in locations.items()}
    data = prepare_data(TrainSpec(name=spec.name, seed=spec.seed, data=spec.data))
    if data.valid is None:
        raise SpecError("the split has no validation part to fit the weights on: set data.valid_from_train > 0")
    for member, (_, _, manifest, user_ids, item_ids) in loaded.items():
        check_member_data(member, manifest, user_ids, item_ids, data)
    members = {m: rec for m, (rec, *_rest) in loaded.items()}
    ensemble = FusedEnsemble(members)
    f = spec.fit
    # rating weights blend the members that predict ratings (EASE and the item-item artifacts only rank)
    raters = [m for m, rec in members.items() if getattr(rec, "rates", True)]
    ensemble.fit_weights(data.train, data.valid, data.n_items, steps=f.steps, lr=f.lr, max_users=f.max_users,
                         seed=spec.seed, rating_members=raters or None, relevance_threshold=f.relevance_threshold)
    log.info("ensemble %s: ranking weights %s, rating weights %s", spec.name, ensemble.weights,
             ensemble.rating_weights)
    metrics, member_metrics = {}, {}
    if data.test is not None:
        metrics = score_on_test(ensemble, data)
        member_metrics = {m: score_on_test(rec, data) for m, rec in members.items()}
    flat = {**metrics, **{f"{m}.{k}": v for m, ms in member_metrics.items() for k, v in ms.items()}}

    def save(directory: str) -> Path:
        return save_ensemble_artifact(directory, ensemble, members=locations,
                                      member_sha256={m: v[1] for m, v in loaded.items()}, name=spec.name,
                                      config=spec.model_dump(mode="json"), fingerprint=data.fingerprint, metrics=flat)

    if is_uri(output):
        with tempfile.TemporaryDirectory(prefix="lmrec-ensemble-") as tmp:
            upload_dir(save(tmp), output)
    else:
        save(output)
    return EnsembleResult(artifact_path=output, weights=dict(ensemble.weights),
                          rating_weights=dict(ensemble.rating_weights), metrics=metrics,
                          member_metrics=member_metrics, validation=dict(ensemble.validation),
                          seconds=time.perf_counter() - start)


def main_ensemble(spec_path: str, overrides: dict | None = None) -> int:
    """``lmrec ensemble SPEC``: prints one JSON summary line; 0 on success, 2 for a bad spec, member or output."""
    from lmrec.data.schema import DataError

    try:
        spec = load_spec(EnsembleSpec, spec_path, overrides)
        result = run_ensemble(spec)
    except (SpecError, DataError, ArtifactError, StorageError) as e:
        print(f"lmrec ensemble: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"name": spec.name, **result.summary()}, default=float))
    return 0
