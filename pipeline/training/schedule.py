"""The learning rate at each optimizer step.

Warmup is counted in epochs and the plateau schedule moves with the run's own validations,
so that neither depends on `max_epochs`, a cap that early stopping rarely reaches: raising it
leaves a run that stops early unchanged. linear and cosine decay to zero at the cap (there
the cap is a budget, as in fine-tuning for a fixed number of epochs).
"""

from __future__ import annotations

import math

from pipeline.params import TrainParams


def learning_rate(config: TrainParams, step: int, steps_per_epoch: int, plateau_scale: float = 1.0) -> float:
    """Linear warmup to `lr` over `warmup` epochs; then plateau (`lr * plateau_scale`, which the
    trainer shrinks after each validation that does not improve), constant, or linear or
    cosine decay to zero at `max_epochs`."""
    warmup = int(config.warmup * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "plateau":
        return config.lr * plateau_scale
    if config.schedule == "constant":
        return config.lr
    total_steps = steps_per_epoch * config.max_epochs
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress)
