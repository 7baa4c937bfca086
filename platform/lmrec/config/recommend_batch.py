"""``RecommendBatchSpec``: offline batch inference, the top k items of every user of an artifact written to Parquet
(``lmrec recommend-batch``).

The job scores users with the artifact's own arithmetic, the one ``/recommend`` serves (``lmrec.serving.batch``),
on a pool of Ray Data actors that each load the artifact once, and writes one row per (user, rank).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lmrec.config.base import StrictModel


class RecommendBatchSpec(StrictModel):
    name: str = Field("recommend-batch", description="Job name (in the log and the summary line).")
    artifact: str = Field(
        description="The artifact to recommend with: a folder or a storage URI of any kind Serve loads (two-tower, "
                    "MF, EASE, item-kNN, or an ensemble artifact from `lmrec ensemble`).")
    output: str = Field(
        description="Folder (or storage URI) the Parquet files go to: columns user_id, rank (1 = best), item_id, "
                    "score, with the artifact's raw ids.")
    k: int = Field(10, ge=1, le=10_000, description="Items per user (fewer only where fewer items are eligible).")
    exclude_seen: bool = Field(
        True, description="Leave out each user's training items, as `/recommend` and offline evaluation do.")
    users: list[int | str] | None = Field(
        None, description="Raw user ids to recommend for (each must be in the artifact); null = every user.")
    batch_size: int = Field(1024, ge=1, description="Users scored per batch (one dense [batch, items] product).")
    workers: int = Field(2, ge=1, description="Scoring actors; each loads the artifact once.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor (its torch threads too).")
    mode: Literal["error", "overwrite"] = Field(
        "error", description="An existing output folder: `error` refuses to write, `overwrite` replaces it.")

    @field_validator("artifact", "output")
    @classmethod
    def _not_empty(cls, location: str) -> str:
        if not location.strip():
            raise ValueError("is empty")
        return location

    @field_validator("users")
    @classmethod
    def _some_users(cls, users: list | None) -> list | None:
        if users is not None and not users:
            raise ValueError("is an empty list (null = every user)")
        return users
