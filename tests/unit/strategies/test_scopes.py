"""Fine-tuning scopes: frozen / full / LoRA (peft) and what trains under each."""

from __future__ import annotations

import copy

import pytest
import torch

from lmrec.strategies.scopes import apply_scope, count_parameters, has_lora, lora_targets, merge_lora


def test_frozen_and_full_scopes_toggle_every_encoder_weight(tiny_encoder):
    enc = tiny_encoder(layers=2)
    total = sum(p.numel() for p in enc.parameters())
    assert apply_scope(enc, "frozen").trainable == 0
    count = apply_scope(enc, "full")
    assert count.trainable == count.total == total


def test_lora_trains_only_adapters_and_reports_their_count(tiny_encoder, tokens):
    enc = tiny_encoder(layers=2, hidden=32)
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    count = apply_scope(enc, "lora", rank=4, alpha=8.0, targets=("query", "value"))
    # per adapted Linear: A [r, in] + B [out, r]; 2 layers x (query, value), 32 -> 32
    assert count.trainable == 2 * 2 * 4 * (32 + 32)
    assert has_lora(enc)
    assert all("lora_" in n for n, p in enc.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = tokens
    for _ in range(3):
        opt.zero_grad()
        enc.train()
        enc(ids, mask).pow(2).mean().backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        adapted = enc(ids, mask)
    merged = merge_lora(copy.deepcopy(enc))
    assert not has_lora(merged) and type(merged.backbone).__name__ == "BertModel"
    with torch.no_grad():
        torch.testing.assert_close(merged(ids, mask), adapted, atol=1e-5, rtol=1e-4)
    # base weights never moved: the adapters hold the whole update
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in enc.backbone.state_dict().items()
            if "lora_" not in k}
    for key, value in before.items():
        torch.testing.assert_close(base[key], value)
    assert not torch.allclose(merged.backbone.state_dict()["encoder.layer.0.attention.self.query.weight"],
                              before["encoder.layer.0.attention.self.query.weight"])


def test_lora_target_check_names_the_available_layers(tiny_encoder):
    enc = tiny_encoder(layers=1)
    assert lora_targets(enc.backbone, ("query", "nope")) == ["query"]
    with pytest.raises(ValueError, match="Linear layers are named"):
        lora_targets(enc.backbone, ("q_proj",))
    with pytest.raises(ValueError, match="unknown fine-tuning scope"):
        apply_scope(enc, "partial")


def test_count_parameters_counts_shared_tensors_once():
    lin = torch.nn.Linear(3, 3)
    seq = torch.nn.Sequential(lin, lin)
    assert count_parameters(seq).total == 12
