"""Metrics and the evaluation driver: the same numbers for every model, from popularity to the two-tower."""

from lmrec.evaluation.evaluate import (
    evaluate_model,
    evaluate_ranking,
    evaluate_ratings,
    format_metrics_table,
    test_metrics,
    validation_metrics,
)
from lmrec.evaluation.metrics import (
    RANKING_METRICS,
    RankingAccumulator,
    auc,
    mae,
    rank_top_k,
    ranking_metrics,
    rmse,
    user_metrics_at_k,
)

__all__ = [
    "RANKING_METRICS",
    "RankingAccumulator",
    "auc",
    "evaluate_model",
    "evaluate_ranking",
    "validation_metrics",
    "test_metrics",
    "evaluate_ratings",
    "format_metrics_table",
    "mae",
    "rank_top_k",
    "ranking_metrics",
    "rmse",
    "user_metrics_at_k",
]
