"""A named dataset written as the Parquet files ``data.streaming`` reads (``lmrec.data.as_files``)."""

from __future__ import annotations

import pandas as pd

from lmrec.data.as_files import DONE, TEXT_TEMPLATE, named_source
from lmrec.data.registry import load_dataset
from lmrec.data.text import default_item_template, render_item_texts


def test_a_named_dataset_becomes_files_with_its_rows_and_texts(data_dir, tmp_path):
    source = named_source("ml-100k", cache_dir=tmp_path)
    dataset = load_dataset("ml-100k")
    rows = pd.read_parquet(source.interactions.path)
    items = pd.read_parquet(source.items.path)
    assert len(rows) == len(dataset.interactions) == 100_000
    pd.testing.assert_frame_equal(rows, dataset.interactions[["user_id", "item_id", "rating", "timestamp"]]
                                  .reset_index(drop=True))
    assert items["item_id"].tolist() == dataset.item_ids.tolist()
    assert items["text"].tolist() == render_item_texts(dataset.items, default_item_template("ml-100k"))
    # the streamed path renders the one text column as it is
    assert render_item_texts(items.head(3), TEXT_TEMPLATE) == items["text"].head(3).tolist()
    assert source.name == "ml-100k" and source.items.text_columns == ["text"]


def test_the_files_are_reused_and_a_new_template_writes_new_ones(data_dir, tmp_path):
    first = named_source("ml-100k", cache_dir=tmp_path)
    done = (tmp_path / "streaming").glob(f"*/{DONE}")
    stamp = {p: p.stat().st_mtime_ns for p in done}
    again = named_source("ml-100k", cache_dir=tmp_path)
    assert again == first and {p: p.stat().st_mtime_ns for p in stamp} == stamp
    other = named_source("ml-100k", "{title}", cache_dir=tmp_path)
    assert other.items.path != first.items.path
    assert pd.read_parquet(other.items.path)["text"].iat[0] == load_dataset("ml-100k").items["title"].iat[0]
    assert not list((tmp_path / "streaming").glob(".ml-100k-*"))  # no staging folder left behind
