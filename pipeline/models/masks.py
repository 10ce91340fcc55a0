"""Masks over right-padded batches, shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of (batch, time, dim) where mask is true; zeros for an empty row."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def padding_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time of (batch, time, dim) where mask is true; zeros for an empty row."""
    lowest = torch.finfo(values.dtype).min
    # one masked step appended so that a batch of empty texts (time 0) still has a max
    values, mask = nn.functional.pad(values, (0, 0, 0, 1)), nn.functional.pad(mask, (0, 1))
    peak = values.masked_fill(~mask.unsqueeze(-1), lowest).amax(1)
    return torch.where(mask.any(1, keepdim=True), peak, torch.zeros_like(peak))
