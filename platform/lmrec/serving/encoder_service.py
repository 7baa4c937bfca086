"""The text encoder as a service: new users' profile texts and new items' texts, micro-batched with ``@serve.batch``.

Concurrent requests are gathered into one forward pass (up to ``max_batch_size`` texts, waiting at most
``batch_wait_timeout_s``): on CPU one pass over 16 short texts costs little more than one over a single text, so
batching is what keeps cold-start traffic cheap. The encoder comes from the two-tower artifact, so its outputs
match what the item tower was trained on; every output is tagged with that artifact's sha256.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import numpy as np
import torch
from ray import serve

from lmrec.artifacts.manifest import sha256_file
from lmrec.models.encoder import with_prompt
from lmrec.models.st_settings import Side
from lmrec.storage import local_artifact, normalize


class TextEncoderCore:
    """Tokeniser + encoder (with the artifact's pooling, normalisation, prompts and token limit);
    ``encode(texts) -> [n, hidden]``."""

    def __init__(self, artifact_dir: str | Path) -> None:
        from lmrec.artifacts.two_tower import load_artifact

        root = local_artifact(artifact_dir)  # a URI is fetched into the local cache first
        art = load_artifact(root)
        self.encoder = art.model.encoder.eval()
        self.tokenizer = art.tokenizer
        self.max_length = art.max_length
        self.sha256 = sha256_file(root / "manifest.json")

    @torch.no_grad()
    def encode(self, texts: list[str], side: Side = "passage") -> np.ndarray:
        """``side``: the artifact's prompt to put first. Passage (item text) serves new items, similar-item
        queries and profile texts pooled with item vectors; a model trained with a user-text tower saw query
        prompts on its user texts."""
        enc = self.tokenizer(with_prompt(texts, self.encoder.prompt(side)), truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")
        return self.encoder(enc["input_ids"], enc["attention_mask"]).float().numpy()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class TextEncoderService:
    """``encode(text) -> (artifact sha256, vector)``, batched across concurrent callers.

    user_config: ``{"artifact_dir": ...}``; a new value loads the new encoder beside the old one and swaps the
    reference once it is ready, so requests in flight never see a half-loaded model.
    """

    def __init__(self) -> None:
        torch.set_num_threads(1)  # a fraction of a core: extra intra-op threads only spin against other replicas
        self.core: TextEncoderCore | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.busy_s = 0.0

    async def reconfigure(self, config: dict) -> None:
        artifact_dir = normalize(config["artifact_dir"])  # local path or URI
        if self.core is None or artifact_dir != getattr(self, "_dir", None):
            core = await asyncio.to_thread(TextEncoderCore, artifact_dir)
            self.core, self._dir = core, artifact_dir

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def encode(self, texts: list[str]) -> list[tuple[str, np.ndarray]]:
        core = self.core  # one model for the whole batch, even if a swap lands meanwhile
        self.batch_sizes[len(texts)] += 1
        start = time.perf_counter()
        out = await asyncio.to_thread(core.encode, texts)
        self.busy_s += time.perf_counter() - start
        return [(core.sha256, row) for row in out]

    def stats(self) -> dict:
        """Batch-size histogram since start: evidence that concurrent callers were served together."""
        n = sum(self.batch_sizes.values())
        texts = sum(k * v for k, v in self.batch_sizes.items())
        return {"batches": n, "texts": texts, "max_batch_size": max(self.batch_sizes, default=0),
                "mean_batch_size": texts / n if n else 0.0, "busy_s": round(self.busy_s, 4),
                "histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "sha256": self.core.sha256 if self.core else None}
