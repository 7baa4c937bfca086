"""``PreparedData``: the dataset, split and tokenised texts of one run, built once and shipped to every worker.

Item texts are rendered and tokenised here, once, into fixed-width int32 arrays; training steps slice rows and
pad only to the longest text of the step. The object holds only numpy arrays and small frames so it pickles small
(Ray sends it once per worker). No module-level ``ray`` import: the Ray harness wraps ``train_frame()`` in a Ray
Dataset (streamed data, ``prepare_streamed``, imports Ray where it runs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from lmrec.config.base import SpecError
from lmrec.config.train import TrainSpec
from lmrec.data.schema import Dataset

TRAIN_COLUMNS = ["user_idx", "item_idx", "rating"]


@dataclass
class PreparedData:
    """Split frames (index columns only), tokenised texts, id maps and a fingerprint of what was trained on."""

    dataset: str
    n_users: int
    n_items: int
    train: pd.DataFrame
    valid: pd.DataFrame | None
    test: pd.DataFrame | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_tokens: np.ndarray  # [n_items, max_length] int32, right-padded
    item_lengths: np.ndarray  # [n_items] int32
    item_texts: list[str]
    user_tokens: np.ndarray | None = None
    user_lengths: np.ndarray | None = None
    cold_items: np.ndarray | None = None
    # items held out of training for validation (``data.valid_by: items``): validation ranks only these
    valid_items: np.ndarray | None = None
    split_params: dict = field(default_factory=dict)
    fingerprint: str = ""
    # Every interaction the model may know when ``train`` is only a sample of them (an incremental fine-tune
    # trains on new rows + a replay sample): user histories, the seen-item gate and the global mean come from it.
    context: pd.DataFrame | None = None
    lineage: dict = field(default_factory=dict)  # written to the artifact manifest (parent artifact, selection)

    def known(self) -> pd.DataFrame:
        """The interactions behind histories, seen items and the global mean: ``context`` if set, else train."""
        return self.train if self.context is None else self.context

    def trained_until(self) -> int | None:
        """Newest timestamp the run learned from (train, valid, context): the artifact's ``data_cutoff``."""
        stamps = [int(f["timestamp"].max()) for f in (self.known(), self.train, self.valid)
                  if f is not None and len(f) and "timestamp" in f]
        return max(stamps) if stamps and max(stamps) > 0 else None  # 0 = the dataset has no timestamps

    def train_frame(self) -> pd.DataFrame:
        """The training interactions Ray Data shards: columns user_idx, item_idx (int64), rating (float32)."""
        return self.train[TRAIN_COLUMNS].reset_index(drop=True)

    def iter_train_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        """Shuffled batches of this rank's shard, in Ray Data's ``iter_batches(batch_format="numpy")`` form."""
        frame = self.train_frame()
        order = np.random.default_rng([seed, epoch]).permutation(len(frame))[rank::world_size]
        cols = {c: frame[c].to_numpy() for c in TRAIN_COLUMNS}
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield {c: v[rows] for c, v in cols.items()}

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        shard = -(-self.n_train() // world_size)
        return -(-shard // batch_size)

    # What the model needs from the training interactions: computed from the frames here, precomputed by
    # ``StreamedData`` (whose interactions never sit on one machine).
    def n_train(self) -> int:
        return len(self.train)

    def rating_summary(self) -> tuple[float, float, float]:
        """Mean, min and max rating over ``known()``: the rating head's global mean and clamp range."""
        r = self.known()["rating"]
        return float(r.mean()), float(r.min()), float(r.max())

    def item_counts(self) -> np.ndarray:
        """Training interactions per item [n_items] (popularity priors, the sampled softmax's sampler)."""
        return np.bincount(self.train["item_idx"].to_numpy(), minlength=self.n_items)

    def known_item_counts(self) -> np.ndarray:
        """Interactions per item over ``known()``: nonzero = the item is seen (its ID embedding is on)."""
        return np.bincount(self.known()["item_idx"].to_numpy(), minlength=self.n_items)

    def history_matrix(self, max_history: int) -> np.ndarray:
        """[n_users, L] each user's most recent ``max_history`` known items, -1 = padding."""
        from lmrec.models.two_tower import history_matrix

        return history_matrix(self.known(), self.n_users, max_history).numpy()

    def seen_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user_idx, item_idx) of every training row: what a service of the model excludes."""
        return self.train["user_idx"].to_numpy(), self.train["item_idx"].to_numpy()


@dataclass
class StreamedData(PreparedData):
    """``PreparedData`` whose training interactions are a Ray Dataset (``lmrec.data.stream``), never a frame.

    ``train`` is None; ``context`` holds only the evaluation users' training rows (what validation and test
    exclude), and the summaries below stand for the rest. Workers read ``train_dataset`` through their shards.
    """

    train_dataset: object = None  # ray.data.Dataset: user_idx, item_idx, rating
    train_rows: int = 0
    rating_summary_: tuple = (0.0, 0.0, 0.0)
    train_item_counts: np.ndarray | None = None
    train_history: np.ndarray | None = None
    newest_timestamp: int | None = None

    def n_train(self) -> int:
        return self.train_rows

    def rating_summary(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.rating_summary_)

    def item_counts(self) -> np.ndarray:
        return self.train_item_counts

    known_item_counts = item_counts

    def history_matrix(self, max_history: int) -> np.ndarray:
        if self.train_history.shape[1] > max_history:
            raise ValueError(f"histories were gathered {self.train_history.shape[1]} wide, not {max_history}")
        return self.train_history

    def seen_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Streamed from ``train_dataset`` (int32: 8 bytes a row, 200 MB at 25M rows), on the exporting rank."""
        users, items = [], []
        for batch in self.train_dataset.iter_batches(batch_format="numpy", batch_size=1 << 20):
            users.append(batch["user_idx"].astype(np.int32))
            items.append(batch["item_idx"].astype(np.int32))
        return np.concatenate(users), np.concatenate(items)

    def trained_until(self) -> int | None:
        return self.newest_timestamp

    def train_frame(self) -> pd.DataFrame:
        raise TypeError("streamed data has no training frame: read train_dataset")

    def iter_train_batches(self, *args, **kwargs):
        raise TypeError("streamed data has no training frame: read train_dataset")


def _slice(dataset: Dataset, max_users: int | None, max_items: int | None) -> Dataset:
    """The first ``max_users`` users x first ``max_items`` items, re-indexed (CI-sized runs of real data)."""
    inter = dataset.interactions
    keep = np.ones(len(inter), dtype=bool)
    if max_users is not None:
        keep &= inter["user_idx"].to_numpy() < max_users
    if max_items is not None:
        keep &= inter["item_idx"].to_numpy() < max_items
    inter = inter[keep]
    items = dataset.items[dataset.items["item_id"].isin(inter["item_id"])].drop(columns="item_idx")
    users = dataset.users[dataset.users["user_id"].isin(inter["user_id"])].drop(columns="user_idx")
    return Dataset.build(dataset.name, inter, items, users, dataset.meta)


def fingerprint(dataset: str, split_params: dict, train: pd.DataFrame, item_texts: list[str]) -> str:
    """sha256 over what the model learned from: train rows, item texts, split parameters (hex, 16 chars)."""
    h = hashlib.sha256()
    h.update(json.dumps({"dataset": dataset, "split": split_params}, sort_keys=True, default=str).encode())
    for c in TRAIN_COLUMNS:
        h.update(np.ascontiguousarray(train[c].to_numpy()).tobytes())
    h.update("\x00".join(item_texts).encode("utf-8"))
    return h.hexdigest()[:16]


def build_prepared(
    spec: TrainSpec,
    dataset: Dataset,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    test: pd.DataFrame | None,
    item_texts: list[str],
    *,
    cold_items: np.ndarray | None = None,
    valid_items: np.ndarray | None = None,
    split_params: dict | None = None,
    tokenizer=None,
    context: pd.DataFrame | None = None,
) -> PreparedData:
    """Tokenise texts and pack split frames; used by ``prepare_data``, the incremental job and tests."""
    from lmrec.models.encoder import encoder_settings, load_tokenizer, tokenize_texts

    if len(item_texts) != dataset.n_items:
        raise ValueError(f"{len(item_texts)} item texts for {dataset.n_items} items")
    tokenizer = tokenizer or load_tokenizer(spec.model.encoder)
    # item texts are the passages, user texts the queries (prompts of model.pooling=auto; "" otherwise)
    settings = encoder_settings(spec.model.encoder, spec.model.pooling)
    ids, lengths = tokenize_texts(tokenizer, item_texts, spec.model.max_length, settings.passage_prompt)
    u_ids = u_len = None
    if spec.model.user_text:
        from lmrec.data.text import default_user_template, render_user_texts

        template = spec.data.user_template or default_user_template(dataset.name)
        # user texts may only reveal the training history (all of it when train is a sample of ``context``)
        history = train if context is None else context
        u_ids, u_len = tokenize_texts(tokenizer, render_user_texts(dataset, history, template), spec.model.max_length,
                                      settings.query_prompt)

    def compact(df: pd.DataFrame | None) -> pd.DataFrame | None:
        if df is None or len(df) == 0:
            return None
        cols = [c for c in ("user_idx", "item_idx", "rating", "timestamp") if c in df]
        out = df[cols].reset_index(drop=True).copy()
        out["user_idx"] = out["user_idx"].astype(np.int64)
        out["item_idx"] = out["item_idx"].astype(np.int64)
        out["rating"] = out["rating"].astype(np.float32)
        return out

    params = dict(split_params or {})
    train_c = compact(train)
    return PreparedData(
        dataset=dataset.name,
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        train=train_c,
        valid=compact(valid),
        test=compact(test),
        user_ids=dataset.user_ids,
        item_ids=dataset.item_ids,
        item_tokens=ids,
        item_lengths=lengths,
        item_texts=list(item_texts),
        user_tokens=u_ids,
        user_lengths=u_len,
        cold_items=cold_items,
        valid_items=valid_items,
        split_params=params,
        fingerprint=fingerprint(dataset.name, params, train_c, list(item_texts)),
        context=compact(context),
    )


def load_spec_dataset(spec: TrainSpec) -> Dataset:
    """``spec.data.dataset`` (or your files, ``spec.data.source``), cut to ``max_users`` x ``max_items`` when asked."""
    from lmrec.data.registry import load_dataset
    from lmrec.data.source import load_source

    dataset = load_source(spec.data.source) if spec.data.source is not None else load_dataset(spec.data.dataset)
    if spec.data.max_users is not None or spec.data.max_items is not None:
        dataset = _slice(dataset, spec.data.max_users, spec.data.max_items)
    return dataset


def prepare_data(spec: TrainSpec) -> PreparedData:
    """Load the dataset, make the split, render and tokenise item texts once (see module docstring)."""
    from lmrec.data.splits import make_split
    from lmrec.data.text import default_item_template, render_item_texts

    dataset = load_spec_dataset(spec)
    split = make_split(dataset, spec.data.split)
    train, valid = split.train, split.valid
    params = dict(split.params)
    valid_items = None
    if (valid is None or len(valid) == 0) and spec.data.valid_from_train > 0:
        # a fixed, seeded slice of train: early stopping must never look at the test part
        rng = np.random.default_rng([spec.seed, 7])
        if spec.data.valid_by == "items":
            items = np.unique(train["item_idx"].to_numpy())
            valid_items = np.sort(items[rng.random(len(items)) < spec.data.valid_from_train])
            is_valid = train["item_idx"].isin(valid_items).to_numpy()
            params["valid_by"] = "items"
        else:
            is_valid = rng.random(len(train)) < spec.data.valid_from_train
        train, valid = train[~is_valid], train[is_valid]
        params["valid_from_train"] = spec.data.valid_from_train
    texts = render_item_texts(dataset.items, spec.data.item_template or default_item_template(dataset.name))
    return build_prepared(
        spec, dataset, train, valid, split.test, texts, cold_items=split.cold_items, valid_items=valid_items,
        split_params=params,
    )


def _tokenize_items(texts: list[str], encoder: str, max_length: int, prompt: str) -> dict:
    """``tokenize`` of ``lmrec.data.stream``: one batch of item texts in the fixed-width arrays ``PreparedData``
    holds (the tokenizer is loaded once per batch of 4,096 texts, in the Ray Data task)."""
    from lmrec.models.encoder import load_tokenizer, tokenize_texts

    ids, lengths = tokenize_texts(load_tokenizer(encoder), texts, max_length, prompt)
    return {"tokens": ids, "length": lengths}


STREAMING_MIN_RAY = "2.60"


def check_streaming_ray() -> None:
    """``data.streaming`` needs Ray >= 2.60: in Ray 2.57 a Train worker that reads blocks the driver materialised
    fails ("Cannot register an out-of-scope/freed callback for object ...: it is not owned by this worker")."""
    import ray
    from packaging.version import Version

    if Version(ray.__version__) < Version(STREAMING_MIN_RAY):
        raise SpecError(f"data.streaming needs Ray >= {STREAMING_MIN_RAY} (installed: {ray.__version__}): its Train "
                        f"workers cannot read blocks the driver materialised; upgrade ray or turn streaming off")


def prepare_streamed(spec: TrainSpec) -> StreamedData:
    """``data.streaming``: ``lmrec.data.stream`` reads, splits and summarises the files with Ray Data (Ray must be
    running); the training rows stay a Ray Dataset that the workers read through their shards."""
    from functools import partial

    from lmrec.data.stream import TEST, TRAIN, VALID, stream_source
    from lmrec.models.encoder import encoder_settings

    check_streaming_ray()
    split, model = spec.data.split, spec.model
    settings = encoder_settings(model.encoder, model.pooling)
    source, template = spec.data.source, spec.data.item_template
    if source is None:  # a named dataset: its rows and rendered texts written once as Parquet, then read alike
        from lmrec.data.as_files import TEXT_TEMPLATE, named_source

        source, template = named_source(spec.data.dataset, template), TEXT_TEMPLATE
    tables = stream_source(
        source, item_template=template, seed=split.seed, test_frac=split.test_frac,
        valid_frac=split.valid_frac, valid_from_train=spec.data.valid_from_train, max_history=model.max_history,
        eval_users=spec.data.eval_users, eval_seed=spec.seed,
        tokenize=partial(_tokenize_items, encoder=model.encoder, max_length=model.max_length,
                         prompt=settings.passage_prompt),
    )
    s, parts = tables.summary, tables.parts
    return StreamedData(
        dataset=source.name, n_users=len(tables.user_ids), n_items=len(tables.item_ids), train=None,
        valid=parts[VALID] if len(parts[VALID]) else None, test=parts[TEST] if len(parts[TEST]) else None,
        user_ids=tables.user_ids, item_ids=tables.item_ids,
        item_tokens=np.stack(tables.items["tokens"].to_numpy()).astype(np.int32),
        item_lengths=tables.items["length"].to_numpy().astype(np.int32), item_texts=tables.items["text"].tolist(),
        split_params=tables.split_params, fingerprint=tables.digest(source.name), context=parts[TRAIN],
        train_dataset=tables.train, train_rows=s["rows"],
        rating_summary_=(s["rating_sum"] / s["rows"], s["rating_min"], s["rating_max"]),
        train_item_counts=s["item_counts"], train_history=tables.history, newest_timestamp=s["timestamp_max"] or None,
    )
