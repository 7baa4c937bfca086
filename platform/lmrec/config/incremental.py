"""``IncrementalSpec``: how ``lmrec train SPEC --from-artifact URI`` fine-tunes a deployed artifact on new data.

The job reads the interactions newer than the artifact's training cut-off (``data_cutoff`` in its manifest),
holds out the newest ``holdout_frac`` of them, fine-tunes from the artifact's weights on the rest plus a replay
sample of older interactions, and promotes the candidate only if ``metric`` on the held-out slice is not worse
than the deployed artifact's by more than ``tolerance``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.config.base import StrictModel

CompareMetric = Literal["val_rmse", "val_mae", "val_ndcg@10", "val_recall@10"]


class IncrementalSpec(StrictModel):
    holdout_frac: float = Field(
        0.2, gt=0, lt=1,
        description="Newest fraction (by timestamp) of the new interactions, never trained on: old and candidate "
                    "are compared on it.",
    )
    min_new_interactions: int = Field(
        20, ge=1, description="Fewer new interactions than this: nothing is trained (the job exits 0, 'skipped').")
    replay_ratio: float = Field(
        1.0, ge=0,
        description="Old interactions sampled (seeded, uniform) per new training interaction, against forgetting "
                    "(0 = fine-tune on new data only).",
    )
    metric: CompareMetric = Field("val_rmse", description="Held-out metric that decides the promotion.")
    tolerance: float = Field(
        0.0, ge=0, description="Promote if the candidate is worse than the deployed artifact by at most this much.")
    after_timestamp: int | None = Field(
        None, description="Treat interactions after this Unix time as new (default: the manifest's data_cutoff).")
    store: str | None = Field(
        None,
        description="Artifact store (folder or URI holding vNNNN/ versions and a CURRENT file) promoted versions "
                    "go to; default: the store --from-artifact points into.",
    )
    serve_config: str | None = Field(
        None,
        description="Serve config file of the running application to hot-swap to a promoted version "
                    "(its two-tower members' user_config); None = only the store's CURRENT moves.",
    )

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric in ("val_rmse", "val_mae") else "max"

    def not_worse(self, candidate: float, deployed: float) -> bool:
        if self.mode == "min":
            return candidate <= deployed + self.tolerance
        return candidate >= deployed - self.tolerance
