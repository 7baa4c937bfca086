"""The ensemble: fuse member scores per request, and the Serve ingress deployment that exposes it over HTTP.

Members: the two-tower, plus any collaborative members by name (``mf``, ``ease``, ``item_knn``; see
``lmrec.serving.app``). Fusion (``lmrec.strategies.fusion.fuse_scores``, the offline ensemble's own function): each
member's scores are z-scored over the request's candidate items (members live on different scales), then averaged
with the configured weights. An item a member cannot score (an item added at run time has no MF factors) gets that
member's mean, z = 0, i.e. no opinion. ``/recommend`` and cold start fuse every member the same way, whatever its
name. The two-tower keeps its own roles: its item index is the request's id space (artifact items, then run-time
items), and only it can score run-time items, texts (similar-by-text, profiles) and explanations; ``/predict``
blends the rating members (two-tower and MF).

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
    AddItemRequest, ColdStartRequest, PredictRequest, RecommendBatchRequest, RecommendRequest, ServingError,
    SimilarItemsRequest, build_api,
)
from lmrec.serving.auth import Tokens
from lmrec.serving.autoscaling import METRIC as CPU_METRIC, CpuClock
from lmrec.serving.metrics import ServiceMetrics
from lmrec.artifacts.tables import IdMap
from lmrec.serving.protocol import SKEW
from lmrec.artifacts.tables import ScoreTable
from lmrec.strategies.fusion import fuse_scores, top_k, zscore  # noqa: F401  (zscore: this module's old name)

TWO_TOWER = "two_tower"


class EnsembleRouter:
    """Request logic of every endpoint over member handles (see module docstring).

    ``members``: name -> handle of the members beside the two-tower, e.g. ``{"mf": ..., "ease": ...}``; a bare
    handle (or None) is the MF member alone, the two-member form of old.
    """

    def __init__(self, two_tower, members, encoder, catalog, weights: dict[str, float], liked_threshold: float = 4.0,
                 explain_items: int = 3, skew_retry_s: float = 15.0, catalog_poll_s: float = 0.5,
                 metrics: ServiceMetrics | None = None) -> None:
        if not isinstance(members, dict):
            members = {"mf": members}
        if TWO_TOWER in members:
            raise ValueError("the two-tower is the first argument, not one of the other members")
        self.tt, self.encoder, self.catalog = two_tower, encoder, catalog
        self.members = {m: h for m, h in members.items() if h is not None}
        # Asking the catalog (or a member) on every request would be an extra hop on the hot path: this replica
        # looks once per ``poll_s``, in the background, so no request waits for the look. That bounds how late
        # another ingress replica learns of an added item (the replica that served POST /items syncs at once, so
        # "recommendable at once" holds) and how long /recommend answers from the old tables after a hot swap.
        self.poll_s = catalog_poll_s
        self._catalog_checked = self._tables_checked = -float("inf")
        self._tables: dict[str, ScoreTable] | None = None  # member name -> its score table
        self._tasks: dict[str, asyncio.Task] = {}
        self.weights = dict(weights)
        self.liked_threshold, self.explain_items, self.skew_retry_s = liked_threshold, explain_items, skew_retry_s
        self.spaces: dict[str, tuple[IdMap, list]] = {}  # sha256 -> (item ids, item texts)
        self._lowered: dict[tuple, list[str]] = {}  # (two-tower, text source sha256) -> lower-case texts
        self.metrics = metrics
        self.aligned: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.new_ids: list = []
        self.new_texts: list[str] = []
        self.new_map = IdMap([])
        self.new_hidden: list[np.ndarray] = []
        self.new_sha: str | None = None
        self._lock = asyncio.Lock()
        self._encode_lock = asyncio.Lock()

    @property
    def mf(self):
        """The MF member's handle (the rating member beside the two-tower for ``/predict``), or None."""
        return self.members.get("mf")

    # ---- id spaces ----
    async def _space(self, handle, sha: str) -> tuple[IdMap, list]:
        if sha not in self.spaces:
            got_sha, ids = await handle.item_ids.remote()
            _, texts = await handle.item_texts.remote()  # None: the artifact carries no item texts
            self.spaces[got_sha] = (IdMap(ids), list(texts) if texts is not None else [None] * len(ids))
            if got_sha != sha:  # swapped between two calls: the newest map is the best guess
                return self.spaces[got_sha]
        return self.spaces[sha]

    async def _alignment(self, tt_sha: str, member: str, member_sha: str) -> tuple[np.ndarray, np.ndarray]:
        """(member index of each tt item or -1, tt index of each member item or -1), cached per artifact pair."""
        key = (tt_sha, member_sha)
        if key not in self.aligned:
            tt_map, _ = await self._space(self.tt, tt_sha)
            m_map, _ = await self._space(self.members[member], member_sha)
            tt_ids = pd.Index([str(v) for v in tt_map.ids])
            m_ids = pd.Index([str(v) for v in m_map.ids])
            self.aligned[key] = (m_ids.get_indexer(tt_ids), tt_ids.get_indexer(m_ids))
        return self.aligned[key]

    async def _member_index(self, tt_map: IdMap, tt_sha: str, member: str, idx: np.ndarray) -> np.ndarray:
        """Combined-space indices -> that member's item indices (-1 where it has no such item)."""
        m_sha = (await self.members[member].item_ids.remote())[0]
        tt_to_m, _ = await self._alignment(tt_sha, member, m_sha)
        return np.where(idx < len(tt_map), tt_to_m[np.minimum(idx, len(tt_map) - 1)], -1)

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

    async def _text(self, tt_map: IdMap, idx: int, text_src: tuple | None) -> str | None:
        """An item's text: run-time items' own, artifact items' from ``text_src`` = (member name, artifact sha256)
        of a member whose artifact carries the texts (None: no text)."""
        if idx >= len(tt_map):
            return self.new_texts[idx - len(tt_map)]
        if text_src is None:
            return None
        m_map, texts = await self._space(self._handle(text_src[0]), text_src[1])
        j = m_map.index(tt_map.ids[idx])
        return texts[j] if j is not None and j < len(texts) else None

    def _handle(self, name: str):
        return self.tt if name == TWO_TOWER else self.members[name]

    async def _text_source(self) -> tuple:
        """(name, sha256) of the texts' source: the first collaborative member, else the two-tower (whose
        artifact may carry the item table's texts too)."""
        for name, handle in self.members.items():
            return name, (await handle.item_ids.remote())[0]
        return TWO_TOWER, (await self.tt.item_ids.remote())[0]

    async def _filter_mask(self, tt_map: IdMap, tt_sha: str, n: int, text_src: tuple, item_filter) -> np.ndarray:
        """Items of the combined space whose text contains one of ``item_filter.contains_any`` (ignoring case)."""
        m_map, texts = await self._space(self._handle(text_src[0]), text_src[1])
        if all(t is None for t in texts) and not self.new_texts:
            raise ServingError(422, "filter: this service's artifacts carry no item texts to filter on")
        key = (tt_sha, text_src[1])
        if key not in self._lowered:  # each artifact item's text in the two-tower's order, lower case, once
            where = [m_map.index(raw) for raw in tt_map.ids]
            self._lowered[key] = [texts[j].lower() if j is not None and texts[j] else "" for j in where]
        lowered = self._lowered[key] + [t.lower() for t in self.new_texts]
        needles = [s.lower() for s in item_filter.contains_any]
        return np.fromiter((any(s in t for s in needles) for t in lowered[:n]), dtype=bool, count=n)

    def _in_background(self, name: str, fn) -> asyncio.Task:
        """The running task ``name``, or a new one running ``fn()`` (concurrent callers share one look)."""
        task = self._tasks.get(name)
        if task is None or task.done():
            task = self._tasks[name] = asyncio.create_task(fn())
        return task

    # ---- the members' score tables, held here for /recommend ----
    async def _score_tables(self) -> dict[str, ScoreTable]:
        """Every member's score table by name; fetched by the first request, then checked every ``poll_s`` in the
        background and fetched again when a member's artifact changed (a hot swap)."""
        if self._tables is None:
            await self._in_background("tables", self._fetch_tables)
        elif time.monotonic() - self._tables_checked >= self.poll_s:
            self._tables_checked = time.monotonic()
            self._in_background("tables", self._fetch_tables)
        return self._tables

    async def _fetch_tables(self) -> None:
        self._tables_checked = time.monotonic()
        names, handles = [TWO_TOWER, *self.members], [self.tt, *self.members.values()]
        shas = list(await asyncio.gather(*[h.sha256.remote() for h in handles]))
        if self._tables is not None and shas == [self._tables[n].sha256 for n in names]:
            return
        tables = await asyncio.gather(*[h.score_table.remote() for h in handles])
        for t in tables:
            texts = t.item_texts if t.item_texts is not None else [None] * len(t.item_ids)
            self.spaces.setdefault(t.sha256, (IdMap(t.item_ids), list(texts)))
        self._tables = dict(zip(names, tables))

    @staticmethod
    def _table_scores(user_id, tables: dict[str, ScoreTable]) -> dict[str, dict]:
        return {name: t.user_scores(user_id) for name, t in tables.items()}

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
            calls = [self._tt("user_scores", req.user_id)]
            calls += [h.call.remote("user_scores", req.user_id) for h in self.members.values()]
            results = dict(zip([TWO_TOWER, *self.members], await asyncio.gather(*calls)))
        else:  # the members' own arithmetic on their tables, without a hop per member
            results = self._table_scores(req.user_id, await self._score_tables())
            if not _known(results):
                # unknown here may only mean the tables predate a hot swap that added the user: finish any look
                # in flight (it may have started before the swap), then look once more
                await self._in_background("tables", self._fetch_tables)
                await self._in_background("tables", self._fetch_tables)
                results = self._table_scores(req.user_id, self._tables)
        if not _known(results):
            raise ServingError(404, f"unknown user_id {req.user_id!r} (use /cold-start/recommend for new users)")
        tt_res = results[TWO_TOWER]
        tt_map, _ = await self._space(self.tt, tt_res["sha256"])
        n = len(tt_map) + len(self.new_ids)
        mask = np.ones(n, dtype=bool)
        if req.candidate_item_ids is not None:
            mask[:] = False
            mask[self._combined_index(tt_map, req.candidate_item_ids)] = True
        members, seen, liked, text_src = await self._in_tt_space(tt_res, results, n)
        if req.exclude_seen:
            mask[np.concatenate(seen)] = False
        if req.exclude_item_ids:  # ids this service does not know cannot be recommended anyway: not an error
            known = [raw for raw in req.exclude_item_ids if raw in tt_map or raw in self.new_map]
            mask[self._combined_index(tt_map, known)] = False
        if req.filter is not None:
            mask &= await self._filter_mask(tt_map, tt_res["sha256"], n, text_src, req.filter)
        fused, top = self._fuse(members, mask, req.k)
        items = await self._items(tt_map, top, fused, members, text_src)
        if req.explain and len(top) and len(liked[0]):
            ex = await self._tt("explain", top, liked[0], self.explain_items)
            ratings = dict(zip(liked[0].tolist(), liked[1].tolist())) if liked[1] is not None else {}
            for item, hist, sims in zip(items, ex["history_idx"], ex["similarity"]):
                item["because_you_liked"] = [
                    {"item_id": self._raw_id(tt_map, int(h)), "text": await self._text(tt_map, int(h), text_src),
                     "rating": ratings.get(int(h)), "similarity": float(s)} for h, s in zip(hist, sims)]
        return {"user_id": req.user_id, "items": items, "versions": _versions(results)}

    async def _in_tt_space(self, tt_res: dict, results: dict[str, dict], n: int):
        """Every member's answer moved into the combined space: (scores by member name, seen-item index arrays,
        liked (items, ratings), text source). Liked items come from the first member that knows the user's
        ratings (the two-tower's history, unrated, without one); the texts from the first member that answered."""
        members = {TWO_TOWER: tt_res["scores"][:n] if tt_res["scores"] is not None else None}
        seen = [tt_res.get("seen", np.zeros(0, np.int64))]
        liked, text_src = (seen[0], None), None
        for name, res in results.items():
            if name == TWO_TOWER or res is None or res["scores"] is None:
                continue
            tt_to_m, m_to_tt = await self._alignment(tt_res["sha256"], name, res["sha256"])
            members[name] = _aligned(res["scores"], tt_to_m, n)
            in_tt = m_to_tt[res["seen"]]
            seen.append(in_tt[in_tt >= 0])
            if liked[1] is None and res.get("seen_ratings") is not None:
                liked = _liked(in_tt, res["seen_ratings"], self.liked_threshold)
            text_src = text_src or (name, res["sha256"])
        return members, seen, liked, text_src or (TWO_TOWER, tt_res["sha256"])

    def _fuse(self, members: dict, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Fused scores and the top ``k`` (timed: the fusion latency histogram)."""
        start = time.perf_counter()
        fused = fuse_scores(members, self.weights, mask)
        top = top_k(fused, k)
        if self.metrics is not None:
            self.metrics.fusion((time.perf_counter() - start) * 1e3)
        return fused, top

    async def recommend_batch(self, req: RecommendBatchRequest) -> dict:
        """Every user of the batch, in order; a user's own 4xx (unknown user, unknown candidate) is that entry's
        ``error``, not the batch's."""
        results = []
        for one in req.requests:
            try:
                results.append(await self.recommend(one))
            except ServingError as e:
                if e.status >= 500:
                    raise
                results.append({"user_id": one.user_id, "items": [], "versions": {},
                                "error": {"status": e.status, "detail": e.detail}})
        return {"results": results}

    async def predict(self, req: PredictRequest) -> dict:
        await self._sync_catalog()
        await self._look_for(req.item_ids)
        tt_sha = (await self.tt.item_ids.remote())[0]
        tt_map, _ = await self._space(self.tt, tt_sha)
        idx = self._combined_index(tt_map, req.item_ids)
        tt_res = await self._tt("predict", req.user_id, idx)
        mf_res, mf_ratings = None, np.full(len(idx), np.nan)
        if self.mf is not None:
            j = await self._member_index(tt_map, tt_res["sha256"], "mf", idx)
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
        return {"user_id": req.user_id, "predictions": preds,
                "versions": _versions({TWO_TOWER: tt_res, "mf": mf_res})}

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
        text_src = await self._text_source()
        items = [{"item_id": self._raw_id(tt_map, int(i)), "score": float(s),
                  "text": await self._text(tt_map, int(i), text_src), "member_scores": {"two_tower": float(s)}}
                 for i, s in zip(res["item_idx"], res["similarity"])]
        return {"items": items, "versions": {"two_tower": res["sha256"][:12]}}

    async def cold_start(self, req: ColdStartRequest) -> dict:
        if self.metrics is not None:
            self.metrics.cold_start()
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
        names, calls = [TWO_TOWER], [tt_call]
        if len(idx):  # every collaborative member folds the rated items in (items it does not know left out)
            for name, handle in self.members.items():
                j = await self._member_index(tt_map, tt_sha, name, idx)
                names.append(name)
                calls.append(handle.call.remote("fold_in", j[j >= 0], ratings[j >= 0]))
        results = dict(zip(names, await asyncio.gather(*calls)))
        tt_res = results[TWO_TOWER]
        tt_map, _ = await self._space(self.tt, tt_res["sha256"])
        n = len(tt_map) + len(self.new_ids)
        members = {TWO_TOWER: tt_res["scores"][:n]}
        text_src = None
        for name, res in results.items():
            if name != TWO_TOWER and res["scores"] is not None:
                members[name] = _aligned(res["scores"], (await self._alignment(tt_res["sha256"], name,
                                                                               res["sha256"]))[0], n)
                text_src = text_src or (name, res["sha256"])
        mask = np.ones(n, dtype=bool)
        mask[idx[idx < n]] = False
        fused, top = self._fuse(members, mask, req.k)
        items = await self._items(tt_map, top, fused, members, text_src or (TWO_TOWER, tt_res["sha256"]))
        return {"items": items, "versions": _versions(results)}

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
        await asyncio.gather(*handles, *[h.info.remote() for h in self.members.values()])
        return {"status": "ok"}

    async def version(self) -> dict:
        members = {TWO_TOWER: await self.tt.info.remote()}
        for name, handle in self.members.items():
            members[name] = await handle.info.remote()
        enc = await self.encoder.stats.remote()
        return {"members": members, "encoder_sha256": enc["sha256"], "weights": self.weights,
                "catalog_items": len(self.new_ids)}

    async def stats(self) -> dict:
        await self._sync_catalog(force=True)
        out = {"encoder": await self.encoder.stats.remote(), "catalog_items": len(self.new_ids)}
        if self.metrics is not None:
            out["metrics"] = self.metrics.snapshot()
        return out

    async def _items(self, tt_map, top, fused, members, text_src) -> list[dict]:
        # per-member lists first: numpy scalar access per item and member was a third of /recommend's time
        per = {m: [v if math.isfinite(v) else None for v in s[top].tolist()] if s is not None else [None] * len(top)
               for m, s in members.items()}
        return [{"item_id": self._raw_id(tt_map, i), "score": score, "text": await self._text(tt_map, i, text_src),
                 "member_scores": {m: v[pos] for m, v in per.items()}}
                for pos, (i, score) in enumerate(zip(top.tolist(), fused[top].tolist()))]


class _Retry(Exception):
    pass


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


def _known(results: dict[str, dict | None]) -> bool:
    """Whether any member knows the user (has scores)."""
    return any(r is not None and r["scores"] is not None for r in results.values())


def _versions(results: dict[str, dict | None]) -> dict[str, str]:
    return {n: r["sha256"][:12] for n, r in results.items() if r is not None}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress()
class EnsembleIngress:
    """HTTP ingress: FastAPI routes (``api.build_api``) over an ``EnsembleRouter`` of the member handles
    (``members``: name -> handle of the collaborative members; Serve passes handles nested in the dict)."""

    def __init__(self, two_tower, members, encoder, catalog, weights: dict[str, float],
                 max_body_bytes: int = 65536, liked_threshold: float = 4.0) -> None:
        self.router = EnsembleRouter(two_tower, members, encoder, catalog, weights, liked_threshold=liked_threshold,
                                     metrics=ServiceMetrics())
        self.max_body_bytes = max_body_bytes
        self._cpu = CpuClock()

    def __serve_build_asgi_app__(self):
        # the tokens of this replica's environment (lmrec serve forwards them: lmrec.serving.auth)
        return build_api(self.router, self.max_body_bytes, tokens=Tokens.from_env())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric hook: this replica's CPU use (``lmrec.serving.autoscaling``)."""
        return {CPU_METRIC: self._cpu.fraction()}
