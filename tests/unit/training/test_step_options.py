"""The training step's GPU options on CPU: gradient checkpointing (same loss and gradients, blocks really recomputed),
torch.compile (accepted and wired), both refused on a frozen encoder; and the on-device choice of the items to
encode (a seeded subset of the batch's distinct items)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.config.train import OptimSpec
from lmrec.training.recipe import TwoTowerRecipe, select_items

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_two_tower import data_for, one_thread, tiny_spec  # noqa: E402,F401  (one_thread: autouse)


def _one_step(**optim) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss, encoder gradients and encoder-block forward calls of one training step (fixed seed and batch)."""
    spec = tiny_spec(optim=optim)
    data = data_for(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    r.train_module.train()
    from lmrec.models.encoder import eval_mode_keep_checkpointing

    eval_mode_keep_checkpointing(r.model.encoder)  # as train_epoch does
    calls = []
    block = r.model.encoder.backbone.encoder.layer[0].attention
    block.register_forward_hook(lambda *_: calls.append(1))
    batch = next(data.iter_train_batches(0, 64, spec.seed))
    u, i, rating = (torch.as_tensor(np.asarray(batch[k])) for k in ("user_idx", "item_idx", "rating"))
    enc = torch.as_tensor(np.unique(batch["item_idx"])[:6])
    loss, _, _ = r.train_module(u.long(), i.long(), rating.float(), enc.long(), torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in r.model.encoder.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, len(calls)


def test_gradient_checkpointing_gives_the_same_step():
    loss, grads, calls = _one_step()
    loss_ckpt, grads_ckpt, calls_ckpt = _one_step(gradient_checkpointing=True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads and grads.keys() == grads_ckpt.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)
    # the block ran again in backward: checkpointing is active although the encoder trains in eval mode
    assert (calls, calls_ckpt) == (1, 2)


def test_compile_is_wired(monkeypatch):
    """torch.compile works on this CPU, but its first call took 125 s (2 busy cores): check that the recipe asks for
    it on the training encoder (in place, so the state dict keeps its keys), not the compiled speed."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    spec = tiny_spec(optim={"compile": True})
    r = TwoTowerRecipe(spec, data_for(spec), device=torch.device("cpu"))
    assert compiled == [("TextEncoder", {"dynamic": True})]
    assert all(not k.startswith("_orig_mod") for k in r.model.state_dict())
    compiled.clear()
    TwoTowerRecipe(tiny_spec(), data_for(spec), device=torch.device("cpu"))
    assert compiled == []  # off by default


@pytest.mark.parametrize("option", ["gradient_checkpointing", "compile"])
def test_encoder_options_refused_on_a_frozen_encoder(option):
    assert OptimSpec().gradient_checkpointing is False and OptimSpec().compile is False
    with pytest.raises(ValueError, match=f"optim.{option} apply to an encoder that trains"):
        OptimSpec(lr_encoder=0.0, **{option: True})


def test_select_items_is_a_seeded_subset_of_the_batch():
    items = torch.tensor([5, 3, 5, 9, 1, 3, 7, 7, 2, 8, 0, 9])
    distinct = set(items.tolist())
    pick = select_items(items, 4, torch.Generator().manual_seed(7))
    assert len(pick) == 4 and set(pick.tolist()) <= distinct and len(set(pick.tolist())) == 4
    assert torch.equal(pick, pick.sort().values) and pick.dtype == items.dtype
    assert torch.equal(pick, select_items(items, 4, torch.Generator().manual_seed(7)))  # reproducible
    draws = {tuple(select_items(items, 4, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 1  # random, not the first k
    assert select_items(items, 50, torch.Generator()).tolist() == sorted(distinct)  # k above the distinct count
    assert len(select_items(items, 0, torch.Generator())) == 0


def test_device_selection_in_the_step_is_reproducible():
    """The GPU's path of train_epoch (forced here on the CPU): k of each batch's items, the same run twice."""
    def epoch() -> dict:
        spec = tiny_spec()
        r = TwoTowerRecipe(spec, data_for(spec), device=torch.device("cpu"))
        r.select_on_device = True
        encoded = []
        r.model.encoder.register_forward_pre_hook(
            lambda _m, args: encoded.append(len(args[0])) if torch.is_grad_enabled() else None)
        logs = r.train_epoch(0, data_for(spec).iter_train_batches(0, r.batch_size, spec.seed))
        return {**logs, "encoded": encoded}

    first, second = epoch(), epoch()
    k = tiny_spec().optim.items_encoded_per_step
    assert first["encoded"] and all(n == k for n in first["encoded"])  # every batch has more than k items
    assert first["loss"] == second["loss"] and first["items_encoded"] == second["items_encoded"]
