"""Scale: retrieval over 10^6 items and synthetic data of MovieLens-25M shape (parts of issue "Scale").

Run: ``nice -n 10 python benchmarks/scale.py --part ann`` (then ``--part ann-serve``, ``--part ann-libraries``,
``--part data``, ``--part train``; each part merges its figures into benchmarks/results/scale.json, ``ann`` also
draws scale.png, ``train`` scale_train.png).

- ``ann``: 10^6 clustered item vectors (``lmrec.data.synthetic.clustered_vectors``, dim 64) and 1,000 users, k = 100.
  One ``/recommend``-sized query (batch 1) at a time: exact scoring (``ItemIndex`` below its threshold: dense
  product + partial sort) vs the faiss IVF index at several ``nprobe``; recall@100 against the exact top 100.
  ``summary.ann_recall_at_100`` and ``summary.ann_speedup_vs_exact`` (median exact latency ÷ median ANN latency) are
  at the index's default nprobe. Uniform random vectors (no neighbourhoods: the worst case) are reported beside.
- ``ann-serve``: one ``/recommend`` (k = 100, the user's 150 seen items excluded) as the ingress answers it,
  ``EnsembleRouter.recommend`` without HTTP, for a two-tower served alone over 10^6 clustered items (dim 64, an
  item bias): scoring every item (``retrieval.exact_below`` above the catalogue) vs the item index at its defaults
  (``lmrec.serving.retrieval``). Recall@100 of the answer's items against the exact answer's; the summary's
  ``ann_serve_speedup_vs_exact`` is the ratio of median latencies.
- ``ann-libraries``: how faiss was chosen over hnswlib: build time, batch-1 latency and recall@100 of faiss IVF,
  faiss HNSW and hnswlib HNSW on the same 200,000 clustered items, each at a few search efforts (HNSW on the
  Euclidean transform of ``ItemIndex`` too, since on raw inner products its recall stalls).
- ``train``: the cost curve of ``data.streaming``: ``lmrec train`` (the CLI, its own process and local Ray) on
  synthetic MovieLens-25M-shaped files of 1M, 5M and 25M interactions (``--sizes``), the frozen-encoder two-tower
  job (rating + click with 1,024 sampled negatives, 2 workers, 1 epoch, ``--batch-size`` rows per step per worker,
  8,192 by default; the ID rows sparse, as streamed jobs train them, ``--sparse-ids false`` for the dense ablation).
  The driver's and every Ray process's RSS is sampled every 0.5 s; ``summary.time_growth_exponent`` is the slope of
  log epoch time vs log interactions, ``peak_rss_gib_per_process`` the largest process, ``driver_peak_rss_gib``
  the driver; ``segment_exponents`` the slope between each pair of sizes. ``--key NAME`` records another curve
  beside it (its own figure, no summary).
- ``data``: ``write_parquet(..., "1m")`` timed, with the process's peak RSS (run it as its own process).
- ``figure``: scale.png redrawn from scale.json (ANN retrieval beside the training cost curve; ``ann`` and ``train``
  redraw it too).
- ``objective``: the click task's softmax over every warm item vs sampled negatives with the log-Q correction
  (``tasks.click.negatives: sampled``). Quality: ML-100K u1, the default job (jobs/ml100k-minilm-multitask.yaml,
  frozen MiniLM, same item encoding for every row), test NDCG@10 and RMSE, epochs picked on validation as the job
  does, plus the ablations that locate a loss (enough draws to hold every warm item, no early stopping, the click
  task alone). Cost: one click-loss forward + backward at 10^4-10^6 items (random item table, 256 positives,
  dim 64), the full softmax against 1,024 sampled negatives.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np

from harness import RESULTS, figure, save_figure, write_results

from lmrec.artifacts.ann import ItemIndex, default_nlist, top_k_rows
from lmrec.data.synthetic import SIZES, clustered_vectors, write_parquet

K = 100


def exact_top(items: np.ndarray, users: np.ndarray, k: int = K) -> np.ndarray:
    out = []
    for lo in range(0, len(users), 64):
        out.append(top_k_rows(users[lo : lo + 64] @ items.T, k)[0])
    return np.vstack(out)


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def one_at_a_time(search, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """search(user [1, dim]) -> ids [1, k] for each user alone: (ids [n, k], latencies ms [n])."""
    ids, ms = [], []
    for u in users:
        start = time.perf_counter()
        ids.append(search(u[None, :]))
        ms.append((time.perf_counter() - start) * 1e3)
    return np.vstack(ids), np.asarray(ms)


def latency_summary(ms: np.ndarray) -> dict:
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def merge_results(part: dict, summary: dict) -> None:
    """Merge one part's figures into scale.json (other parts' figures stay); each part records the machine and
    command it ran with (the top-level record is the latest part's)."""
    from harness import command, machine

    path = RESULTS / "scale.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    part = {name: {**figures, "machine": machine(), "command": command()} for name, figures in part.items()}
    write_results("scale", {**old, **part}, summary={**old.get("summary", {}), **summary})


def part_ann(n_items: int, n_users: int, dim: int, exact_users: int, budget_s: float) -> None:
    started = time.perf_counter()
    items, users = clustered_vectors(n_items, n_users, dim, seed=0)
    truth = exact_top(items, users)
    exact = ItemIndex.build(items, exact_below=n_items + 1)
    _, exact_ms = one_at_a_time(lambda u: exact.search(u, K)[0], users[:exact_users])
    start = time.perf_counter()
    index = ItemIndex.build(items)
    build_s = time.perf_counter() - start
    default = index.ann.nprobe
    curve = []
    for nprobe in sorted({16, 32, 64, default // 2, default, default * 2, default * 4}):
        index.ann.nprobe = nprobe
        ids, ms = one_at_a_time(lambda u: index.search(u, K)[0], users)
        curve.append({"nprobe": nprobe, "recall_at_100": round(recall(ids, truth), 4), **latency_summary(ms)})
        print(curve[-1], flush=True)
    index.ann.nprobe = default
    at_default = next(c for c in curve if c["nprobe"] == default)
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # a serving replica with one CPU
    _, one_thread_ms = one_at_a_time(lambda u: index.search(u, K)[0], users)
    faiss.omp_set_num_threads(threads)
    exact_lat = latency_summary(exact_ms)
    speedup = exact_lat["median_ms"] / at_default["median_ms"]
    # with exclusions (a user's 150 seen items) and a 50% filter, as /recommend asks
    seen = [np.random.default_rng(i).choice(n_items, 150, replace=False) for i in range(200)]
    allowed = np.flatnonzero(np.random.default_rng(1).random(n_items) < 0.5)
    filtered_ms = []
    for u, s in zip(users[:200], seen):
        start = time.perf_counter()
        index.search(u[None, :], K, exclude=[s], allowed=allowed)
        filtered_ms.append((time.perf_counter() - start) * 1e3)
    random_part = None
    if time.perf_counter() - started < budget_s / 2:  # the worst case, when the run has time for a second build
        r_items = np.random.default_rng(1).standard_normal((n_items, dim), dtype=np.float32)
        r_users = np.random.default_rng(2).standard_normal((n_users, dim), dtype=np.float32)
        r_truth = exact_top(r_items, r_users)
        r_index = ItemIndex.build(r_items)
        random_part = {}
        for nprobe in (default, default * 4):
            r_index.ann.nprobe = nprobe
            ids, ms = one_at_a_time(lambda u: r_index.search(u, K)[0], r_users[:300])
            random_part[f"nprobe_{nprobe}"] = {"recall_at_100": round(recall(ids, r_truth[:300]), 4),
                                               **latency_summary(ms)}
        del r_items, r_index
    part = {"ann": {
        "items": n_items, "dim": dim, "users": n_users, "k": K, "vectors": "clustered_vectors(seed=0): "
        f"{max(1, n_items // 1000)} topic centres, noise 0.5, log-normal norms",
        "index": {"kind": index.kind, "nlist": index.ann.nlist, "default_nprobe": default, "build_s": round(build_s, 1),
                  "faiss_threads": threads},
        "exact_batch1": {**exact_lat, "users_timed": exact_users},
        "ann_batch1_by_nprobe": curve,
        "ann_batch1_default_nprobe_one_faiss_thread": latency_summary(one_thread_ms),
        "ann_batch1_with_150_excluded_and_50pct_filter": latency_summary(np.asarray(filtered_ms)),
        "uniform_random_vectors": random_part,
    }}  # fmt: skip
    merge_results(part, {
        "ann_recall_at_100": at_default["recall_at_100"],
        "ann_speedup_vs_exact": round(speedup, 1),
        "ann_build_s": round(build_s, 1),
        "ann_items": n_items,
    })  # fmt: skip
    plot_overview()


def plot_overview() -> None:
    """scale.png from scale.json: ANN retrieval (``ann``) beside the training cost curve (``train``), whichever
    parts have run."""
    results = json.loads((RESULTS / "scale.json").read_text())
    ann, train = results.get("ann"), results.get("train")
    fig, axes = figure(1, 3 if train else 1, figsize=(15, 4.2) if train else (6.4, 4.2))
    axes = list(np.atleast_1d(axes))
    if ann:
        plot_ann(axes[0], ann["ann_batch1_by_nprobe"], ann["exact_batch1"], ann["items"], ann["index"]["build_s"])
    if train:
        plot_train(axes[-2], axes[-1], train["runs"], train["time_growth_exponent"])
    save_figure(fig, "scale")


def plot_train(ax_t, ax_m, runs: list[dict], slope: float | None) -> None:
    x = [r["interactions"] for r in runs]
    ax_t.loglog(x, [r["epoch_s"] for r in runs], "o-", label="one epoch (2 workers)")
    ax_t.loglog(x, [r["job_wall_s"] for r in runs], "s--", label="whole job (read, split, encode, epoch, export)")
    ax_t.set(xlabel="interactions", ylabel="seconds",
             title=f"streamed training, {runs[0]['batch_size']:,} rows/step: epoch slope {slope or 0:.2f}")
    ax_t.legend(fontsize=8)
    ax_m.semilogx(x, [r["peak_rss_gib_per_process"] for r in runs], "o-", label="largest process")
    ax_m.semilogx(x, [r["driver_peak_rss_gib"] for r in runs], "s--", label="driver")
    ax_m.axhline(4, color="grey", lw=0.8, ls=":")
    ax_m.axhline(2, color="grey", lw=0.8, ls=":")
    ax_m.set(xlabel="interactions", ylabel="peak RSS (GiB)", title="training memory")
    ax_m.legend(fontsize=8)


def plot_ann(ax, curve: list[dict], exact_lat: dict, n_items: int, build_s: float) -> None:
    ax.plot([c["median_ms"] for c in curve], [c["recall_at_100"] for c in curve], "o-", label="faiss IVF (nprobe)")
    for c in curve:
        ax.annotate(str(c["nprobe"]), (c["median_ms"], c["recall_at_100"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    ax.plot([exact_lat["median_ms"]], [1.0], "s", color="black", label="exact (dense product)")
    ax.axhline(0.98, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("median latency of one query, batch 1 (ms, log)")
    ax.set_ylabel("recall@100 vs exact")
    ax.set_title(f"Retrieval over {n_items:,} items, dim 64, k=100 (IVF build {build_s:.0f} s)", fontsize=10)
    ax.legend(loc="lower right")


class TableMember:
    """A two-tower member's surface over a synthetic score table: everything the router reads to answer a known
    user's ``/recommend`` (a real ``TwoTowerMember``'s ``table`` is the same ``ScoreTable``; the model behind it
    only serves cold users, new items and explanations)."""

    def __init__(self, table) -> None:
        from lmrec.serving.protocol import Capabilities

        self.capabilities = Capabilities(texts=True, rates=True)
        self.table, self.sha256, self.item_ids = table, table.sha256, table.item_ids
        self.info = {"kind": "synthetic", "n_items": len(table.item_ids)}


def part_ann_serve(n_items: int, n_users: int, dim: int, exact_users: int, seen_per_user: int = 150) -> None:
    import asyncio

    import faiss

    from lmrec.artifacts.tables import ScoreTable
    from lmrec.serving.api import RecommendRequest
    from lmrec.serving.app import LocalHandle, local_member
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.router import EnsembleRouter

    items, users = clustered_vectors(n_items, n_users, dim, seed=0)
    rng = np.random.default_rng(0)
    bias = rng.normal(0.0, 0.1, n_items).astype(np.float32)
    seen = rng.integers(0, n_items, (n_users, seen_per_user))
    table = ScoreTable("synthetic", list(range(n_users)), list(range(n_items)), users, items, bias, None,
                       np.arange(0, seen.size + 1, seen_per_user), seen.ravel())
    member = local_member(TableMember(table))

    def router(**retrieval) -> EnsembleRouter:
        return EnsembleRouter({"two_tower": member}, None, LocalHandle(ItemCatalogCore()), {"two_tower": 1.0},
                              **retrieval)

    exact, indexed = router(exact_below=n_items + 1), router()

    async def timed(r: EnsembleRouter, n: int) -> tuple[list[dict], np.ndarray]:
        answers, ms = [], []
        for u in range(n):
            start = time.perf_counter()
            answers.append(await r.recommend(RecommendRequest(user_id=u, k=K)))
            ms.append((time.perf_counter() - start) * 1e3)
        return answers, np.asarray(ms)

    async def run():
        start = time.perf_counter()
        await indexed.recommend(RecommendRequest(user_id=0, k=K))  # fetches the table, builds the index
        build_s = time.perf_counter() - start
        await exact.recommend(RecommendRequest(user_id=0, k=K))
        want, exact_ms = await timed(exact, exact_users)
        got, ann_ms = await timed(indexed, n_users)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # an ingress replica with one CPU
        _, one_thread_ms = await timed(indexed, exact_users)
        faiss.omp_set_num_threads(threads)
        return build_s, want, exact_ms, got, ann_ms, one_thread_ms, threads

    build_s, want, exact_ms, got, ann_ms, one_thread_ms, threads = asyncio.run(run())
    hits, score_diff = [], 0.0
    for a, b in zip(want, got):
        exact_scores = {i["item_id"]: i["score"] for i in a["items"]}
        hits.append(len(exact_scores.keys() & {i["item_id"] for i in b["items"]}) / K)
        score_diff = max([score_diff] + [abs(i["score"] - exact_scores[i["item_id"]]) for i in b["items"]
                                         if i["item_id"] in exact_scores])
    index = indexed._index.index
    exact_lat, ann_lat = latency_summary(exact_ms), latency_summary(ann_ms)
    speedup = exact_lat["median_ms"] / ann_lat["median_ms"]
    part = {"ann_serve": {
        "items": n_items, "dim": dim, "users": n_users, "k": K, "seen_per_user": seen_per_user,
        "vectors": "clustered_vectors(seed=0) as in ann, plus an item bias N(0, 0.1)",
        "path": "EnsembleRouter.recommend (the ingress's /recommend without HTTP), a two-tower served alone; exact: "
                "retrieval.exact_below above the catalogue (every item scored, z-scored, top k), ANN: the defaults",
        "index": {"kind": index.kind, "nlist": index.ann.nlist, "nprobe": index.ann.nprobe,
                  "first_request_s": round(build_s, 1), "faiss_threads": threads},
        "exact_recommend": {**exact_lat, "users_timed": exact_users},
        "ann_recommend": {**ann_lat, "users_timed": n_users},
        "ann_recommend_one_faiss_thread": latency_summary(one_thread_ms),
        "recall_at_100": round(float(np.mean(hits)), 4), "users_compared": exact_users,
        "fused_score_max_abs_diff": float(f"{score_diff:.2g}"),
    }}  # fmt: skip
    print(json.dumps(part), flush=True)
    merge_results(part, {
        "ann_serve_recall_at_100": part["ann_serve"]["recall_at_100"],
        "ann_serve_speedup_vs_exact": round(speedup, 1),
        "ann_serve_exact_ms": exact_lat["median_ms"],
        "ann_serve_ms": ann_lat["median_ms"],
    })  # fmt: skip


def part_libraries(n_items: int, n_users: int, dim: int) -> None:
    import faiss
    import hnswlib

    items, users = clustered_vectors(n_items, n_users, dim, seed=0)
    truth = exact_top(items, users)
    rows = []

    def measure(name: str, build, searchers: dict) -> None:
        start = time.perf_counter()
        built = build()
        build_s = time.perf_counter() - start
        for effort, search in searchers.items():
            ids, ms = one_at_a_time(lambda u: search(built, u), users)
            rows.append({"library": name, "effort": effort, "build_s": round(build_s, 1),
                         "recall_at_100": round(recall(ids, truth), 4), **latency_summary(ms)})
            print(rows[-1], flush=True)

    def ivf_search(nprobe):
        def search(index, u):
            index.ann.nprobe = nprobe
            return index.search(u, K)[0]
        return search

    measure("faiss IVF-Flat (ItemIndex, Euclidean transform)", lambda: ItemIndex.build(items, exact_below=0),
            {f"nprobe={p}": ivf_search(p) for p in (8, 16, 32, 64)})
    norms = np.linalg.norm(items, axis=1)
    extra = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0))[:, None].astype(np.float32)
    transformed = np.ascontiguousarray(np.hstack([items, extra]))

    def pad(u):
        return np.hstack([u, np.zeros((1, 1), np.float32)])

    def faiss_hnsw(metric, table):
        def build():
            h = faiss.IndexHNSWFlat(table.shape[1], 32, metric)
            h.hnsw.efConstruction = 80
            h.add(table)
            return h
        return build

    def hnsw_search(ef, padded):
        def search(h, u):
            h.hnsw.efSearch = ef
            return h.search(pad(u) if padded else u, K)[1]
        return search

    measure("faiss HNSW-Flat M=32 efC=80 (Euclidean transform)", faiss_hnsw(faiss.METRIC_L2, transformed),
            {f"efSearch={ef}": hnsw_search(ef, True) for ef in (128, 256, 512)})
    measure("faiss HNSW-Flat M=32 efC=80 (inner product)", faiss_hnsw(faiss.METRIC_INNER_PRODUCT, items),
            {f"efSearch={ef}": hnsw_search(ef, False) for ef in (256,)})

    def hnswlib_build(space, table):
        def build():
            p = hnswlib.Index(space=space, dim=table.shape[1])
            p.init_index(max_elements=len(table), ef_construction=100, M=16, random_seed=0)
            p.add_items(table, num_threads=2)
            return p
        return build

    def hnswlib_search(ef, padded):
        def search(p, u):
            p.set_ef(ef)
            return p.knn_query(pad(u) if padded else u, k=K, num_threads=1)[0]
        return search

    measure("hnswlib M=16 efC=100 (Euclidean transform)", hnswlib_build("l2", transformed),
            {f"ef={ef}": hnswlib_search(ef, True) for ef in (128, 256, 512)})
    measure("hnswlib M=16 efC=100 (inner product)", hnswlib_build("ip", items),
            {f"ef={ef}": hnswlib_search(ef, False) for ef in (256,)})
    exact = ItemIndex.build(items, exact_below=n_items + 1)
    _, ms = one_at_a_time(lambda u: exact.search(u, K)[0], users[:200])
    part = {"ann_libraries": {
        "items": n_items, "dim": dim, "users": n_users, "k": K, "ivf_nlist": default_nlist(n_items),
        "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
        "hnswlib": getattr(hnswlib, "__version__", "0.8.0"),
        "exact_batch1": latency_summary(ms), "rows": rows,
    }}  # fmt: skip
    merge_results(part, {})


def part_data(size: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        files = write_parquet(folder, size, seed=0)
        seconds = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        import pyarrow.parquet as pq

        table = pq.read_table(files.interactions, columns=["user_id", "item_id"])
        per_user = np.bincount(table.column("user_id").to_numpy())[1:]
        per_item = np.sort(np.bincount(table.column("item_id").to_numpy(), minlength=files.n_items + 1)[1:])[::-1]
        stats = {
            "interactions": files.n_interactions, "users": files.n_users, "items": files.n_items,
            "items_rated": int((per_item > 0).sum()), "row_groups": files.row_groups,
            "min_ratings_per_user": int(per_user.min()), "median_ratings_per_user": float(np.median(per_user)),
            "top_1pct_items_share": round(float(per_item[: files.n_items // 100].sum() / per_item.sum()), 3),
            "interactions_mib": round(files.interactions.stat().st_size / 2**20, 1),
            "items_mib": round(files.items.stat().st_size / 2**20, 1),
        }  # fmt: skip
    part = {f"data_{size}": {"generation_s": round(seconds, 1), "peak_rss_gib": round(peak_gib, 3), **stats}}
    print(part, flush=True)
    merge_results(part, {f"data_{size}_generation_s": round(seconds, 1),
                         f"data_{size}_peak_rss_gib": round(peak_gib, 3)})


def objective_variants(samples: list[int]) -> list[tuple[str, dict]]:
    """(name, job overrides): the job as shipped with every warm item or ``samples`` negatives; then the ablations
    that locate the loss: enough draws to hold every warm item, no early stopping, the click task alone."""
    def sampled(n: int) -> dict:
        return {"tasks.click.negatives": "sampled", "tasks.click.num_negatives": n}

    click_only = {"tasks.rating.weight": 0.0, "early_stopping.metric": "val_ndcg@10", "early_stopping.mode": "max"}
    n = samples[-1]
    return [("all warm items", {}), *[(f"sampled {k}", sampled(k)) for k in samples],
            ("sampled 20000 (every warm item drawn)", sampled(20_000)),
            (f"sampled {n}, no early stopping", {**sampled(n), "early_stopping.patience": 100}),
            ("click task alone: all warm items", click_only),
            (f"click task alone: sampled {n}", {**click_only, **sampled(n)})]


def part_objective(samples: list[int], epochs: int | None, catalogues: list[int]) -> None:
    import torch

    from frozen_item_text import shared_item_text
    from harness import REPO

    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings
    from lmrec.training.data import prepare_data
    from lmrec.training.local import train_local

    job = REPO / "jobs" / "ml100k-minilm-multitask.yaml"
    data = prepare_data(load_spec(TrainSpec, job))
    item_text = shared_item_text(data)
    rows = {}
    for name, over in objective_variants(samples):
        spec = load_spec(TrainSpec, job, {**over, **({"optim.epochs": epochs} if epochs else {})})
        torch.manual_seed(0)
        res = train_local(spec, data, device="cpu", item_text=item_text)
        rec = res.recommender()
        row = {"variant": name, "overrides": over,
               "u1_ndcg@10": round(evaluate_ranking(rec, data.train, data.test, data.n_items, ks=(10,),
                                                    exclude_df=data.valid)["ndcg@10"], 4),
               "u1_rmse": round(evaluate_ratings(rec, data.test)["rmse"], 4), "epochs": len(res.epochs),
               "train_seconds": round(res.fit_seconds, 1)}
        rows[name] = row
        print(json.dumps(row), flush=True)
    cost = [click_loss_cost(n_items, samples[-1]) for n_items in catalogues]
    for c in cost:
        print(json.dumps(c), flush=True)
    n = samples[-1]
    full, shipped = rows["all warm items"]["u1_ndcg@10"], rows[f"sampled {n}"]["u1_ndcg@10"]
    alone_full = rows["click task alone: all warm items"]["u1_ndcg@10"]
    alone = rows[f"click task alone: sampled {n}"]["u1_ndcg@10"]
    merge_results({"objective": {
        "protocol": f"ML-100K u1, {job.relative_to(REPO)} (frozen MiniLM, early stopping on validation as the job "
                    "does; 'click task alone' picks epochs by val NDCG@10), test NDCG@10 and RMSE; cost: one click-"
                    "loss forward+backward, 256 positives, dim 64, random item table, Zipf popularity",
        "quality": list(rows.values()), "cost": cost}},
        {"sampled_vs_full_ndcg_ml100k": round(shipped / full, 4),
         "sampled_vs_full_ndcg_click_task_alone_ml100k": round(alone / alone_full, 4),
         "click_step_speedup_at_largest_catalogue": cost[-1]["speedup"]})


def click_loss_cost(n_items: int, num_negatives: int, repeats: int = 5) -> dict:
    """Median seconds of one click-loss forward + backward over ``n_items``: every warm item vs a sample."""
    import torch

    from lmrec.models.tasks import ClickTask, StepContext
    from lmrec.models.two_tower import TwoTowerModel
    from lmrec.models.encoder import build_encoder

    torch.manual_seed(0)
    model = TwoTowerModel(build_encoder("default", "mean", "random-tiny"), 1_000, n_items, dim=64,
                          ranking_head="interest", interest_bias=True)
    model.item_tower.seen[:] = True
    hidden = model.encoder.hidden_size
    counts = np.random.default_rng(0).zipf(1.3, n_items).clip(max=10**6)
    out = {"items": n_items}
    for mode in ("all", "sampled"):
        task = ClickTask(negatives=mode, num_negatives=num_negatives, max_rows=256)
        task.set_item_counts(counts)
        times = []
        for r in range(repeats):
            text = torch.randn(n_items, hidden)
            text_vec = model.item_text_vectors(text)
            item_vec = model.item_tower.combine(text_vec)
            user_idx = torch.randint(0, 1_000, (256,))
            item_idx = torch.as_tensor(np.random.default_rng(r).choice(n_items, 256, p=counts / counts.sum()))
            ctx = StepContext(user_idx, item_idx, torch.ones(256), text, item_vec, text_vec,
                              torch.zeros(n_items), torch.randn(256, 64), torch.Generator().manual_seed(r))
            start = time.perf_counter()
            loss, _ = task.loss(model, ctx)
            loss.backward()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        out[f"{mode}_seconds"] = round(float(np.median(times)), 4)
    out["speedup"] = round(out["all_seconds"] / out["sampled_seconds"], 2)
    return out


def _sample_rss(root_pid: int, peaks: dict, stop) -> None:
    """Every 0.5 s until ``stop`` is set: the peak RSS of ``root_pid`` (the driver) and of each process under it
    (Ray's own processes and its workers, by their process title), in bytes."""
    import psutil

    root = psutil.Process(root_pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                rss, title = p.memory_info().rss, " ".join(p.cmdline()[:1]) or p.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            key = "driver" if p.pid == root_pid else f"{p.pid} {title[:60]}"
            peaks[key] = max(peaks.get(key, 0), rss)
        stop.wait(0.5)


def train_spec(files, name: str, storage: str, batch_size: int, sparse_ids: str = "auto") -> dict:
    """The frozen-encoder two-tower job on streamed synthetic data: 1 epoch, 2 workers, sampled negatives; the ID
    rows sparse as streamed data gets them by default (``sparse_ids`` "false": the dense ablation)."""
    from lmrec.data.synthetic import data_source

    return {
        "name": name, "seed": 0,
        "data": {"source": data_source(files), "streaming": True, "eval_users": 2000,
                 "split": {"kind": "random", "test_frac": 0.1}},
        "model": {"max_history": 50, "dim": 64},
        "tasks": {"click": {"negatives": "sampled", "num_negatives": 1024}, "related": {"weight": 0}},
        "optim": {"epochs": 1, "lr_encoder": 0, "batch_size": batch_size, "log_every_steps": 200,
                  "sparse_id_grads": {"auto": "auto", "false": False}[sparse_ids]},
        "scaling": {"num_workers": 2, "storage_path": storage},
    }


def run_train_size(size: str, data_root: str, batch_size: int, sparse_ids: str = "auto") -> dict:
    """``lmrec train`` (the CLI, its own process and local Ray) on synthetic ``size``; RSS sampled throughout."""
    import os
    import subprocess
    import sys
    import threading
    from pathlib import Path

    import yaml

    folder = Path(data_root) / size
    generated = None
    if not (folder / "interactions.parquet").is_file():
        start = time.perf_counter()
        files = write_parquet(folder, size, seed=0)
        generated = round(time.perf_counter() - start, 1)
    else:
        from lmrec.data.synthetic import SyntheticFiles

        import pyarrow.parquet as pq

        meta = pq.ParquetFile(folder / "interactions.parquet").metadata
        shape = SIZES[size]
        files = SyntheticFiles(folder / "interactions.parquet", folder / "items.parquet", meta.num_rows,
                               shape.n_items, shape.n_users, meta.num_row_groups)
    with tempfile.TemporaryDirectory(prefix="lmrec-scale-") as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(train_spec(files, f"scale-{size}", f"{tmp}/runs", batch_size, sparse_ids)))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "lmrec.cli", "train", str(spec_path), "--no-resume"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        peaks: dict = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peaks, stop), daemon=True)
        sampler.start()
        out, _ = proc.communicate()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(f"lmrec train on {size} exited {proc.returncode}: {out[-2000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        history = json.loads((Path(result["run_path"]) / "lmrec_metrics.json").read_text())["history"]
        lineage = json.loads((Path(result["artifact"]) / "manifest.json").read_text())["lineage"]
    epoch = history[-1]
    gib = {k: v / 2**30 for k, v in peaks.items()}
    workers = {k: v for k, v in gib.items() if "RayTrainWorker" in k}
    return {
        "size": size, "interactions": files.n_interactions, "users": files.n_users, "items": files.n_items,
        "train_interactions": int(sum(v for k, v in epoch.items() if k.startswith("interactions_rank"))),
        "interactions_by_rank": [int(epoch[f"interactions_rank{r}"]) for r in range(2)],
        "epoch_s": round(float(epoch["seconds"]), 1), "job_wall_s": round(wall, 1),
        "steps_per_rank": int(epoch["steps"]), "batch_size": batch_size,
        "sparse_id_grads": lineage.get("sparse_id_grads", {}).get("on"),
        "driver_peak_rss_gib": round(gib.get("driver", 0.0), 3),
        "peak_rss_gib_per_process": round(max(gib.values()), 3),
        "peak_process": max(gib, key=gib.get),
        "train_worker_peak_rss_gib": round(max(workers.values()), 3) if workers else None,
        "val_rmse": epoch.get("val_rmse"), "val_ndcg@10": epoch.get("val_ndcg@10"),
        "test": {k: result["test"][k] for k in ("test_rmse", "test_ndcg@10", "test_recall@10") if k in result["test"]},
        "generation_s": generated,
    }


def part_train(sizes: list[str], data_root: str, batch_size: int, key: str = "train",
               sparse_ids: str = "auto") -> None:
    """The cost curve; ``key`` other than "train" records an ablation beside it (its own figure, no summary)."""
    runs = []
    for size in sizes:
        run = run_train_size(size, data_root, batch_size, sparse_ids)
        print(json.dumps(run), flush=True)
        runs.append(run)
    n = np.log([r["interactions"] for r in runs])
    slope = float(np.polyfit(n, np.log([r["epoch_s"] for r in runs]), 1)[0]) if len(runs) > 1 else None
    wall_slope = float(np.polyfit(n, np.log([r["job_wall_s"] for r in runs]), 1)[0]) if len(runs) > 1 else None
    fig, (ax_t, ax_m) = figure(1, 2, figsize=(10, 4))
    plot_train(ax_t, ax_m, runs, slope)
    save_figure(fig, f"scale_{key}")
    summary = {"max_interactions_trained": max(r["interactions"] for r in runs),
               "peak_rss_gib_per_process": max(r["peak_rss_gib_per_process"] for r in runs),
               "driver_peak_rss_gib": max(r["driver_peak_rss_gib"] for r in runs),
               "time_growth_exponent": None if slope is None else round(slope, 3),
               "job_time_growth_exponent": None if wall_slope is None else round(wall_slope, 3)}
    # slope of each consecutive pair of sizes: a straight line on the log-log plot has every one near 1
    segments = {f"{a['size']}->{b['size']}": round(float(np.log(b["epoch_s"] / a["epoch_s"])
                                                          / np.log(b["interactions"] / a["interactions"])), 3)
                for a, b in zip(runs, runs[1:])}
    merge_results({key: {"runs": runs, **summary, "segment_exponents": segments}}, summary if key == "train" else {})
    if key == "train":
        plot_overview()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("ann", "ann-serve", "ann-libraries", "data", "objective", "train", "figure"),
                        required=True)
    parser.add_argument("--sizes", nargs="+", default=["1m", "5m", "25m"], help="train: synthetic sizes trained")
    parser.add_argument("--data-root", default="/tmp/lmrec-scale", help="train: where the synthetic files are kept")
    parser.add_argument("--batch-size", type=int, default=8192, help="train: interactions per step per worker")
    parser.add_argument("--sparse-ids", choices=("auto", "false"), default="auto",
                        help="train: optim.sparse_id_grads ('false': the dense ID-row ablation)")
    parser.add_argument("--key", default="train", help="train: scale.json key (another key: an ablation beside it)")
    parser.add_argument("--samples", type=int, nargs="+", default=[256, 1024],
                        help="objective: sampled negatives per step, one run each (the last is the summary's)")
    parser.add_argument("--epochs", type=int, help="objective: epochs (the job's own without)")
    parser.add_argument("--catalogues", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="objective: catalogue sizes timed")
    parser.add_argument("--items", type=int, help="catalogue size (ann, ann-serve: 1,000,000; ann-libraries: 200,000)")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--exact-users", type=int, default=200, help="ann, ann-serve: users timed with exact scoring")
    parser.add_argument("--budget", type=float, default=480, help="ann: seconds after which optional steps are skipped")
    parser.add_argument("--size", default="1m", choices=tuple(SIZES), help="data: which named size to generate")
    args = parser.parse_args()
    if args.part == "ann":
        part_ann(args.items or 1_000_000, args.users, args.dim, args.exact_users, args.budget)
    elif args.part == "ann-serve":
        part_ann_serve(args.items or 1_000_000, args.users, args.dim, args.exact_users)
    elif args.part == "ann-libraries":
        part_libraries(args.items or 200_000, args.users, args.dim)
    elif args.part == "objective":
        part_objective(args.samples, args.epochs, args.catalogues)
    elif args.part == "train":
        part_train(args.sizes, args.data_root, args.batch_size, args.key, args.sparse_ids)
    elif args.part == "figure":
        plot_overview()
    else:
        part_data(args.size)


if __name__ == "__main__":
    main()
