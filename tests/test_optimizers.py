"""RowSparseAdam: the same updates as torch.optim.SparseAdam, computed by row indexing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.params import Params
from pipeline.training.optimizers import RowSparseAdam, make_optimizers
from pipeline.training.recipe import resolved


def _train(optimizer_class, steps: int = 25) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    table = nn.Embedding(50, 6, sparse=True, padding_idx=0)
    optimizer = optimizer_class(table.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        # repeated rows in a batch (summed by the coalesce), the padding row (no gradient), unused rows
        rows = torch.randint(0, 20, (8, 12), generator=generator)
        target = torch.randn(8, 6, generator=generator)
        loss = ((table(rows).mean(1) - target) ** 2).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return table.weight.detach(), optimizer.state[table.weight]


def test_row_sparse_adam_matches_torch_sparse_adam():
    ours, our_state = _train(RowSparseAdam)
    theirs, their_state = _train(torch.optim.SparseAdam)
    assert not torch.equal(ours, _train(RowSparseAdam, steps=0)[0])  # it did train
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_state["exp_avg"], their_state["exp_avg"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(our_state["exp_avg_sq"], their_state["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert int(our_state["step"]) == int(their_state["step"]) == 25
    assert torch.equal(ours[20:], _train(RowSparseAdam, steps=0)[0][20:])  # rows never used never move


def test_row_sparse_adam_state_survives_a_save_and_load(tmp_path):
    """Resume: the state round-trips through the state dict, and the next step is the same."""
    torch.manual_seed(0)
    table = nn.Embedding(10, 3, sparse=True)
    optimizer = RowSparseAdam(table.parameters(), lr=0.1)
    table(torch.tensor([[1, 2, 2]])).sum().backward()
    optimizer.step()
    torch.save({"table": table.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "state.pt")

    def next_step(table, optimizer):
        optimizer.zero_grad(set_to_none=True)
        table(torch.tensor([[2, 3]])).sum().backward()
        optimizer.step()
        return table.weight.detach().clone()

    expected = next_step(table, optimizer)
    restored_table = nn.Embedding(10, 3, sparse=True)
    restored = RowSparseAdam(restored_table.parameters(), lr=0.1)
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    restored_table.load_state_dict(saved["table"])
    restored.load_state_dict(saved["optimizer"])
    assert torch.equal(next_step(restored_table, restored), expected)


def test_row_sparse_adam_refuses_dense_gradients():
    table = nn.Embedding(4, 2)  # dense
    optimizer = RowSparseAdam(table.parameters())
    table(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients only"):
        optimizer.step()


def test_training_puts_the_bag_table_under_row_sparse_adam():
    from pipeline.models import build_model

    params = resolved(Params())
    model = build_model(params.model, vocab_size=30, num_classes=2)
    dense, sparse = make_optimizers(model, params.train)
    assert isinstance(sparse, RowSparseAdam)
    assert [p for group in sparse.param_groups for p in group["params"]] == [model.embedding.weight]
    assert all(p is not model.embedding.weight for group in dense.param_groups for p in group["params"])
