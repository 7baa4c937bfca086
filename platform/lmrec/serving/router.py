"""The ensemble's request logic over N members, Ray-free: every endpoint of ``lmrec.serving.api``.

Members are a mapping name -> ``Member`` (a handle and its ``Capabilities``, ``lmrec.serving.protocol``); the
router knows a member only by what it can do, never by its name. Exactly one member scores texts: its item index
is the request's id space (its artifact's items, then the items added at run time), and only it answers run-time
items, similar-by-text, cold users with a profile text and explanations. The others are collaborative: each
ranks the users it was trained on in its own item index (aligned to the text member's by raw item id) and folds a
cold user in from their ratings. ``/predict`` blends the members that rate with ``rating_weights``.

Fusion is ``lmrec.strategies.fusion.fuse_scores``, the offline ensemble's own function: each member's scores are
z-scored over the request's candidate items (members live on different scales), then averaged with the weights.
An item a member cannot score (an item added at run time has no MF factors) gets that member's z = 0.

Handles answer ``await h.method.remote(...)``: ``DeploymentHandle``s in Serve (``lmrec.serving.ensemble``),
in-process objects in the benchmark's bare app (``lmrec.serving.app.build_bare_app``), so both run the identical
computation. Scoring a known user is a few small dot products, far cheaper than a Serve hop: the router keeps each
member's score table (fetched once per artifact version, re-checked in the background) and answers ``/recommend``
itself, calling members only for what needs their models. A two-tower served alone, above ``exact_below`` items,
is searched through an item index instead of scored item by item (``lmrec.serving.retrieval``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping

import numpy as np

from lmrec.artifacts.ann import EXACT_BELOW
from lmrec.artifacts.tables import IdMap, ScoreTable
from lmrec.serving.added_items import AddedItems, EncoderSwapped, SharedLook
from lmrec.serving.api import (
    AddItemRequest, ColdStartRequest, PredictRequest, RecommendBatchRequest, RecommendRequest, ServingError,
    SimilarItemsRequest,
)
from lmrec.serving.metrics import ServiceMetrics
from lmrec.serving.protocol import SKEW, Member
from lmrec.serving.retrieval import TableIndex
from lmrec.serving.spaces import ItemSpaces
from lmrec.strategies.fusion import fuse_scores, top_k

# per member, the artifact versions whose id maps and alignments stay cached: the current one, the one requests
# in flight during a hot swap may still answer from, and one spare
VERSIONS_PER_MEMBER = 3


class EnsembleRouter:
    """Request logic of every endpoint over member handles (see module docstring).

    ``members``: name -> ``Member``, in the order the router consults them (among the collaborative members, the
    first that knows a user's ratings gives the liked items of explanations, the first that answers the texts).
    ``weights``: fusion weights by member name; ``rating_weights``: ``/predict``'s blend (default ``weights``).
    ``exact_below``, ``nprobe``: a service whose only member is the text member searches its table through a
    ``TableIndex`` from ``exact_below`` artifact items on, scoring ``nprobe`` IVF cells per query (None: the
    index's default); below that, and for every ensemble, ``/recommend`` scores every item.
    """

    def __init__(self, members: Mapping[str, Member], encoder, catalog, weights: Mapping[str, float],
                 rating_weights: Mapping[str, float] | None = None, *, liked_threshold: float = 4.0,
                 explain_items: int = 3, skew_retry_s: float = 15.0, catalog_poll_s: float = 0.5,
                 metrics: ServiceMetrics | None = None, exact_below: int = EXACT_BELOW,
                 nprobe: int | None = None) -> None:
        texts = [name for name, m in members.items() if m.capabilities.texts]
        if len(texts) != 1:
            raise ValueError(f"exactly one member must score texts (the request's item space), got "
                             f"{texts or 'none'} among {list(members)}")
        self.text_name = texts[0]
        self.text = members[self.text_name].handle
        self.handles = {self.text_name: self.text, **{n: m.handle for n, m in members.items() if n != self.text_name}}
        self.collaborative = {n: h for n, h in self.handles.items() if n != self.text_name}
        self.raters = [n for n in self.handles if members[n].capabilities.rates]
        self.encoder, self.catalog, self.metrics = encoder, catalog, metrics
        self.weights = dict(weights)
        self.rating_weights = dict(rating_weights if rating_weights is not None else weights)
        self.liked_threshold, self.explain_items, self.skew_retry_s = liked_threshold, explain_items, skew_retry_s
        # asking the catalog (or a member) on every request would be an extra hop on the hot path: this replica
        # looks once per poll_s, in the background. That bounds how late it learns of an item another replica
        # added, and how long /recommend answers from the old tables after a hot swap.
        self.poll_s = catalog_poll_s
        self.added = AddedItems(catalog, encoder, catalog_poll_s)
        self.spaces = ItemSpaces(VERSIONS_PER_MEMBER * len(members))
        self._tables: dict[str, ScoreTable] | None = None  # member name -> its score table
        self._tables_checked = -float("inf")
        self._tables_look = SharedLook(self._fetch_tables)
        # the item index of the text member's table, for a service that fuses that member alone
        self.exact_below, self.nprobe = exact_below, nprobe
        self._indexable = not self.collaborative and self.weights.get(self.text_name, 0.0) > 0
        self._index: TableIndex | None = None
        self._index_lock = asyncio.Lock()

    # ---- id spaces ----
    async def _text_space(self) -> tuple[IdMap, str]:
        """The text member's current item ids and artifact sha256."""
        sha = await self.text.sha256.remote()
        text_map, _ = await self.spaces.of(self.text, sha)
        return text_map, sha

    async def _member_index(self, text_map: IdMap, text_sha: str, name: str, idx: np.ndarray) -> np.ndarray:
        """Combined-space indices -> member ``name``'s item indices (-1 where it has no such item)."""
        handle = self.handles[name]
        to_member, _ = await self.spaces.alignment(self.text, text_sha, handle, await handle.sha256.remote())
        return np.where(idx < len(text_map), to_member[np.minimum(idx, len(text_map) - 1)], -1)

    def _combined_index(self, text_map: IdMap, raw_ids: list) -> np.ndarray:
        """Raw ids -> indices in the combined space (artifact items, then run-time items); 404 on unknown ids."""
        out, unknown = [], []
        for raw in raw_ids:
            i = text_map.index(raw)
            if i is None and raw in self.added.map:
                i = len(text_map) + self.added.map.index(raw)
            (unknown.append(raw) if i is None else out.append(i))
        if unknown:
            raise ServingError(404, f"unknown item_id(s): {unknown[:20]}")
        return np.asarray(out, dtype=np.int64)

    async def _look_for(self, raw_ids: list) -> None:
        """When an id is neither an artifact item nor a run-time item this replica knows, finish a catalog look
        first: another replica may have added the item since this one last looked (no stale 404 for new items)."""
        if not all(raw in self.added.map or self.spaces.known(raw) for raw in raw_ids):
            await self.added.look.start()

    def _raw_id(self, text_map: IdMap, idx: int):
        return text_map.ids[idx] if idx < len(text_map) else self.added.ids[idx - len(text_map)]

    async def _text(self, text_map: IdMap, idx: int, text_src: tuple | None) -> str | None:
        """An item's text: run-time items' own, artifact items' from ``text_src`` = (handle, artifact sha256) of
        a member whose artifact carries the texts (None: no text)."""
        if idx >= len(text_map):
            return self.added.texts[idx - len(text_map)]
        if text_src is None:
            return None
        m_map, texts = await self.spaces.of(*text_src)
        j = m_map.index(text_map.ids[idx])
        return texts[j] if j is not None and j < len(texts) else None

    async def _text_source(self) -> tuple:
        """(handle, sha256) of the texts' source: the first collaborative member, else the text member (whose
        artifact may carry the item table's texts too)."""
        for handle in self.collaborative.values():
            return handle, await handle.sha256.remote()
        return self.text, await self.text.sha256.remote()

    async def _filter_mask(self, text_map: IdMap, text_sha: str, n: int, text_src: tuple, item_filter) -> np.ndarray:
        """Items of the combined space whose text contains one of ``item_filter.contains_any`` (ignoring case)."""
        lowered = await self.spaces.lowered_texts(self.text, text_sha, *text_src)
        if lowered is None and not self.added.texts:
            raise ServingError(422, "filter: this service's artifacts carry no item texts to filter on")
        texts = (lowered or [""] * len(text_map)) + [t.lower() for t in self.added.texts]
        needles = [s.lower() for s in item_filter.contains_any]
        return np.fromiter((any(s in t for s in needles) for t in texts[:n]), dtype=bool, count=n)

    # ---- the members' score tables, held here for /recommend ----
    async def _score_tables(self) -> dict[str, ScoreTable]:
        """Every member's score table by name; fetched by the first request, then checked every ``poll_s`` in the
        background and fetched again when a member's artifact changed (a hot swap)."""
        if self._tables is None:
            await self._tables_look.start()
        elif time.monotonic() - self._tables_checked >= self.poll_s:
            self._tables_checked = time.monotonic()
            self._tables_look.start()
        return self._tables

    async def _fetch_tables(self) -> None:
        self._tables_checked = time.monotonic()
        names, handles = list(self.handles), list(self.handles.values())
        shas = list(await asyncio.gather(*[h.sha256.remote() for h in handles]))
        if self._tables is not None and shas == [self._tables[n].sha256 for n in names]:
            return
        tables = await asyncio.gather(*[h.score_table.remote() for h in handles])
        for t in tables:
            self.spaces.add(t.sha256, t.item_ids, t.item_texts)
        tables = dict(zip(names, tables))
        # the new table's index is built before the tables change: until then the old pair answers (a hot swap)
        self._index = await self._table_index(tables[self.text_name])
        self._tables = tables

    async def _table_index(self, table) -> TableIndex | None:
        """The text member's table in an item index when ``/recommend`` searches it (see ``__init__``), else None;
        built in a thread (seconds at 10^6 items), once per artifact version."""
        if not (self._indexable and isinstance(table, ScoreTable) and len(table.item_ids) >= self.exact_below):
            return None
        if self._index is not None and self._index.sha256 == table.sha256:
            return self._index
        return await asyncio.to_thread(TableIndex, table, exact_below=self.exact_below, nprobe=self.nprobe)

    async def _index_added(self, index: TableIndex) -> bool:
        """Add the run-time items ``index`` lacks (``POST /items``), projected by the text member; False when the
        member now serves another artifact version than the index (a hot swap under way)."""
        async with self._index_lock:
            if len(self.added) > index.n_added:
                rows = await self._text_call("ranking_rows")
                if rows["sha256"] != index.sha256:
                    return False
                index.add(rows["vec"][index.n_added :], rows["const"][index.n_added :])
        return True

    async def _text_call(self, method: str, *args, query_text: str | None = None, query_kw: str = "hidden",
                         **kwargs):
        """Call the text member with the run-time items (and an encoded query text); retry while a hot swap has
        the encoder and the text member on different artifacts."""
        deadline = time.monotonic() + self.skew_retry_s
        while True:
            try:
                extra, sha = await self.added.encoded()
                if query_text is not None:
                    q_sha, q_vec = await self.encoder.encode.remote(query_text)
                    if sha is not None and q_sha != sha:
                        self.added.forget_encodings()
                        raise EncoderSwapped
                    kwargs[query_kw], sha = q_vec[None], q_sha
                out = await self.text.call.remote(method, *args, extra_hidden=extra, encoder_sha=sha, **kwargs)
                if not (isinstance(out, dict) and SKEW in out):
                    return out
                self.added.forget_encodings()
            except EncoderSwapped:
                pass
            if time.monotonic() > deadline:
                raise ServingError(503, "models are being swapped; retry shortly")
            await asyncio.sleep(0.1)

    # ---- endpoints ----
    async def recommend(self, req: RecommendRequest) -> dict:
        await self.added.sync()
        if req.candidate_item_ids is not None:
            await self._look_for(req.candidate_item_ids)
        if self._indexable:
            await self._score_tables()  # fetches the tables and builds the index of a large catalogue
            if self._index is not None:
                out = await self._recommend_indexed(req, self._index)
                if out is not None:
                    return out
        if len(self.added):  # items added at run time: only the text member can score them
            calls = [self._text_call("user_scores", req.user_id)]
            calls += [h.call.remote("user_scores", req.user_id) for h in self.collaborative.values()]
            results = dict(zip(self.handles, await asyncio.gather(*calls)))
        else:  # the members' own arithmetic on their tables, without a hop per member
            results = _table_scores(req.user_id, await self._score_tables())
            if not _known(results):
                # unknown here may only mean the tables predate a hot swap that added the user: finish any look
                # in flight (it may have started before the swap), then look once more
                await self._tables_look.start()
                await self._tables_look.start()
                results = _table_scores(req.user_id, self._tables)
        if not _known(results):
            raise ServingError(404, f"unknown user_id {req.user_id!r} (use /cold-start/recommend for new users)")
        text_res = results[self.text_name]
        text_map, _ = await self.spaces.of(self.text, text_res["sha256"])
        n = len(text_map) + len(self.added)
        scores, seen, liked, text_src = await self._in_text_space(text_res, results, n)
        mask, excluded = await self._eligible(req, text_map, text_res["sha256"], n, text_src, np.concatenate(seen))
        mask = np.ones(n, dtype=bool) if mask is None else mask
        mask[excluded] = False
        fused, top = self._fuse(scores, mask, req.k)
        items = await self._items(text_map, top, fused[top], _at(scores, top), text_src)
        if req.explain:
            await self._explain(items, top, liked, text_map, text_src)
        return {"user_id": req.user_id, "items": items, "versions": _versions(results)}

    async def _recommend_indexed(self, req: RecommendRequest, index: TableIndex) -> dict | None:
        """``recommend`` through the text member's item index (``lmrec.serving.retrieval``), with the same
        restrictions and the same fused score; None when the index cannot answer (a user its table does not know, or
        run-time items the member now projects from another artifact version): the caller scores every item."""
        table = index.table
        u = table.users.index(req.user_id)
        if u is None or not await self._index_added(index):
            return None
        text_map, _ = await self.spaces.of(self.text, index.sha256)
        text_src, seen = (self.text, index.sha256), table.seen(u)[0]
        allowed, excluded = await self._eligible(req, text_map, index.sha256, index.n_items, text_src, seen)
        start = time.perf_counter()
        top, member, fused = index.recommend(u, req.k, excluded, None if allowed is None else np.flatnonzero(allowed))
        self._fused_in(start)
        items = await self._items(text_map, top, fused, {self.text_name: member}, text_src)
        if req.explain:
            await self._explain(items, top, (seen, None), text_map, text_src)
        return {"user_id": req.user_id, "items": items, "versions": {self.text_name: index.sha256[:12]}}

    async def _eligible(self, req: RecommendRequest, text_map: IdMap, text_sha: str, n: int, text_src: tuple,
                        seen: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """What ``req`` lets ``/recommend`` return of the first ``n`` items of the combined space: (a mask of the
        items its candidates and filter allow, None when they allow every item; the item indices it excludes)."""
        allowed = None
        if req.candidate_item_ids is not None:
            allowed = np.zeros(n, dtype=bool)
            idx = self._combined_index(text_map, req.candidate_item_ids)
            allowed[idx[idx < n]] = True
        excluded = [seen] if req.exclude_seen else []
        if req.exclude_item_ids:  # ids this service does not know cannot be recommended anyway: not an error
            known = [raw for raw in req.exclude_item_ids if raw in text_map or raw in self.added.map]
            excluded.append(self._combined_index(text_map, known))
        if req.filter is not None:
            passes = await self._filter_mask(text_map, text_sha, n, text_src, req.filter)
            allowed = passes if allowed is None else allowed & passes
        return allowed, np.concatenate(excluded) if excluded else np.zeros(0, dtype=np.int64)

    async def _explain(self, items: list[dict], top: np.ndarray, liked: tuple, text_map: IdMap, text_src) -> None:
        """Each item's ``because_you_liked``: the user's liked items (``liked`` = (items, ratings or None)) closest
        to it in the text member's interest space."""
        if not (len(top) and len(liked[0])):
            return
        ex = await self._text_call("explain", top, liked[0], self.explain_items)
        ratings = dict(zip(liked[0].tolist(), liked[1].tolist())) if liked[1] is not None else {}
        for item, hist, sims in zip(items, ex["history_idx"], ex["similarity"]):
            item["because_you_liked"] = [
                {"item_id": self._raw_id(text_map, int(h)), "text": await self._text(text_map, int(h), text_src),
                 "rating": ratings.get(int(h)), "similarity": float(s)} for h, s in zip(hist, sims)]

    async def _in_text_space(self, text_res: dict, results: dict[str, dict], n: int):
        """Every member's answer moved into the combined space: (scores by member name, seen-item index arrays,
        liked (items, ratings), text source). Liked items come from the first member that knows the user's
        ratings (the text member's history, unrated, without one); the texts from the first member that answered."""
        scores = {self.text_name: text_res["scores"][:n] if text_res["scores"] is not None else None}
        seen = [text_res.get("seen", np.zeros(0, np.int64))]
        liked, text_src = (seen[0], None), None
        for name, res in results.items():
            if name == self.text_name or res is None or res["scores"] is None:
                continue
            handle = self.handles[name]
            to_member, to_text = await self.spaces.alignment(self.text, text_res["sha256"], handle, res["sha256"])
            scores[name] = _aligned(res["scores"], to_member, n)
            in_text = to_text[res["seen"]]
            seen.append(in_text[in_text >= 0])
            if liked[1] is None and res.get("seen_ratings") is not None:
                liked = _liked(in_text, res["seen_ratings"], self.liked_threshold)
            text_src = text_src or (handle, res["sha256"])
        return scores, seen, liked, text_src or (self.text, text_res["sha256"])

    def _fuse(self, scores: dict, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Fused scores and the top ``k`` (timed: the fusion latency histogram)."""
        start = time.perf_counter()
        fused = fuse_scores(scores, self.weights, mask)
        top = top_k(fused, k)
        self._fused_in(start)
        return fused, top

    def _fused_in(self, start: float) -> None:
        """Record one fusion + top k that began at ``start`` (``time.perf_counter``)."""
        if self.metrics is not None:
            self.metrics.fusion((time.perf_counter() - start) * 1e3)

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
        if not self.raters:
            raise ServingError(422, "no member of this service predicts ratings")
        await self.added.sync()
        await self._look_for(req.item_ids)
        text_map, text_sha = await self._text_space()
        idx = self._combined_index(text_map, req.item_ids)

        async def rate(name: str) -> tuple[dict, np.ndarray | None]:
            if name == self.text_name:
                res = await self._text_call("predict", req.user_id, idx)
                return res, res["ratings"]
            j = await self._member_index(text_map, text_sha, name, idx)
            res = await self.handles[name].call.remote("predict", req.user_id, np.maximum(j, 0))
            return res, (np.where(j >= 0, res["ratings"], np.nan) if res["ratings"] is not None else None)

        answers = dict(zip(self.raters, await asyncio.gather(*[rate(name) for name in self.raters])))
        per = {m: np.asarray(r, dtype=np.float64) if r is not None else np.full(len(idx), np.nan)
               for m, (_, r) in answers.items()}
        if not any(np.isfinite(v).any() for v in per.values()):
            raise ServingError(404, f"unknown user_id {req.user_id!r}")
        rating = blend_ratings(per, self.rating_weights)
        preds = [{"item_id": raw, "rating": float(rating[pos]),
                  "member_ratings": {m: float(v[pos]) if np.isfinite(v[pos]) else None for m, v in per.items()}}
                 for pos, raw in enumerate(req.item_ids)]
        return {"user_id": req.user_id, "predictions": preds,
                "versions": _versions({m: res for m, (res, _) in answers.items()})}

    async def similar_items(self, req: SimilarItemsRequest) -> dict:
        await self.added.sync()
        if req.item_id is not None:
            await self._look_for([req.item_id])
            text_map, _ = await self._text_space()
            idx = int(self._combined_index(text_map, [req.item_id])[0])
            res = await self._text_call("similar", req.k, item_idx=idx)
        else:
            res = await self._text_call("similar", req.k, query_text=req.text)
        text_map, _ = await self.spaces.of(self.text, res["sha256"])
        text_src = await self._text_source()
        items = [{"item_id": self._raw_id(text_map, int(i)), "score": float(s),
                  "text": await self._text(text_map, int(i), text_src), "member_scores": {self.text_name: float(s)}}
                 for i, s in zip(res["item_idx"], res["similarity"])]
        return {"items": items, "versions": {self.text_name: res["sha256"][:12]}}

    async def cold_start(self, req: ColdStartRequest) -> dict:
        if self.metrics is not None:
            self.metrics.cold_start()
        await self.added.sync()
        await self._look_for([r.item_id for r in req.ratings])
        text_map, text_sha = await self._text_space()
        idx = self._combined_index(text_map, [r.item_id for r in req.ratings])
        ratings = np.asarray([r.rating for r in req.ratings], dtype=np.float32)
        if req.profile_text:
            text_call = self._text_call("cold_user", idx, query_text=req.profile_text, query_kw="profile_hidden")
        else:
            text_call = self._text_call("cold_user", idx, profile_hidden=None)
        names, calls = [self.text_name], [text_call]
        if len(idx):  # every collaborative member folds the rated items in (items it does not know left out)
            for name, handle in self.collaborative.items():
                j = await self._member_index(text_map, text_sha, name, idx)
                names.append(name)
                calls.append(handle.call.remote("fold_in", j[j >= 0], ratings[j >= 0]))
        results = dict(zip(names, await asyncio.gather(*calls)))
        text_res = results[self.text_name]
        text_map, _ = await self.spaces.of(self.text, text_res["sha256"])
        n = len(text_map) + len(self.added)
        scores = {self.text_name: text_res["scores"][:n]}
        text_src = None
        for name, res in results.items():
            if name != self.text_name and res["scores"] is not None:
                handle = self.handles[name]
                to_member, _ = await self.spaces.alignment(self.text, text_res["sha256"], handle, res["sha256"])
                scores[name] = _aligned(res["scores"], to_member, n)
                text_src = text_src or (handle, res["sha256"])
        mask = np.ones(n, dtype=bool)
        mask[idx[idx < n]] = False
        fused, top = self._fuse(scores, mask, req.k)
        items = await self._items(text_map, top, fused[top], _at(scores, top),
                                  text_src or (self.text, text_res["sha256"]))
        return {"items": items, "versions": _versions(results)}

    async def add_item(self, req: AddItemRequest) -> dict:
        await self.added.sync(force=True)
        text_map, _ = await self._text_space()
        if req.item_id in text_map or req.item_id in self.added.map:
            raise ServingError(409, f"item_id {req.item_id!r} already exists")
        await self._text_call("similar", 1, query_text=req.text)  # the text encodes and projects: fail before storing
        version = await self.catalog.add.remote(req.item_id, req.text)
        if version < 0:
            raise ServingError(409, f"item_id {req.item_id!r} already exists")
        await self.added.sync(force=True)
        return {"item_id": req.item_id, "catalog_version": version, "recommendable": True}

    async def health(self) -> dict:
        await asyncio.gather(self.encoder.stats.remote(), self.catalog.since.remote(0),
                             *[h.info.remote() for h in self.handles.values()])
        return {"status": "ok"}

    async def version(self) -> dict:
        members = {name: await h.info.remote() for name, h in self.handles.items()}
        enc = await self.encoder.stats.remote()
        return {"members": members, "encoder_sha256": enc["sha256"], "weights": self.weights,
                "catalog_items": len(self.added)}

    async def stats(self) -> dict:
        await self.added.sync(force=True)
        out = {"encoder": await self.encoder.stats.remote(), "catalog_items": len(self.added)}
        if self.metrics is not None:
            out["metrics"] = self.metrics.snapshot()
        return out

    async def _items(self, text_map, top, fused, scores, text_src) -> list[dict]:
        """The answer's items: ``top`` (combined-space indices) with their ``fused`` scores and each member's
        (``scores``: member name -> an array aligned with ``top``, or None)."""
        # per-member lists first: numpy scalar access per item and member was a third of /recommend's time
        per = {m: [v if math.isfinite(v) else None for v in s.tolist()] if s is not None else [None] * len(top)
               for m, s in scores.items()}
        return [{"item_id": self._raw_id(text_map, i), "score": score, "text": await self._text(text_map, i, text_src),
                 "member_scores": {m: v[pos] for m, v in per.items()}}
                for pos, (i, score) in enumerate(zip(top.tolist(), np.asarray(fused).tolist()))]


def blend_ratings(ratings: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Per item, the weighted mean of the members' finite ratings, the weights renormalised over the members that
    rate that item and the terms summed in ``weights``' order (``FusedEnsemble.predict``'s arithmetic, so an
    ensemble served and offline give the same numbers); the plain mean where none of them has weight; NaN where no
    member rates the item. ``ratings``: member name -> [n_items] (NaN: no rating)."""
    names = [m for m in weights if m in ratings] + [m for m in ratings if m not in weights]
    vals = np.stack([np.asarray(ratings[m], dtype=np.float64) for m in names])
    ok = np.isfinite(vals)
    w = np.array([max(float(weights.get(m, 0.0)), 0.0) for m in names])[:, None] * ok
    total = w.sum(0)
    safe_total = np.where(total > 0, total, 1.0)
    blend = np.zeros(vals.shape[1])
    for j in range(len(names)):
        blend = blend + np.where(ok[j], w[j] / safe_total * np.where(ok[j], vals[j], 0.0), 0.0)
    mean = np.where(ok, vals, 0.0).sum(0) / np.maximum(ok.sum(0), 1)
    return np.where(ok.any(0), np.where(total > 0, blend, mean), np.nan)


def _table_scores(user_id, tables: dict[str, ScoreTable]) -> dict[str, dict]:
    return {name: t.user_scores(user_id) for name, t in tables.items()}


def _at(scores: dict[str, np.ndarray | None], top: np.ndarray) -> dict[str, np.ndarray | None]:
    """Each member's scores of the ``top`` items (None for a member without scores)."""
    return {m: s[top] if s is not None else None for m, s in scores.items()}


def _aligned(scores: np.ndarray, text_to_member: np.ndarray, n: int) -> np.ndarray:
    """A member's scores moved into the combined space (NaN where it has no such item)."""
    out = np.full(n, np.nan)
    ok = text_to_member >= 0
    out[: len(text_to_member)][ok] = scores[text_to_member[ok]]
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
