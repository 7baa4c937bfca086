"""Sparse ID rows (optim.sparse_id_grads): which runs use them, the step they give, clipping, checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmrec.config.train import TrainSpec
from lmrec.training.optimizers import SparseRowsOptimizer, clip_grad_norm, resolve_sparse_ids
from lmrec.training.recipe import TwoTowerRecipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_two_tower import data_for, one_thread, tiny_spec  # noqa: E402,F401  (one_thread: autouse)

BATCH_BOUND = {"tasks": {"click": {"negatives": "sampled", "num_negatives": 16}, "related": {"weight": 0}},
               "model": {"interest_bias": True}}


def _spec(sparse, **over) -> TrainSpec:
    optim = {"lr_encoder": 0, "sparse_id_grads": sparse, "lr_heads": 0.05, **over.pop("optim", {})}
    return tiny_spec(optim=optim, **{**BATCH_BOUND, **over})


def _step_batches(data, n: int) -> list[dict]:
    return list(data.iter_train_batches(0, 16, 0))[:n]


def test_auto_turns_sparse_rows_on_for_streamed_data_only():
    kw = {"batch_bound": True, "engine": "ddp"}
    assert resolve_sparse_ids("auto", streaming=True, **kw).on
    assert not resolve_sparse_ids("auto", streaming=False, **kw).on
    assert not resolve_sparse_ids(False, streaming=True, **kw).on
    assert resolve_sparse_ids(True, streaming=False, **kw).on
    # what cannot take sparse rows: auto stays dense and says why, an explicit request is an error
    for blocker in ({"batch_bound": False}, {"engine": "deepspeed"}):
        choice = resolve_sparse_ids("auto", streaming=True, **{**kw, **blocker})
        assert not choice.on and choice.reason.startswith("auto: off")
        with pytest.raises(ValueError, match="sparse_id_grads: true"):
            resolve_sparse_ids(True, streaming=True, **{**kw, **blocker})


def test_the_spec_refuses_sparse_rows_where_a_step_reads_every_row():
    with pytest.raises(ValueError, match="negatives: sampled"):
        tiny_spec(optim={"sparse_id_grads": True, "lr_encoder": 0})  # default click softmax over every item
    with pytest.raises(ValueError, match="engine ddp"):
        _spec(True, scaling={"engine": "deepspeed"})
    assert _spec("auto").optim.sparse_id_grads == "auto"


def test_a_sparse_step_equals_the_dense_one_then_leaves_unread_rows_alone():
    """First step: lazy Adam on the read rows is dense AdamW (unread rows have zero moments either way). Second
    step: dense AdamW keeps moving rows read only in step 1 on their momentum; the sparse step leaves them."""
    data = data_for(_spec(False))
    batches = _step_batches(data, 2)
    runs = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        recipe = TwoTowerRecipe(_spec(sparse), data, device=torch.device("cpu"))
        assert recipe.sparse_ids.on is sparse
        assert isinstance(recipe.optimizer, SparseRowsOptimizer) is sparse
        before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
        recipe.train_epoch(0, iter(batches[:1]))
        if sparse:  # the user table's gradient holds the batch's users only
            grad = recipe.model.user_tower.id_embedding.weight.grad
            assert grad.is_sparse
            assert set(grad.coalesce().indices()[0].tolist()) <= set(batches[0]["user_idx"].tolist())
        one = {k: v.clone() for k, v in recipe.model.state_dict().items()}
        recipe.train_epoch(1, iter(batches[1:2]))
        runs[sparse] = (before, one, {k: v.clone() for k, v in recipe.model.state_dict().items()})
    id_rows = {"user_tower.id_embedding.weight", "item_tower.id_embedding.weight", "user_bias.weight",
               "item_bias.weight", "interest_item_bias.weight"}
    for name, dense_value in runs[False][1].items():
        if name not in id_rows:
            torch.testing.assert_close(runs[True][1][name], dense_value, atol=1e-6, rtol=1e-5, msg=name)
            continue
        # the same rows move, each weight the same way and at most one LR far; the lengths differ only where the
        # gradient is near Adam's eps, which SparseAdam adds before the bias correction (AdamW after)
        delta = {s: runs[s][1][name] - runs[s][0][name] for s in (False, True)}
        assert torch.equal(delta[True].abs().amax(1) > 0, delta[False].abs().amax(1) > 0), name
        assert torch.equal(torch.sign(delta[True]), torch.sign(delta[False])), name
        assert float(delta[True].abs().max()) <= 0.05 * 1.0001
    users_1 = set(batches[0]["user_idx"].tolist()) - set(batches[1]["user_idx"].tolist())
    only_first = torch.tensor(sorted(users_1))
    assert len(only_first)
    key = "user_tower.id_embedding.weight"
    _, one_sparse, two_sparse = runs[True]
    _, one_dense, two_dense = runs[False]
    assert torch.equal(two_sparse[key][only_first], one_sparse[key][only_first])
    assert not torch.allclose(two_dense[key][only_first], one_dense[key][only_first])
    assert not torch.equal(one_sparse[key][only_first], runs[True][0][key][only_first])  # step 1 did move them


def test_clipping_counts_sparse_rows_like_their_dense_copy():
    torch.manual_seed(0)
    idx = torch.tensor([0, 3, 3, 7])
    values = torch.randn(4, 5) * 10
    sparse_p, dense_p = torch.nn.Parameter(torch.zeros(10, 5)), torch.nn.Parameter(torch.zeros(10, 5))
    other_a, other_b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    other_a.grad = torch.full((3,), 2.0)
    other_b.grad = other_a.grad.clone()
    sparse_p.grad = torch.sparse_coo_tensor(idx[None], values, (10, 5))  # uncoalesced: row 3 twice
    dense_p.grad = sparse_p.grad.to_dense()
    got = clip_grad_norm([sparse_p, other_a], 1.0)
    want = torch.nn.utils.clip_grad_norm_([dense_p, other_b], 1.0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(sparse_p.grad.to_dense(), dense_p.grad)
    torch.testing.assert_close(other_a.grad, other_b.grad)


def test_a_sparse_checkpoint_resumes_both_optimizers(tmp_path):
    spec = _spec(True)
    data = data_for(spec)
    batches = _step_batches(data, 3)
    a = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    a.train_epoch(0, iter(batches[:2]))
    a.validate()
    a.save_checkpoint(str(tmp_path))
    b = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    assert b.load_checkpoint(str(tmp_path)) == 1
    assert b.optimizer.sparse.state_dict()["state"]  # SparseAdam's moments came back
    a.train_epoch(1, iter(batches[2:]))
    b.train_epoch(1, iter(batches[2:]))
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, msg=name)
    dense = TwoTowerRecipe(_spec(False), data, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="sparse_id_grads"):
        a.optimizer.load_state_dict(dense.optimizer.state_dict())  # a dense run's checkpoint


def _two_rank_sum(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from lmrec.training.optimizers import all_reduce_sparse_rows

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    p, bias, unused = (torch.nn.Parameter(torch.zeros(*shape)) for shape in ((20, 3), (20, 1), (5, 2)))
    rows = torch.tensor([[1, 4, 4, 9], [4, 7]][rank])  # row 4 twice on rank 0, and on both ranks
    p.grad = torch.sparse_coo_tensor(rows[None], torch.arange(len(rows) * 3.0).reshape(-1, 3) + rank, (20, 3))
    bias.grad = None if rank == 0 else torch.sparse_coo_tensor(rows[None], torch.ones(len(rows), 1), (20, 1))
    all_reduce_sparse_rows([p, bias, unused])
    torch.save({"p": p.grad.to_dense(), "bias": bias.grad.to_dense(), "unused": unused.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_sparse_rows_are_averaged_over_the_ranks(tmp_path):
    """Two real gloo ranks: each ends with the mean of both ranks' dense gradients, rows read on one rank only and
    a table one rank never touched included."""
    import os

    import torch.multiprocessing as mp

    out = str(tmp_path / "grads")
    mp.spawn(_two_rank_sum, args=(29600 + os.getpid() % 300, out), nprocs=2)
    dense = []
    for rank, rows in enumerate(([1, 4, 4, 9], [4, 7])):
        g = torch.zeros(20, 3)
        g.index_add_(0, torch.tensor(rows), torch.arange(len(rows) * 3.0).reshape(-1, 3) + rank)
        dense.append(g)
    bias = torch.zeros(20, 1)
    bias[[4, 7]] = 1.0
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        torch.testing.assert_close(got["p"], (dense[0] + dense[1]) / 2)
        torch.testing.assert_close(got["bias"], bias / 2)
        assert got["unused"] is None
