"""The frozen MiniLM encoding of every item text, computed once and shared by strategies.py and meta_cold_start.py.

Cached under runs/strategies/ by a hash of the texts (the encoding is split-independent), so the benchmarks that
start from the pretrained encoder do not each spend minutes of CPU re-encoding the catalogue.
"""

from __future__ import annotations

import hashlib

import torch

from harness import REPO

RUNS = REPO / "runs" / "strategies"


def shared_item_text(data) -> torch.Tensor:
    """One frozen MiniLM encoding of every item text of ``data`` (PreparedData), cached under runs/strategies/."""
    from lmrec.models.encoder import build_encoder, encode_all

    key = hashlib.sha256("\x00".join(data.item_texts).encode()).hexdigest()[:16]
    path = RUNS / f"item_text_minilm_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    encoder = build_encoder("default")
    text = encode_all(encoder, torch.as_tensor(data.item_tokens), torch.as_tensor(data.item_lengths), 128)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(text, path)
    return text
