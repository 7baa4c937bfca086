"""``strategy: label_propagation``: labels propagated over a user-user kNN graph become extra, down-weighted
targets of the objective (``lmrec.strategies.label_propagation``)."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from lmrec.strategies.components import ExtraTasks, Strategy, StrategyHooks

log = logging.getLogger(__name__)


class LabelPropagationStrategy(Strategy):
    name: Literal["label_propagation"] = Field(description="Propagated labels as extra, down-weighted targets.")
    graph: Literal["co_rating", "text_history"] = Field(
        "co_rating", description="User-user kNN graph from co-rating similarity or from history text embeddings.")
    k: int = Field(30, ge=1, description="Neighbours per user.")
    alpha: float = Field(0.8, ge=0, lt=1, description="Propagation strength in Y <- αSY + (1-α)Y0.")
    weight: float = Field(0.1, gt=0, description="Weight of the propagated-label loss (down-weighting).")
    per_user: int = Field(8, ge=1, description="Extra targets per batch user (most supported unrated items).")

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        from lmrec.strategies.label_propagation import LabelPropagation, PropagatedLabelTask

        emb = _history_text_embeddings(model) if self.graph == "text_history" else None
        prop = LabelPropagation(k=self.k, alpha=self.alpha, user_embeddings=emb).fit(data.train, data.n_users,
                                                                                     data.n_items)
        log.info("label propagation: %d iterations to converge", prop.iterations_)
        return ExtraTasks([PropagatedLabelTask(prop, self.weight, self.per_user)])


def _history_text_embeddings(model) -> np.ndarray:
    """Each user's mean pooled item text over their training history (an encoder-derived user embedding)."""
    hist = model.history
    mask = (hist >= 0).float()
    text = model.item_text.float()[hist.clamp_min(0)]
    return ((text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)).cpu().numpy()
