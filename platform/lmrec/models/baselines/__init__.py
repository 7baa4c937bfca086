"""Classic recommenders that every lmrec result is reported against.

Each class honours ``lmrec.models.base.Recommender`` and has a class attribute ``rates``: True when
``predict`` gives real rating estimates (evaluate its RMSE), False when the model only ranks and
``predict`` falls back to the biased-mean estimate (skip it in rating tables).

Configs name a baseline by one of the closed set of keys in ``BASELINES``; ``make_baseline`` checks the
name and the parameters before anything is fitted.
"""

from __future__ import annotations

import inspect

from lmrec.models.baselines.ease import EASE
from lmrec.models.baselines.item_knn import ItemKNN
from lmrec.models.baselines.means import BiasedMean, GlobalMean
from lmrec.models.baselines.mf import BiasedMF
from lmrec.models.baselines.popularity import Popularity
from lmrec.models.baselines.tfidf import TfidfContent

BASELINES: dict[str, type] = {
    "global_mean": GlobalMean,
    "biased_mean": BiasedMean,
    "popularity": Popularity,
    "biased_mf": BiasedMF,
    "item_knn": ItemKNN,
    "ease": EASE,
    "tfidf": TfidfContent,
}


def make_baseline(name: str, **params):
    """Build the baseline registered as ``name`` with constructor ``params``.

    Raises ValueError naming the valid choices for an unknown name, an unknown parameter, or a missing
    required one (``tfidf`` needs ``item_texts``); the constructor itself rejects out-of-range values.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    cls = BASELINES[name]
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"baseline {name!r} has no parameter(s) {unknown}; it accepts {accepted}")
    required = [
        p.name for p in signature.parameters.values() if p.name != "self" and p.default is inspect.Parameter.empty
    ]
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"baseline {name!r} needs parameter(s) {missing}")
    return cls(**params)


__all__ = [
    "BASELINES",
    "EASE",
    "BiasedMF",
    "BiasedMean",
    "GlobalMean",
    "ItemKNN",
    "Popularity",
    "TfidfContent",
    "make_baseline",
]
