"""What ``lmrec data validate`` reports about a job's data: counts, the split, the item texts, and what looks wrong.

Bad input (a file that does not parse, a split that cannot apply, a template naming a missing column) is a
``DataError``; the checks here only collect what is legal but probably not meant (warnings), so a run is never
refused for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lmrec.data.schema import DataError, Dataset
from lmrec.data.splits import make_split
from lmrec.data.text import TemplateError, default_item_template, render_item_texts

if TYPE_CHECKING:
    from lmrec.config.train import DataSpec


@dataclass
class DataReport:
    """Counts (name -> value, in print order) and warnings about the data a job spec would train on."""

    counts: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        width = max(len(k) for k in self.counts)
        out = [f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}" for k, v in self.counts.items()]
        return out + [f"warning: {w}" for w in self.warnings]


def check_training_data(dataset: Dataset, data: DataSpec, rating_task: bool = True) -> DataReport:
    """Split ``dataset`` and render its item texts as training would; ``DataError`` where that fails."""
    try:
        texts = render_item_texts(dataset.items, data.item_template or default_item_template(dataset.name))
    except TemplateError as e:
        raise DataError(f"data.item_template: {e}") from None
    try:
        split = make_split(dataset, data.split)
    except ValueError as e:  # DataError included: a split the data cannot take
        raise DataError(f"data.split: {e}") from None
    inter = dataset.interactions
    ratings = inter["rating"].to_numpy()
    implicit = bool(dataset.meta.get("implicit", False))
    without_text = int(sum(not t for t in texts))
    rating_range = f"{ratings.min():g} .. {ratings.max():g}"
    counts = {
        "dataset": dataset.name,
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": len(inter),
        "ratings": "none (implicit: each interaction is 1.0)" if implicit else rating_range,
        "timestamps": "yes" if (inter["timestamp"].to_numpy() != 0).any() else "none",
        "items without text": without_text,
        "split": ", ".join(f"{part} {len(frame):,}" for part, frame in split.parts.items()),
    }
    warnings = []
    if without_text:
        warnings.append(f"{without_text} item(s) render an empty text (the encoder sees nothing for them)")
    if implicit and rating_task:
        warnings.append("no rating column: tasks.rating learns constant 1.0 ratings (set tasks.rating.weight: 0)")
    idle = dataset.n_items - int(np.unique(inter["item_idx"].to_numpy()).size)
    if idle:
        warnings.append(f"{idle} item(s) have no interactions (they are only ranked by their text)")
    if counts["timestamps"] == "none" and data.split.kind in ("temporal", "leave_last_k"):
        warnings.append(f"split {data.split.kind} orders by time, but no interaction has a timestamp")
    if len(split.test) == 0:
        warnings.append("the split's test part is empty")
    return DataReport(counts, warnings)
