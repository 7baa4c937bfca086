"""Progressive unfreezing: which groups train, and at which LR, at each stage of the schedule."""

from __future__ import annotations

import pytest
import torch

from lmrec.strategies.unfreezing import ParamGroup, ProgressiveUnfreezing, encoder_layer_groups


class _Model(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.hidden_size, 1)


def _schedule(tiny_encoder, freeze_by="requires_grad", every=2):
    model = _Model(tiny_encoder(layers=3))
    heads = [ParamGroup("heads", list(model.head.parameters()), 1e-3)]
    return model, ProgressiveUnfreezing(model, heads, lr_encoder=1e-4, decay=0.5, every=every, freeze_by=freeze_by)


def test_groups_are_top_down_with_discriminative_lrs(tiny_encoder):
    model, sched = _schedule(tiny_encoder)
    names = [g.name for g in sched.encoder_groups]
    assert names == ["encoder.layer.2", "encoder.layer.1", "encoder.layer.0", "encoder.embeddings"]
    assert [g.lr for g in sched.encoder_groups] == pytest.approx([1e-4, 5e-5, 2.5e-5, 1.25e-5])
    covered = {id(p) for g in sched.all_groups for p in g.params}
    assert covered == {id(p) for p in model.parameters()}  # every weight in exactly one group
    assert sum(len(g.params) for g in sched.all_groups) == len(covered)


def test_schedule_unfreezes_one_group_per_stage_top_down(tiny_encoder):
    model, sched = _schedule(tiny_encoder, every=2)
    opt = torch.optim.AdamW(sched.groups(), lr=1.0)
    expected = {0: [], 1: [], 2: ["encoder.layer.2"], 3: ["encoder.layer.2"],
                4: ["encoder.layer.2", "encoder.layer.1"], 8: ["encoder.layer.2", "encoder.layer.1",
                                                              "encoder.layer.0", "encoder.embeddings"]}
    for t, enc_on in expected.items():
        trainable = sched.apply(opt, t)
        assert trainable == ["heads"] + enc_on
        assert sched.encoder_trains(t) == bool(enc_on)
        for group in opt.param_groups:
            on = group["name"] in trainable
            assert all(p.requires_grad == on for p in group["params"]), (t, group["name"])
            spec_lr = {g.name: g.lr for g in sched.all_groups}[group["name"]]
            assert group["lr"] == pytest.approx(spec_lr)


def test_frozen_groups_do_not_move_in_an_optimizer_step(tiny_encoder, tokens):
    model, sched = _schedule(tiny_encoder, every=1)
    opt = torch.optim.AdamW(sched.groups(), weight_decay=0.1)
    sched.apply(opt, 1)  # heads + top block
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask = tokens
    opt.zero_grad(set_to_none=True)
    model.head(model.encoder(ids, mask)).pow(2).mean().backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("head.") for n in moved)
    assert any(n.startswith("encoder.backbone.encoder.layer.2.") for n in moved)
    assert not any(n.startswith(("encoder.backbone.encoder.layer.1.", "encoder.backbone.embeddings.")) for n in moved)


def test_lr_mode_keeps_gradients_on_and_zeroes_frozen_lrs(tiny_encoder):
    """The DDP/DeepSpeed mode: requires_grad never changes, a frozen group's LR is 0."""
    model, sched = _schedule(tiny_encoder, freeze_by="lr", every=1)
    opt = torch.optim.AdamW(sched.groups())
    sched.apply(opt, 2)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["heads"] == 1e-3 and lrs["encoder.layer.2"] == 1e-4 and lrs["encoder.layer.1"] == 5e-5
    assert lrs["encoder.layer.0"] == 0.0 and lrs["encoder.embeddings"] == 0.0
    assert all(p.requires_grad for p in model.parameters())


def test_bad_settings_are_rejected(tiny_encoder):
    model = _Model(tiny_encoder(layers=1))
    with pytest.raises(ValueError):
        ProgressiveUnfreezing(model, [], 1e-4, decay=1.5)
    with pytest.raises(ValueError):
        ProgressiveUnfreezing(model, [], 1e-4, freeze_by="grad")
    assert len(encoder_layer_groups(model, 1e-4, 0.9)) == 2
