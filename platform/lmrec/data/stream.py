"""Streaming data: your files read with Ray Data, indexed, split and summarised without the driver holding them.

``data.streaming: true`` in a job spec with ``data.source`` sends the interactions through here instead of
``lmrec.data.generic`` (which reads whole files into pandas). The driver only ever holds what is as large as the
catalogue or the user list, never the interactions:

- **ID maps**: ``Dataset.unique`` over the interactions' user ids; the item ids are the items file's (read with
  Ray Data too; an interaction naming an item the file lacks is a ``DataError``).
- **Item texts**: rendered and tokenised in ``map_batches`` (each batch loads the tokenizer once); the driver
  collects the fixed-width token arrays, as ``PreparedData`` holds them for the in-memory path.
- **Index + split**: one ``map_batches`` pass maps ids to indices and assigns each row to train / valid / test by
  a seeded hash of (user, item) (``row_fold``): the same row lands in the same part whatever the block layout,
  so a rerun of the spec splits the same way. The result is materialised once in the object store (the reads,
  summaries and epochs reuse it; it lives in shared memory, not in the driver's heap).
- **Summaries** the model needs, as per-block reductions summed on the driver: row count, rating sum / min /
  max, newest timestamp, item popularity (``np.bincount`` per block); user histories (each user's most recent
  ``max_history`` items) by ``groupby("user_idx").map_groups``.
- **Evaluation**: a seeded sample of ``eval_users`` users; their valid and test rows and their training rows
  (what ranking excludes) are the only interactions collected on the driver.

Train workers read their shards of the training part with ``get_dataset_shard("train")``
(``lmrec.training.ray_train``); rank 0 streams the training pairs once more at export time, for the artifact's
seen-item table. Only the ``random`` split streams (``TrainSpec`` refuses the others): every other split needs a
global order (time, per-user ranks) that a per-row rule cannot give.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from lmrec.data.schema import DataError

log = logging.getLogger(__name__)

TRAIN, VALID, TEST = 0, 1, 2
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def row_fold(user_idx: np.ndarray, item_idx: np.ndarray, seed: int, test_frac: float, valid_frac: float,
             valid_from_train: float) -> np.ndarray:
    """TRAIN / VALID / TEST per row from a splitmix64 hash of (user_idx, item_idx, seed), uniform in [0, 1):
    below ``test_frac`` test, then ``valid_frac`` valid; of the rest, ``valid_from_train`` of the train rows
    become valid when the split has no valid part (as ``valid_from_train`` does in memory)."""
    with np.errstate(over="ignore"):
        x = (user_idx.astype(np.uint64) << np.uint64(32)) ^ item_idx.astype(np.uint64)
        x = x + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    fold = np.full(len(u), TRAIN, dtype=np.int8)
    fold[u < test_frac + valid_frac] = VALID
    fold[u < test_frac] = TEST
    if valid_frac == 0 and valid_from_train > 0:
        fold[(u >= test_frac) & (u < test_frac + (1 - test_frac) * valid_from_train)] = VALID
    return fold


def _reader(path: str, kind: str):
    """The Ray Data reader of one file (or folder of files) of ``kind``."""
    import pyarrow.csv as pacsv
    import ray.data

    if kind == "parquet":
        return ray.data.read_parquet(path)
    if kind == "jsonl":
        return ray.data.read_json(path, lines=True)
    if kind == "tsv":
        return ray.data.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
    return ray.data.read_csv(path)


def _format_of(path: str, given: str) -> str:
    from lmrec.data.generic import _format

    p = Path(path)
    if p.is_dir() and given in (None, "auto"):
        kinds = {_format(f) for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_"))}
        if len(kinds) != 1:
            raise DataError(f"{path}: a folder of interactions needs files of one format (found {sorted(kinds)}); "
                            f"give data.source.interactions.format")
        return kinds.pop()
    return _format(p, given)


def read_table(table, wanted: dict[str, str], optional: tuple[str, ...] = ()):
    """A Ray Dataset of ``table``'s file with its columns renamed to lmrec's (``wanted``: lmrec name -> default
    file name, overridden by the spec's ``columns``); a missing required column is a ``DataError``."""
    path = str(Path(table.path).expanduser())
    if not Path(path).exists():
        raise DataError(f"{path}: no such file")
    ds = _reader(path, _format_of(path, table.format))
    names = ds.schema().names
    rename = {}
    for ours, default in wanted.items():
        theirs = table.columns.get(ours, default)
        if theirs not in names:
            if ours in optional:
                continue
            raise DataError(f"{path}: no column {theirs!r} for {ours} (columns: {names})")
        rename[theirs] = ours
    return ds.select_columns(list(rename)).rename_columns(rename)


def _ids_unsorted(values) -> np.ndarray:
    """Ids as kept: integers when every one is an integer, else strings (as ``lmrec.data.generic`` keeps them)."""
    arr = np.asarray(values)
    return arr.astype(np.int64) if arr.dtype.kind in "iu" else arr.astype(str).astype(object)


def _ids(values) -> np.ndarray:
    return np.sort(_ids_unsorted(values))


def _lookup(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each of ``values`` in the sorted ``ids``; -1 for values not in it."""
    if ids.dtype == object:
        values = values.astype(str).astype(object)
    pos = np.searchsorted(ids, values)
    pos = np.minimum(pos, len(ids) - 1)
    return np.where(ids[pos] == values, pos, -1).astype(np.int64)


def _index_batch(batch: dict, user_ids, item_ids, seed, test_frac, valid_frac, valid_from_train) -> dict:
    users = _lookup(user_ids, np.asarray(batch["user_id"]))
    items = _lookup(item_ids, np.asarray(batch["item_id"]))
    n = len(users)
    rating = np.asarray(batch["rating"], dtype=np.float32) if "rating" in batch else np.ones(n, np.float32)
    stamp = np.asarray(batch["timestamp"], dtype=np.int64) if "timestamp" in batch else np.zeros(n, np.int64)
    ok = items >= 0
    fold = row_fold(users, np.maximum(items, 0), seed, test_frac, valid_frac, valid_from_train)
    fold[~ok] = -1  # an item the items file lacks: counted and refused by the caller
    return {"user_idx": users, "item_idx": items, "rating": rating, "timestamp": stamp, "fold": fold}


def _block_summary(batch: dict, n_items: int) -> dict:
    """One row per batch: counts, rating sum/min/max, newest timestamp, item popularity of its training rows."""
    fold = batch["fold"]
    train = fold == TRAIN
    r = batch["rating"][train]
    unknown = fold < 0
    return {
        "rows": np.array([int(train.sum())]),
        "valid_rows": np.array([int((fold == VALID).sum())]),
        "test_rows": np.array([int((fold == TEST).sum())]),
        "unknown_rows": np.array([int(unknown.sum())]),
        "rating_sum": np.array([float(r.sum(dtype=np.float64))]),
        "rating_min": np.array([float(r.min()) if len(r) else np.inf]),
        "rating_max": np.array([float(r.max()) if len(r) else -np.inf]),
        # what the model learned from (train and valid rows): the artifact's data_cutoff
        "timestamp_max": np.array([int(batch["timestamp"][(fold == TRAIN) | (fold == VALID)].max(initial=0))]),
        "user_sum": np.array([int(batch["user_idx"][train].sum())]),
        "item_sum": np.array([int(batch["item_idx"][train].sum())]),
        "item_counts": np.bincount(batch["item_idx"][train], minlength=n_items)[None, :],
    }


def _last_items(group: pd.DataFrame, width: int) -> pd.DataFrame:
    """One user's most recent ``width`` training items, oldest first, right-padded with -1."""
    g = group.sort_values(["timestamp", "item_idx"], kind="stable").tail(width)
    row = np.full(width, -1, dtype=np.int64)
    row[: len(g)] = g["item_idx"].to_numpy()
    return pd.DataFrame({"user_idx": [int(group["user_idx"].iat[0])], "history": [row]})


def _item_text_batch(batch: pd.DataFrame, template: str, tokenize: Callable | None) -> dict:
    """Render the batch's item texts; ``tokenize(texts)`` adds arrays (the training layer's tokenizer)."""
    from lmrec.data.generic import LIST_COLUMNS
    from lmrec.data.text import render_item_texts

    frame = batch.drop(columns=["item_id"])
    for name in LIST_COLUMNS:
        if name in frame and frame[name].map(lambda v: isinstance(v, str)).all():
            frame[name] = frame[name].map(lambda v: [x.strip() for x in v.split("|") if x.strip()])
    texts = render_item_texts(frame, template)
    out = {"item_id": batch["item_id"].to_numpy(), "text": np.array(texts, dtype=object)}
    if tokenize is not None:
        out.update(tokenize(texts))
    return out


def _train_rows(batch: dict) -> dict:
    keep = batch["fold"] == TRAIN
    return {k: np.asarray(batch[k])[keep] for k in ("user_idx", "item_idx", "rating", "timestamp")}


def _eval_users(n_users: int, count: int, seed: int) -> np.ndarray:
    if count >= n_users:
        return np.arange(n_users)
    return np.sort(np.random.default_rng([seed, 11]).choice(n_users, size=count, replace=False))


def _eval_rows(batch: dict, eval_users: np.ndarray) -> dict:
    keep = np.isin(batch["user_idx"], eval_users)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


@dataclass
class StreamedTables:
    """What ``stream_source`` leaves: id maps, the item table (text and the tokenizer's arrays, in ``item_ids``
    order), the materialised training rows, their summaries and the evaluation users' rows."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pd.DataFrame  # item_id, text, and what ``tokenize`` returned, one row per item_idx
    train: object  # ray.data.Dataset (materialised): user_idx, item_idx, rating, timestamp
    summary: dict  # _summarise's sums over the training rows
    history: np.ndarray  # [n_users, L] most recent training items, oldest first, -1 = padding
    parts: dict  # TRAIN / VALID / TEST -> the evaluation users' rows (pandas)
    eval_users: np.ndarray
    split_params: dict

    def digest(self, name: str) -> str:
        """sha256 over the split, the training rows' sums and popularity, and the item texts (16 hex chars)."""
        s = self.summary
        h = hashlib.sha256(json.dumps({"dataset": name, "split": self.split_params,
                                       "train": [s[k] for k in ("rows", "rating_sum", "user_sum", "item_sum")]},
                                      sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(s["item_counts"]).tobytes())
        h.update("\x00".join(self.items["text"]).encode("utf-8"))
        return h.hexdigest()[:16]


def stream_source(source, *, item_template: str, seed: int, test_frac: float, valid_frac: float = 0.0,
                  valid_from_train: float = 0.0, max_history: int = 256, eval_users: int = 2000,
                  eval_seed: int = 0, tokenize: Callable[[list[str]], dict] | None = None) -> StreamedTables:
    """Read, index, split and summarise ``source`` (a ``DataSource``) with Ray Data; see the module docstring."""
    started = time.perf_counter()
    inter = read_table(source.interactions, {"user_id": "user_id", "item_id": "item_id", "rating": "rating",
                                             "timestamp": "timestamp"}, optional=("rating", "timestamp"))
    items_table = source.items
    items = read_table(items_table, {"item_id": "item_id", **{c: c for c in items_table.text_columns}})
    user_ids = _ids(inter.unique("user_id"))
    texts = items.map_batches(_item_text_batch, batch_format="pandas", batch_size=4096,
                              fn_kwargs={"template": item_template, "tokenize": tokenize}).to_pandas()
    if texts["item_id"].duplicated().any():
        dup = texts.loc[texts["item_id"].duplicated(), "item_id"].iat[0]
        raise DataError(f"{items_table.path}: item {dup!r} has more than one row")
    keys = _ids_unsorted(texts["item_id"].to_numpy())
    order = np.argsort(keys, kind="stable")
    item_ids, texts = keys[order], texts.iloc[order].reset_index(drop=True)
    n_users, n_items = len(user_ids), len(item_ids)
    log.info("streaming %s: %d users, %d items (ids and texts in %.1f s)", source.name, n_users, n_items,
             time.perf_counter() - started)

    indexed = inter.map_batches(
        _index_batch, batch_format="numpy",
        fn_kwargs={"user_ids": user_ids, "item_ids": item_ids, "seed": seed, "test_frac": test_frac,
                   "valid_frac": valid_frac, "valid_from_train": valid_from_train},
    ).materialize()
    summary = _summarise(indexed, n_items)
    if summary["unknown_rows"]:
        raise DataError(f"{source.interactions.path}: {summary['unknown_rows']} interaction(s) name items that "
                        f"{items_table.path} lacks")
    if not summary["rows"]:
        raise DataError(f"{source.interactions.path}: no training interactions after the split")
    # materialised: Train workers take every CPU, so nothing may be left to compute while they read it
    train = indexed.map_batches(_train_rows, batch_format="numpy").materialize()
    history = _histories(train, n_users, max(1, max_history))

    users = _eval_users(n_users, eval_users, eval_seed)
    rows = indexed.map_batches(_eval_rows, batch_format="numpy", fn_kwargs={"eval_users": users}).to_pandas()
    parts = {f: rows[rows["fold"] == f].drop(columns="fold").reset_index(drop=True) for f in (TRAIN, VALID, TEST)}
    params = {"kind": "random", "seed": seed, "test_frac": test_frac, "valid_frac": valid_frac, "streamed": True,
              "eval_users": len(users)}
    if valid_frac == 0 and valid_from_train > 0:
        params["valid_from_train"] = valid_from_train
    log.info("streaming %s: %d train / %d valid / %d test rows; evaluation on %d users (%.1f s)", source.name,
             summary["rows"], summary["valid_rows"], summary["test_rows"], len(users),
             time.perf_counter() - started)
    return StreamedTables(user_ids, item_ids, texts, train, summary, history, parts, users, params)


def _histories(train, n_users: int, width: int) -> np.ndarray:
    """Each user's most recent ``width`` training items: a group-by on user (one hash shuffle)."""
    partitions = int(min(200, max(2, train.count() // 500_000)))
    grouped = train.groupby("user_idx", num_partitions=partitions).map_groups(
        _last_items, batch_format="pandas", fn_kwargs={"width": width})
    history = np.full((n_users, width), -1, dtype=np.int64)
    for batch in grouped.iter_batches(batch_format="numpy", batch_size=65536):
        history[batch["user_idx"]] = np.stack(batch["history"])
    return history[:, : max(1, int((history >= 0).sum(1).max(initial=1)))]


def _summarise(indexed, n_items: int) -> dict:
    """Sum the per-block summaries (``_block_summary``) on the driver: a row per block, never a row per row."""
    out: dict = {"rows": 0, "valid_rows": 0, "test_rows": 0, "unknown_rows": 0, "rating_sum": 0.0,
                 "rating_min": np.inf, "rating_max": -np.inf, "timestamp_max": 0, "user_sum": 0, "item_sum": 0,
                 "item_counts": np.zeros(n_items, dtype=np.int64)}
    blocks = indexed.map_batches(_block_summary, batch_format="numpy", batch_size=None,
                                 fn_kwargs={"n_items": n_items})
    for b in blocks.iter_batches(batch_format="numpy", batch_size=64):
        for key in ("rows", "valid_rows", "test_rows", "unknown_rows", "user_sum", "item_sum"):
            out[key] += int(b[key].sum())
        out["rating_sum"] += float(b["rating_sum"].sum())
        out["rating_min"] = min(out["rating_min"], float(b["rating_min"].min()))
        out["rating_max"] = max(out["rating_max"], float(b["rating_max"].max()))
        out["timestamp_max"] = max(out["timestamp_max"], int(b["timestamp_max"].max()))
        out["item_counts"] += np.asarray(b["item_counts"]).reshape(-1, n_items).sum(0)
    return out
