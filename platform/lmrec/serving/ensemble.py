"""The ensemble: fuse member scores per request, and the Serve ingress deployment that exposes it over HTTP.

Fusion: each member's scores are z-scored over the request's candidate items (members live on different scales:
MF predicts ratings, the two-tower a cosine), then averaged with the configured weights. An item a member cannot
score (an item added at run time has no MF factors) gets that member's mean, z = 0, i.e. no opinion.

``EnsembleRouter`` holds the request logic over *handles* (``await h.method.remote(...)``); in Serve they are
``DeploymentHandle``s, in the benchmark's bare app in-process objects, so both run the identical computation.
Scoring a known user is two small dot products, far cheaper than a Serve hop: the router keeps each member's
``ScoreTable`` and answers ``/recommend`` itself, calling members only for what needs their models (texts,
run-time items, cold users, explanations).
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pandas as pd
from ray import serve

from lmrec.serving.api import (
    AddItemRequest, ColdStartRequest, PredictRequest, RecommendRequest, ServingError, SimilarItemsRequest,
    build_api,
)
from lmrec.serving.autoscaling import METRIC as CPU_METRIC, CpuClock
from lmrec.serving.protocol import SKEW, IdMap
from lmrec.serving.tables import ScoreTable


def zscore(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(s - mean) / std over the finite entries inside ``mask``; other entries and a constant member give 0."""
    ok = mask & np.isfinite(scores)
    out = np.zeros(len(scores), dtype=np.float64)
    if ok.sum() == 0:
        return out
    vals = scores[ok].astype(np.float64)
    std = vals.std()
    out[ok] = (vals - vals.mean()) / std if std > 1e-12 else 0.0
    return out


def fuse_scores(members: dict[str, np.ndarray | None], weights: dict[str, float], mask: np.ndarray) -> np.ndarray:
    """Weighted mean of per-member z-scores; -inf outside ``mask``. Members that are None are left out."""
    present = {m: s for m, s in members.items() if s is not None and weights.get(m, 0) > 0}
    if not present:
        raise ValueError("no member can score this request")
    total = sum(weights[m] for m in present)
    fused = sum(weights[m] / total * zscore(s, mask) for m, s in present.items())
    return np.where(mask, fused, -np.inf)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores, best first (ties by index)."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.lexsort((top, -scores[top]))]


class EnsembleRouter:
    """Request logic of every endpoint over member handles (see module docstring)."""

    def __init__(self, two_tower, mf, encoder, catalog, weights: dict[str, float], liked_threshold: float = 4.0,
                 explain_items: int = 3, skew_retry_s: float = 15.0, catalog_poll_s: float = 0.5) -> None:
        self.tt, self.mf, self.encoder, self.catalog = two_tower, mf, encoder, catalog
        # Asking the catalog (or a member) on every request would be an extra hop on the hot path: this replica
        # looks once per ``poll_s``, in the background, so no request waits for the look. That bounds how late
        # another ingress replica learns of an added item (the replica that served POST /items syncs at once, so
        # "recommendable at once" holds) and how long /recommend answers from the old tables after a hot swap.
        self.poll_s = catalog_poll_s
        self._catalog_checked = self._tables_checked = -float("inf")
        self._tables: tuple[ScoreTable, ScoreTable | None] | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self.weights = dict(weights)
        self.liked_threshold, self.explain_items, self.skew_retry_s = liked_threshold, explain_items, skew_retry_s
        self.spaces: dict[str, tuple[IdMap, list]] = {}  # sha256 -> (item ids, item texts)
        self.aligned: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.new_ids: list = []
        self.new_texts: list[str] = []
        self.new_map = IdMap([])
        self.new_hidden: list[np.ndarray] = []
        self.new_sha: str | None = None
        self._lock = asyncio.Lock()
        self._encode_lock = asyncio.Lock()

    # ---- id spaces ----
    async def _space(self, handle, sha: str) -> tuple[IdMap, list]:
        if sha not in self.spaces:
            got_sha, ids = await handle.item_ids.remote()
            texts = [None] * len(ids)
            if handle is self.mf:
                _, texts = await handle.item_texts.remote()
            self.spaces[got_sha] = (IdMap(ids), list(texts))
            if got_sha != sha:  # swapped between two calls: the newest map is the best guess
                return self.spaces[got_sha]
        return self.spaces[sha]

    async def _alignment(self, tt_sha: str, mf_sha: str) -> tuple[np.ndarray, np.ndarray]:
        """(mf index of each tt item or -1, tt index of each mf item or -1), cached per artifact pair."""
        key = (tt_sha, mf_sha)
        if key not in self.aligned:
            tt_map, _ = await self._space(self.tt, tt_sha)
            mf_map, _ = await self._space(self.mf, mf_sha)
            tt_ids = pd.Index([str(v) for v in tt_map.ids])
            mf_ids = pd.Index([str(v) for v in mf_map.ids])
            self.aligned[key] = (mf_ids.get_indexer(tt_ids), tt_ids.get_indexer(mf_ids))
        return self.aligned[key]

    def _combined_index(self, tt_map: IdMap, raw_ids: list) -> np.ndarray:
        """Raw ids -> indices in the combined space (artifact items, then new items); 404 on unknown ids."""
        out, unknown = [], []
        for raw in raw_ids:
            i = tt_map.index(raw)
            if i is None and raw in self.new_map:
                i = len(tt_map) + self.new_map.index(raw)
            (unknown.append(raw) if i is None else out.append(i))
        if unknown:
            raise ServingError(404, f"unknown item_id(s): {unknown[:20]}")
        return np.asarray(out, dtype=np.int64)

    async def _look_for(self, raw_ids: list) -> None:
        """When an id is neither an artifact item nor a run-time item this replica knows, finish a catalog look
        first: another replica may have added the item since this one last looked (no stale 404 for new items)."""
        def known(raw) -> bool:
            return raw in self.new_map or any(m.index(raw) is not None for m, _ in self.spaces.values())

        if not all(known(raw) for raw in raw_ids):
            await self._in_background("catalog", self._fetch_catalog)

    def _raw_id(self, tt_map: IdMap, idx: int):
        return tt_map.ids[idx] if idx < len(tt_map) else self.new_ids[idx - len(tt_map)]

    async def _text(self, tt_map: IdMap, idx: int, mf_sha: str | None) -> str | None:
        if idx >= len(tt_map):
            return self.new_texts[idx - len(tt_map)]
        if mf_sha is None:
            return None
        mf_map, texts = await self._space(self.mf, mf_sha)
        j = mf_map.index(tt_map.ids[idx])
        return texts[j] if j is not None and j < len(texts) else None

    def _in_background(self, name: str, fn) -> asyncio.Task:
        """The running task ``name``, or a new one running ``fn()`` (concurrent callers share one look)."""
        task = self._tasks.get(name)
        if task is None or task.done():
            task = self._tasks[name] = asyncio.create_task(fn())
        return task

    # ---- the members' score tables, held here for /recommend ----
    async def _score_tables(self) -> tuple[ScoreTable, ScoreTable | None]:
        """(two-tower, MF) score tables; fetched by the first request, then checked every ``poll_s`` in the
        background and fetched again when a member's artifact changed (a hot swap)."""
        if self._tables is None:
            await self._in_background("tables", self._fetch_tables)
        elif time.monotonic() - self._tables_checked >= self.poll_s:
            self._tables_checked = time.monotonic()
            self._in_background("tables", self._fetch_tables)
        return self._tables

    async def _fetch_tables(self) -> None:
        self._tables_checked = time.monotonic()
        handles = [self.tt] + ([self.mf] if self.mf is not None else [])
        shas = list(await asyncio.gather(*[h.sha256.remote() for h in handles]))
        if self._tables is not None and shas == [t.sha256 for t in self._tables if t is not None]:
            return
        tables = await asyncio.gather(*[h.score_table.remote() for h in handles])
        for t in tables:
            texts = t.item_texts if t.item_texts is not None else [None] * len(t.item_ids)
            self.spaces.setdefault(t.sha256, (IdMap(t.item_ids), list(texts)))
        self._tables = (tables[0], tables[1] if len(tables) > 1 else None)

    @staticmethod
    def _table_scores(user_id, tt_table: ScoreTable, mf_table: ScoreTable | None) -> tuple[dict, dict | None]:
        return tt_table.user_scores(user_id), (mf_table.user_scores(user_id) if mf_table is not None else None)

    # ---- run-time items and version skew ----
    async def _sync_catalog(self, force: bool = False) -> None:
        """Fetch items added since the last look; without ``force`` at most once per ``poll_s``, in the
        background (the request goes on with what this replica knows)."""
        if force:
            return await self._fetch_catalog()
        if time.monotonic() - self._catalog_checked >= self.poll_s:
            self._catalog_checked = time.monotonic()
            self._in_background("catalog", self._fetch_catalog)

    async def _fetch_catalog(self) -> None:
        self._catalog_checked = time.monotonic()
        version, ids, texts = await self.catalog.since.remote(len(self.new_ids))
        async with self._lock:
            if ids and version == len(self.new_ids) + len(ids):
                self.new_ids.extend(ids)
                self.new_texts.extend(texts)
                self.new_map = IdMap(self.new_ids)

    async def _new_items_hidden(self) -> tuple[np.ndarray | None, str | None]:
        """Encoder outputs of every run-time item, all from one artifact version (re-encoded after a swap)."""
        n = len(self.new_ids)
        if n == 0:
            return None, None
        async with self._encode_lock:  # concurrent requests must not append the same rows twice
            if len(self.new_hidden) < n:
                texts = self.new_texts[len(self.new_hidden):n]
                got = await asyncio.gather(*[self.encoder.encode.remote(t) for t in texts])
                shas = {sha for sha, _ in got}
                if len(shas) > 1 or (self.new_hidden and self.new_sha not in shas):
                    self.new_hidden, self.new_sha = [], None  # the encoder changed mid-way: start over
                    raise _Retry
                self.new_hidden.extend(vec for _, vec in got)
                self.new_sha = shas.pop()
            return np.stack(self.new_hidden[:n]), self.new_sha

    async def _tt(self, method: str, *args, query_text: str | None = None, query_kw: str = "hidden", **kwargs):
        """Call the two-tower with the run-time items (and an encoded query text); retry while a hot swap has
        the encoder and the two-tower on different artifacts."""
        deadline = time.monotonic() + self.skew_retry_s
        while True:
            try:
                extra, sha = await self._new_items_hidden()
                if query_text is not None:
                    q_sha, q_vec = await self.encoder.encode.remote(query_text)
                    if sha is not None and q_sha != sha:
                        self.new_hidden, self.new_sha = [], None
                        raise _Retry
                    kwargs[query_kw], sha = q_vec[None], q_sha
                out = await self.tt.call.remote(method, *args, extra_hidden=extra, encoder_sha=sha, **kwargs)
                if not (isinstance(out, dict) and SKEW in out):
                    return out
                self.new_hidden, self.new_sha = [], None
            except _Retry:
                pass
            if time.monotonic() > deadline:
                raise ServingError(503, "models are being swapped; retry shortly")
            await asyncio.sleep(0.1)

    # ---- endpoints ----
    async def recommend(self, req: RecommendRequest) -> dict:
        await self._sync_catalog()
        if req.candidate_item_ids is not None:
            await self._look_for(req.candidate_item_ids)
        if self.new_ids:  # items added at run time: only the two-tower member can project their texts
            mf_call = self.mf.call.remote("user_scores", req.user_id) if self.mf else _none()
            tt_res, mf_res = await asyncio.gather(self._tt("user_scores", req.user_id), mf_call)
        else:  # the members' own arithmetic on their tables, without a hop per member
            tt_res, mf_res = self._table_scores(req.user_id, *await self._score_tables())
            if tt_res["scores"] is None and (mf_res is None or mf_res["scores"] is None):
                # unknown here may only mean the tables predate a hot swap that added the user: finish any look
                # in flight (it may have started before the swap), then look once more
                await self._in_background("tables", self._fetch_tables)
                await self._in_background("tables", self._fetch_tables)
                tt_res, mf_res = self._table_scores(req.user_id, *self._tables)
        if tt_res["scores"] is None and (mf_res is None or mf_res["scores"] is None):
            raise ServingError(404, f"unknown user_id {req.user_id!r} (use /cold-start/recommend for new users)")
        tt_map, _ = await self._space(self.tt, tt_res["sha256"])
        n = len(tt_map) + len(self.new_ids)
        mask = np.ones(n, dtype=bool)
        if req.candidate_item_ids is not None:
            mask[:] = False
            mask[self._combined_index(tt_map, req.candidate_item_ids)] = True
        members = {"two_tower": tt_res["scores"][:n] if tt_res["scores"] is not None else None}
        seen = [tt_res.get("seen", np.zeros(0, np.int64))]
        liked = (seen[0], None)
        mf_sha = None
        if mf_res is not None and mf_res["scores"] is not None:
            mf_sha = mf_res["sha256"]
            tt_to_mf, mf_to_tt = await self._alignment(tt_res["sha256"], mf_sha)
            members["mf"] = _aligned(mf_res["scores"], tt_to_mf, n)
            in_tt = mf_to_tt[mf_res["seen"]]
            seen.append(in_tt[in_tt >= 0])
            liked = _liked(in_tt, mf_res["seen_ratings"], self.liked_threshold)
        if req.exclude_seen:
            mask[np.concatenate(seen)] = False
        fused = fuse_scores(members, self.weights, mask)
        top = top_k(fused, req.k)
        items = await self._items(tt_map, top, fused, members, mf_sha)
        if req.explain and len(top) and len(liked[0]):
            ex = await self._tt("explain", top, liked[0], self.explain_items)
            ratings = dict(zip(liked[0].tolist(), liked[1].tolist())) if liked[1] is not None else {}
            for item, hist, sims in zip(items, ex["history_idx"], ex["similarity"]):
                item["because_you_liked"] = [
                    {"item_id": self._raw_id(tt_map, int(h)), "text": await self._text(tt_map, int(h), mf_sha),
                     "rating": ratings.get(int(h)), "similarity": float(s)} for h, s in zip(hist, sims)]
        return {"user_id": req.user_id, "items": items, "versions": _versions(tt_res, mf_res)}

    async def predict(self, req: PredictRequest) -> dict:
        await self._sync_catalog()
        await self._look_for(req.item_ids)
        tt_sha = (await self.tt.item_ids.remote())[0]
        tt_map, _ = await self._space(self.tt, tt_sha)
        idx = self._combined_index(tt_map, req.item_ids)
        tt_res = await self._tt("predict", req.user_id, idx)
        mf_res, mf_ratings = None, np.full(len(idx), np.nan)
        if self.mf is not None:
            mf_sha = (await self.mf.item_ids.remote())[0]
            tt_to_mf, _ = await self._alignment(tt_res["sha256"], mf_sha)
            j = np.where(idx < len(tt_map), tt_to_mf[np.minimum(idx, len(tt_map) - 1)], -1)
            mf_res = await self.mf.call.remote("predict", req.user_id, np.maximum(j, 0))
            if mf_res["ratings"] is not None:
                mf_ratings = np.where(j >= 0, mf_res["ratings"], np.nan)
        tt_ratings = tt_res["ratings"] if tt_res["ratings"] is not None else np.full(len(idx), np.nan)
        if np.isnan(tt_ratings).all() and np.isnan(mf_ratings).all():
            raise ServingError(404, f"unknown user_id {req.user_id!r}")
        per = {"two_tower": tt_ratings, "mf": mf_ratings}
        preds = []
        for pos, raw in enumerate(req.item_ids):
            vals = {m: float(v[pos]) for m, v in per.items() if np.isfinite(v[pos])}
            w = {m: self.weights.get(m, 0.0) for m in vals}
            total = sum(w.values())
            rating = sum(w[m] * vals[m] for m in vals) / total if total else float(np.mean(list(vals.values())))
            preds.append({"item_id": raw, "rating": rating, "member_ratings": {m: vals.get(m) for m in per}})
        return {"user_id": req.user_id, "predictions": preds, "versions": _versions(tt_res, mf_res)}

    async def similar_items(self, req: SimilarItemsRequest) -> dict:
        await self._sync_catalog()
        if req.item_id is not None:
            await self._look_for([req.item_id])
            tt_sha = (await self.tt.item_ids.remote())[0]
            tt_map, _ = await self._space(self.tt, tt_sha)
            idx = int(self._combined_index(tt_map, [req.item_id])[0])
            res = await self._tt("similar", req.k, item_idx=idx)
        else:
            res = await self._tt("similar", req.k, query_text=req.text)
        tt_map, _ = await self._space(self.tt, res["sha256"])
        mf_sha = (await self.mf.item_ids.remote())[0] if self.mf is not None else None
        items = [{"item_id": self._raw_id(tt_map, int(i)), "score": float(s),
                  "text": await self._text(tt_map, int(i), mf_sha), "member_scores": {"two_tower": float(s)}}
                 for i, s in zip(res["item_idx"], res["similarity"])]
        return {"items": items, "versions": {"two_tower": res["sha256"][:12]}}

    async def cold_start(self, req: ColdStartRequest) -> dict:
        await self._sync_catalog()
        await self._look_for([r.item_id for r in req.ratings])
        tt_sha = (await self.tt.item_ids.remote())[0]
        tt_map, _ = await self._space(self.tt, tt_sha)
        idx = self._combined_index(tt_map, [r.item_id for r in req.ratings])
        ratings = np.asarray([r.rating for r in req.ratings], dtype=np.float32)
        if req.profile_text:
            tt_call = self._tt("cold_user", idx, query_text=req.profile_text, query_kw="profile_hidden")
        else:
            tt_call = self._tt("cold_user", idx, profile_hidden=None)
        mf_res = None
        if self.mf is not None and len(idx):
            mf_sha = (await self.mf.item_ids.remote())[0]
            tt_to_mf, _ = await self._alignment(tt_sha, mf_sha)
            j = np.where(idx < len(tt_map), tt_to_mf[np.minimum(idx, len(tt_map) - 1)], -1)
            mf_call = self.mf.call.remote("fold_in", j[j >= 0], ratings[j >= 0])
            tt_res, mf_res = await asyncio.gather(tt_call, mf_call)
        else:
            tt_res = await tt_call
        tt_map, _ = await self._space(self.tt, tt_res["sha256"])
        n = len(tt_map) + len(self.new_ids)
        members = {"two_tower": tt_res["scores"][:n]}
        mf_sha = None
        if mf_res is not None and mf_res["scores"] is not None:
            mf_sha = mf_res["sha256"]
            members["mf"] = _aligned(mf_res["scores"], (await self._alignment(tt_res["sha256"], mf_sha))[0], n)
        mask = np.ones(n, dtype=bool)
        mask[idx[idx < n]] = False
        fused = fuse_scores(members, self.weights, mask)
        top = top_k(fused, req.k)
        items = await self._items(tt_map, top, fused, members, mf_sha)
        return {"items": items, "versions": _versions(tt_res, mf_res)}

    async def add_item(self, req: AddItemRequest) -> dict:
        await self._sync_catalog(force=True)
        tt_sha = (await self.tt.item_ids.remote())[0]
        tt_map, _ = await self._space(self.tt, tt_sha)
        if req.item_id in tt_map or req.item_id in self.new_map:
            raise ServingError(409, f"item_id {req.item_id!r} already exists")
        await self._tt("similar", 1, query_text=req.text)  # the text encodes and projects: fail before storing
        version = await self.catalog.add.remote(req.item_id, req.text)
        if version < 0:
            raise ServingError(409, f"item_id {req.item_id!r} already exists")
        await self._sync_catalog(force=True)
        return {"item_id": req.item_id, "catalog_version": version, "recommendable": True}

    async def health(self) -> dict:
        handles = [self.tt.info.remote(), self.encoder.stats.remote(), self.catalog.since.remote(0)]
        if self.mf is not None:
            handles.append(self.mf.info.remote())
        await asyncio.gather(*handles)
        return {"status": "ok"}

    async def version(self) -> dict:
        members = {"two_tower": await self.tt.info.remote()}
        if self.mf is not None:
            members["mf"] = await self.mf.info.remote()
        enc = await self.encoder.stats.remote()
        return {"members": members, "encoder_sha256": enc["sha256"], "weights": self.weights,
                "catalog_items": len(self.new_ids)}

    async def stats(self) -> dict:
        await self._sync_catalog(force=True)
        return {"encoder": await self.encoder.stats.remote(), "catalog_items": len(self.new_ids)}

    async def _items(self, tt_map, top, fused, members, mf_sha) -> list[dict]:
        # per-member lists first: numpy scalar access per item and member was a third of /recommend's time
        per = {m: [v if math.isfinite(v) else None for v in s[top].tolist()] if s is not None else [None] * len(top)
               for m, s in members.items()}
        return [{"item_id": self._raw_id(tt_map, i), "score": score, "text": await self._text(tt_map, i, mf_sha),
                 "member_scores": {m: v[pos] for m, v in per.items()}}
                for pos, (i, score) in enumerate(zip(top.tolist(), fused[top].tolist()))]


class _Retry(Exception):
    pass


async def _none():
    return None


def _aligned(scores: np.ndarray, tt_to_member: np.ndarray, n: int) -> np.ndarray:
    """A member's scores moved into the combined space (NaN where it has no such item)."""
    out = np.full(n, np.nan)
    ok = tt_to_member >= 0
    out[: len(tt_to_member)][ok] = scores[tt_to_member[ok]]
    return out


def _liked(items: np.ndarray, ratings: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The user's items rated >= threshold (their top-rated ones if none is), in the combined space."""
    keep = items >= 0
    items, ratings = items[keep], ratings[keep]
    good = ratings >= threshold
    if not good.any() and len(ratings):
        good = ratings >= ratings.max()
    return items[good], ratings[good]


def _versions(*results) -> dict[str, str]:
    names = ("two_tower", "mf")
    return {n: r["sha256"][:12] for n, r in zip(names, results) if r is not None}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress()
class EnsembleIngress:
    """HTTP ingress: FastAPI routes (``api.build_api``) over an ``EnsembleRouter`` of the member handles."""

    def __init__(self, two_tower, mf, encoder, catalog, weights: dict[str, float], max_body_bytes: int = 65536,
                 liked_threshold: float = 4.0) -> None:
        self.router = EnsembleRouter(two_tower, mf, encoder, catalog, weights, liked_threshold=liked_threshold)
        self.max_body_bytes = max_body_bytes
        self._cpu = CpuClock()

    def __serve_build_asgi_app__(self):
        return build_api(self.router, self.max_body_bytes)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric hook: this replica's CPU use (``lmrec.serving.autoscaling``)."""
        return {CPU_METRIC: self._cpu.fraction()}
