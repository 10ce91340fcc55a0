"""Masks over right-padded batches, shared by the architectures."""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over time of (batch, time, dim) where mask is true, weighted by (batch, time)
    weights if given; zeros for an empty row."""
    weights = mask.to(values.dtype) if weights is None else weights.to(values.dtype) * mask
    # a batched matrix product: no (batch, time, dim) copy of the values, in either direction
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1) / weights.sum(1, keepdim=True).clamp(min=torch.finfo(values.dtype).tiny)  # an empty row: 0 / tiny


def padding_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time of (batch, time, dim) where mask is true; zeros for a row with nothing
    unmasked. Time must be at least 1 (pad the input with one masked step where it may be 0)."""
    lowest = torch.finfo(values.dtype).min
    # max with indices, not amax: its backward scatters to one index per output instead of
    # comparing every value with the max
    peak = values.masked_fill(~mask.unsqueeze(-1), lowest).max(1).values
    return torch.where(mask.any(1, keepdim=True), peak, torch.zeros_like(peak))
