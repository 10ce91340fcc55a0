"""The optimizers: AdamW for dense weights, and Adam for sparse embedding gradients by plain
row indexing (RowSparseAdam); one optimizer step with the schedule's rate and clipping.

The same algorithm as torch.optim.SparseAdam ("lazy" Adam: only the rows a batch used move,
their moments decay only when used, one step count per table), computed with
index_select / index_copy_ on the touched rows instead of sparse-tensor arithmetic. On CPU,
SparseAdam's sparse_mask and dense-plus-sparse additions took 59% of a `bag` training step on
IMDB; this update takes less than half its time (BENCHMARKS.md, "Round 3").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.params import TrainParams


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


def make_optimizers(model: nn.Module, config: TrainParams) -> list[torch.optim.Optimizer]:
    """Sparse Adam for sparse embedding tables (only the rows a batch used move), AdamW for the
    rest, with weight decay on weight matrices and none on biases, norms and embeddings."""
    sparse, decay, no_decay = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.Embedding) and module.sparse:
                sparse.append(param)
            elif param.ndim >= 2 and not isinstance(module, nn.Embedding):
                decay.append(param)
            else:
                no_decay.append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)]
    if sparse:
        optimizers.append(RowSparseAdam(sparse, lr=config.lr))
    return optimizers


def optimizer_step(model: nn.Module, optimizers: list[torch.optim.Optimizer], clip_norm: float | None, lr: float) -> None:
    """One step of every optimizer at learning rate `lr`, dense gradients clipped to `clip_norm`."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if clip_norm is not None:
        # sparse embedding gradients are left out: they touch few rows and cannot be clipped in place
        dense = [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
        nn.utils.clip_grad_norm_(dense, clip_norm)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def dense_embeddings(model: nn.Module) -> bool:
    """Turn sparse embedding tables dense (for backends that cannot all-reduce sparse gradients);
    true if there were any."""
    found = False
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.sparse:
            module.sparse, found = False, True
    return found
