"""Runs a set of models on one dataset split and returns comparable records.

Shared by the CLI (``lmrec baselines``), the demo job and the benchmarks, so that every table in the project is
produced by the same code path on identical splits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from lmrec.data.schema import Dataset
# the named splits live beside the split specs (job specs take the names too); imported here for existing callers
from lmrec.data.splits import CANONICAL_SPLITS, SPLIT_NAMES, Split, make_split, split_spec_from_name  # noqa: F401
from lmrec.evaluation import evaluate_ranking, evaluate_ratings
from lmrec.models.base import Recommender

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """A model to compare: a name, a factory (so each run starts untrained), and what it can be scored on."""

    name: str
    build: Callable[[], Recommender]
    rates: bool = True
    ranks: bool = True


def evaluate_entries(
    dataset: Dataset,
    split: Split,
    entries: Iterable[ModelEntry],
    *,
    ks: tuple[int, ...] = (10,),
    rating_metrics: bool = True,
    ranking_metrics: bool = True,
    candidates=None,
    split_name: str | None = None,
) -> list[dict]:
    """Fit every entry on ``split.train`` and evaluate on ``split.test``; one record per model."""
    records = []
    for entry in entries:
        model = entry.build()
        t0 = time.perf_counter()
        model.fit(split.train, dataset.n_users, dataset.n_items)
        fit_s = time.perf_counter() - t0
        metrics: dict[str, float] = {}
        if rating_metrics and entry.rates:
            r = evaluate_ratings(model, split.test)
            metrics.update({k: r[k] for k in ("rmse", "mae")})
        if ranking_metrics and entry.ranks:
            r = evaluate_ranking(model, split.train, split.test, dataset.n_items, ks=ks, candidates=candidates)
            metrics.update({k: v for k, v in r.items() if "@" in k})
        t1 = time.perf_counter()
        log.info("%s: fit %.1fs, eval %.1fs, %s", entry.name, fit_s, t1 - t0 - fit_s, metrics)
        records.append(
            {
                "dataset": dataset.name,
                "split": split_name or split.name,
                "model": entry.name,
                "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
                "fit_seconds": round(fit_s, 3),
            }
        )
    return records


def baseline_entries(names: Iterable[str] | None = None) -> list[ModelEntry]:
    """Entries for the library's classic baselines (all of them by default)."""
    from lmrec.models.baselines import BASELINES, make_baseline

    chosen = list(names) if names else [n for n in BASELINES if n != "tfidf"]
    entries = []
    for name in chosen:
        cls = BASELINES.get(name)
        if cls is None:
            raise ValueError(f"unknown baseline {name!r}; choose from: {', '.join(BASELINES)}")
        entries.append(ModelEntry(name, lambda n=name: make_baseline(n), rates=getattr(cls, "rates", True)))
    return entries


def load_split(dataset: Dataset, split_name: str, seed: int = 42) -> Split:
    return make_split(dataset, split_spec_from_name(split_name, seed))
