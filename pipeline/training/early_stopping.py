"""Early stopping on one validation metric, and which validation was the best."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tracker:
    """Early stopping on one validation metric."""

    monitor: str
    mode: str
    patience: int
    min_delta: float
    best: float | None = None
    best_step: int = 0
    best_epoch: float = 0.0  # epochs completed at the best validation
    bad_validations: int = 0

    @classmethod
    def for_params(cls, monitor: str, mode: str, patience: int, min_delta: float) -> Tracker:
        """`mode` auto: min for loss, max for the others."""
        return cls(monitor, mode if mode != "auto" else ("min" if monitor == "loss" else "max"), patience, min_delta)

    def better(self, value: float | None, than: float | None, margin: float = 0.0) -> bool:
        """Whether `value` beats `than` by more than `margin` in this mode (anything beats None)."""
        if value is None:
            return False
        return than is None or (value > than + margin if self.mode == "max" else value < than - margin)

    def update(self, value: float, step: int, epoch: float) -> bool:
        """Record a validation; true if it is the best so far."""
        better = self.better(value, self.best, self.min_delta)
        if better:
            self.best, self.best_step, self.best_epoch, self.bad_validations = value, step, epoch, 0
        else:
            self.bad_validations += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_validations > 0 and self.bad_validations >= self.patience
