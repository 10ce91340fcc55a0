"""Checking and making splits: at least two classes, no unseen labels outside train,
stratified seeded samples and held-out shares."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, listed


def check_classes(train_labels: Iterable[str]) -> None:
    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise PipelineError(
            f"train has {len(classes)} class ({listed(classes, quote=True)}); a classifier needs at least two: "
            "check download.label_column"
        )


def check_labels_known(labels: dict[str, Iterable[str]], fix: str) -> None:
    """Every validation and test label occurs in train (a class the model never saw cannot be
    predicted); a PipelineError ending in `fix` otherwise."""
    known = set(labels["train"])
    for split in ("validation", "test"):
        unseen = sorted(set(labels[split]) - known)
        if unseen:
            raise PipelineError(f"{split} has labels that train does not have: {listed(unseen, quote=True)}; {fix}")


def stratified_pick(labels: pd.Series, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of `n` rows drawn so each class keeps its share (largest remainder)."""
    classes, inverse, counts = np.unique(labels.to_numpy(dtype=str), return_inverse=True, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(int)
    shortfall = n - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:shortfall]] += 1
    picked = [rng.choice(np.flatnonzero(inverse == c), quota[c], replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(picked))


def carve(frame: pd.DataFrame, fraction: float, rng: np.random.Generator, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a stratified, seeded share of `frame` as split `name`."""
    n = round(len(frame) * fraction)
    if n < 1 or n >= len(frame):
        raise PipelineError(
            f"cannot carve a {name} split of {fraction:.0%} from {len(frame)} train rows; "
            f"give more rows or change download.{name}_fraction"
        )
    held = np.zeros(len(frame), dtype=bool)
    held[stratified_pick(frame["label"], n, rng)] = True
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)
