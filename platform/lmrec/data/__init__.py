"""Datasets: loaders for the named datasets and your own files, the common ``Dataset`` form, and item/user texts."""

from lmrec.data.fetch import download_dataset, resolve_dataset_dir
from lmrec.data.generic import load_custom
from lmrec.data.parsing import DataWarning
from lmrec.data.registry import DATASET_NAMES, load_dataset
from lmrec.data.schema import DataError, Dataset
from lmrec.data.text import (
    ItemTextTemplate,
    TemplateError,
    UserTextTemplate,
    default_item_template,
    default_user_template,
    render_item_texts,
    render_user_texts,
)

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "DataWarning",
    "Dataset",
    "ItemTextTemplate",
    "TemplateError",
    "UserTextTemplate",
    "default_item_template",
    "default_user_template",
    "download_dataset",
    "load_custom",
    "load_dataset",
    "render_item_texts",
    "render_user_texts",
    "resolve_dataset_dir",
]
