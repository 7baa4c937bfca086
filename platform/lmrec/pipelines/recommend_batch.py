"""Offline batch inference: ``lmrec recommend-batch SPEC`` writes the top k items of every user to Parquet.

A Ray Data pipeline: a dataset of user rows (every user of the artifact, or the spec's ``users``; ``from_numpy``,
one block per batch), ``map_batches`` on a pool of ``spec.workers`` actors that each load the artifact once
(``lmrec.serving.batch.BatchRecommender``: the member classes Serve scores with) and turn a batch of users into
rows (user_id, rank, item_id, score), then ``write_parquet`` into ``spec.output``. Nothing but the user list is
built on the driver; the driver loads the artifact once itself before Ray starts, so a bad path, an unknown kind
or an unknown user is a one-line error instead of a failed actor.

Ray: joins ``RAY_ADDRESS`` / a running cluster, else starts a local one (``connect_ray``, as ``lmrec train``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

from lmrec.artifacts.manifest import ArtifactError
from lmrec.config.base import SpecError, load_spec
from lmrec.config.recommend_batch import RecommendBatchSpec
from lmrec.storage import StorageError, exists, filesystem, normalize

log = logging.getLogger(__name__)


class TopKBatches:
    """The ``map_batches`` callable: one ``BatchRecommender`` per actor, a batch of user rows in, ranked rows out."""

    def __init__(self, artifact: str, k: int, exclude_seen: bool, threads: int) -> None:
        import torch

        from lmrec.serving.batch import BatchRecommender

        torch.set_num_threads(threads)  # the actor's CPU share: more threads would spin against the others
        self.recommender = BatchRecommender(artifact, k=k, exclude_seen=exclude_seen)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.recommender.recommend(batch["data"])


@dataclass
class BatchResult:
    users: int
    rows: int
    seconds: float
    output: str
    kind: str

    def summary(self) -> dict:
        return {"users": self.users, "rows": self.rows, "seconds": round(self.seconds, 1),
                "users_per_s": round(self.users / max(self.seconds, 1e-9), 1), "output": self.output,
                "kind": self.kind}


def run_recommend_batch(spec: RecommendBatchSpec) -> BatchResult:
    """Check the artifact and users here, then score and write with Ray Data (see module docstring)."""
    import ray

    from lmrec.serving.batch import BatchRecommender
    from lmrec.training.ray_train import connect_ray

    start = time.perf_counter()
    output = normalize(spec.output)
    if spec.mode == "error" and exists(output):
        raise StorageError(f"{output} exists: choose another output or set mode: overwrite")
    try:
        probe = BatchRecommender(spec.artifact, k=spec.k, exclude_seen=spec.exclude_seen)
    except FileNotFoundError as e:
        raise ArtifactError(f"{spec.artifact}: {e}") from None
    try:
        users = (probe.user_index(spec.users) if spec.users is not None
                 else np.arange(len(probe.user_ids), dtype=np.int64))
    except ValueError as e:
        raise SpecError(f"users: {e}") from None
    kind = probe.kind
    del probe
    log.info("%s: top %d of %d users from %s (%s artifact), %d actors", spec.name, spec.k, len(users),
             normalize(spec.artifact), kind, spec.workers)
    connect_ray()
    # The user rows go to the object store from here, one block per batch: no read tasks, so an actor pool that
    # takes every CPU cannot starve them (ray.data.range's read tasks waited forever behind 2 actors on 2 CPUs).
    blocks = np.array_split(users, max(1, -(-len(users) // spec.batch_size)))
    ds = ray.data.from_numpy(blocks).map_batches(
        TopKBatches, batch_size=spec.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=spec.workers), num_cpus=spec.cpus_per_worker,
        fn_constructor_kwargs={"artifact": normalize(spec.artifact), "k": spec.k,
                               "exclude_seen": spec.exclude_seen, "threads": max(1, int(spec.cpus_per_worker))})
    # writing is light I/O: with no CPU reserved it streams beside the actors instead of waiting for them to end
    ds.write_parquet(output, mode=spec.mode, ray_remote_args={"num_cpus": 0})
    rows = _parquet_rows(output)
    seconds = time.perf_counter() - start
    log.info("%s: wrote %d rows for %d users to %s in %.1f s", spec.name, rows, len(users), output, seconds)
    return BatchResult(users=len(users), rows=rows, seconds=seconds, output=output, kind=kind)


def _parquet_rows(output: str) -> int:
    """Rows written, from the Parquet footers (nothing is read back)."""
    import pyarrow.dataset as pads

    fs, path = filesystem(output)
    return int(pads.dataset(path, format="parquet", filesystem=fs).count_rows())


def main_recommend_batch(spec_path: str, overrides: dict | None = None) -> int:
    """``lmrec recommend-batch SPEC``: one JSON summary line; 0 on success, 2 for a bad spec, artifact or output."""
    try:
        spec = load_spec(RecommendBatchSpec, spec_path, overrides)
        result = run_recommend_batch(spec)
    except (SpecError, ArtifactError, StorageError) as e:
        print(f"lmrec recommend-batch: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"name": spec.name, **result.summary()}))
    return 0
