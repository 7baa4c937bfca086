"""Amazon Review Data (2018), "Magazine Subscriptions" category (Ni, Li & McAuley, EMNLP 2019).

The 5-core review file gives the interactions; the metadata file gives item text. The metadata is messy as
published: rows repeat (the first row per asin is kept), most ``title`` values are a cut-off HTML fragment
(dropped: only titles that do not start with "<" are kept) and descriptions carry HTML markup and entities
(stripped, so the encoder reads prose).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from lmrec.data.parsing import Column, DropLog, read_jsonl, require_file
from lmrec.data.schema import Dataset

REVIEWS_FILE = "Magazine_Subscriptions_5.json.gz"
METADATA_FILE = "meta_Magazine_Subscriptions.json.gz"
SOURCE_PAGE = "https://nijianmo.github.io/amazon/index.html"

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def clean_html(text: str) -> str:
    """Plain text from an HTML fragment: tags removed, entities decoded ("&amp;" -> "&"), spaces collapsed."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def load_amazon_magazine(folder: Path, *, lenient: bool = False) -> Dataset:
    """Amazon 2018 Magazine Subscriptions from ``folder`` (the 5-core reviews and the metadata, gzipped JSONL).

    Items: item_id (asin), title ("" where the published title is HTML), description (plain text),
    categories (list[str], HTML entities decoded), brand. Ids are strings.
    """
    folder = Path(folder)
    reviews_path = require_file(folder, REVIEWS_FILE, "amazon-magazine")
    metadata_path = require_file(folder, METADATA_FILE, "amazon-magazine")
    log = DropLog()
    review_columns = [
        Column("user_id", source="reviewerID"),
        Column("item_id", source="asin"),
        Column("rating", "float", source="overall", lo=1, hi=5),
        Column("timestamp", "int", source="unixReviewTime", lo=0),
    ]
    reviews = log.add(read_jsonl(reviews_path, review_columns, lenient=lenient))
    meta_columns = [
        Column("item_id", source="asin"),
        Column("title", required=False),
        Column("description", "list", required=False),
        Column("categories", "list", source="category", required=False),
        Column("brand", required=False),
    ]
    metadata = read_jsonl(metadata_path, meta_columns, lenient=lenient)
    # Duplicate metadata rows are a property of the published file, not an error: keep the first per asin.
    # The metadata covers the whole category (2,320 asins); the catalogue is the reviewed items.
    items = log.add(metadata).drop_duplicates("item_id", keep="first")
    items = items[items["item_id"].isin(reviews["item_id"])].reset_index(drop=True)
    items["title"] = items["title"].map(lambda t: "" if t.lstrip().startswith("<") else clean_html(t))
    items["description"] = items["description"].map(lambda parts: clean_html(" ".join(parts)))
    items["categories"] = items["categories"].map(lambda cats: [clean_html(c) for c in cats if clean_html(c)])
    items["brand"] = items["brand"].map(clean_html)
    meta = log.finish("amazon-magazine", {"source": str(folder)})
    return Dataset.build("amazon-magazine", reviews, items, None, meta=meta)
