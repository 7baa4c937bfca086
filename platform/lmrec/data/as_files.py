"""A named dataset as the files ``data.streaming`` reads: its rows and rendered item texts, written once as Parquet.

The built-in loaders parse each publisher's own format (``u.data``, ``ratings.dat``, Amazon JSON lines) in memory;
the largest of them (ML-1M, 1M rows) fits any machine. Written out as two Parquet files, a named dataset then trains
through the same streamed path as your own files (``lmrec.data.stream``): Ray Data reads, splits and shards it, and
no Train worker gets a copy of the whole frame. The files live in the dataset cache, in a folder named by a digest
of the rows and the item template, so a second run reuses them and a changed template writes new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from lmrec.data.fetch import cache_root
from lmrec.data.registry import load_dataset
from lmrec.data.source import DataSource
from lmrec.data.text import default_item_template, render_item_texts

# the items file holds the rendered text in one column: the streamed path renders it with this template
TEXT_TEMPLATE = "{text}"
INTERACTIONS, ITEMS, DONE = "interactions.parquet", "items.parquet", "source.json"


def named_source(name: str, item_template: str | None = None, *, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> DataSource:
    """``name``'s rows (user_id, item_id, rating, timestamp) and item texts (item_id, text: rendered with
    ``item_template``, the dataset's default without) as Parquet files in the cache; the ``DataSource`` reading them
    (its item text is the ``text`` column: render it with ``TEXT_TEMPLATE``). Files already there are reused.

    On a cluster the folder must be readable from every node (Ray Data's read tasks run there): point
    ``$LMREC_CACHE_DIR`` at shared storage."""
    dataset = load_dataset(name, data_dir=data_dir)
    template = item_template or default_item_template(name)
    rows = dataset.interactions[["user_id", "item_id", "rating", "timestamp"]].reset_index(drop=True)
    items = pd.DataFrame({"item_id": dataset.items.sort_values("item_idx")["item_id"].to_numpy(),
                          "text": render_item_texts(dataset.items, template)})
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(items, index=False).to_numpy().tobytes())
    folder = cache_root(cache_dir) / "streaming" / f"{name}-{digest.hexdigest()[:16]}"
    if not (folder / DONE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # written beside, then renamed: a second job never reads half-written files
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
        rows.to_parquet(staging / INTERACTIONS, index=False, row_group_size=100_000)
        items.to_parquet(staging / ITEMS, index=False)
        (staging / DONE).write_text(json.dumps({"dataset": name, "item_template": template, "rows": len(rows),
                                                "items": len(items)}))
        try:
            os.replace(staging, folder)
        except OSError:  # another job wrote the same files first
            shutil.rmtree(staging, ignore_errors=True)
    return DataSource.model_validate({
        "name": name,
        "interactions": {"path": str(folder / INTERACTIONS)},
        "items": {"path": str(folder / ITEMS), "text_columns": ["text"]},
    })
