"""Adam for sparse embedding gradients, by plain row indexing.

The same algorithm as torch.optim.SparseAdam ("lazy" Adam: only the rows a batch used move,
their moments decay only when used, one step count per table), computed with
index_select / index_copy_ on the touched rows instead of sparse-tensor arithmetic. On CPU,
SparseAdam's sparse_mask and dense-plus-sparse additions took 59% of a `bag` training step on
IMDB; this update takes less than half its time (BENCHMARKS.md, "Round 3").
"""

from __future__ import annotations

import math

import torch


class RowSparseAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam's update, row by row: for params whose gradients are sparse COO
    tensors over their first dimension (nn.Embedding(sparse=True), EmbeddingBag)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid RowSparseAdam settings: lr {lr}, betas {betas}, eps {eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam takes sparse gradients only; use AdamW for dense ones")
                grad = param.grad.coalesce()  # one entry per row: the update is not linear in the gradient
                rows, values = grad.indices()[0], grad.values()
                if values.numel() == 0:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                # rows are unique after coalesce: a read-modify-write is exact and much faster than index_add_
                param.index_copy_(0, rows, param.index_select(0, rows).sub_(update, alpha=step_size))
        return loss
