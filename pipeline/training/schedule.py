"""The learning rate at each optimizer step."""

from __future__ import annotations

import math

from pipeline.params import TrainParams


def learning_rate(config: TrainParams, step: int, total_steps: int) -> float:
    """Linear warmup to `lr`, then cosine, linear or no decay to zero at `total_steps`."""
    warmup = int(config.warmup * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress)
