"""Checking and making splits: at least two classes, no unseen labels outside train,
stratified seeded samples and held-out shares."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, listed


def is_label_set(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def flat(labels: Iterable) -> list[str]:
    """Every label of `labels`: its items, or the items of its label sets (multi-label data)."""
    return [label for value in labels for label in (value if is_label_set(value) else [value])]


def stratum(value: object) -> str:
    """A row's label, or its label set as one string: what stratified sampling keeps the shares of,
    and what de-duplication compares."""
    return "\x1f".join(value) if is_label_set(value) else str(value)


def check_classes(train_labels: Iterable) -> None:
    labels = list(train_labels)
    if labels and is_label_set(labels[0]):  # multi-label: one label that occurs is enough to learn
        if not flat(labels):
            raise PipelineError("train has no labels at all; check download.label_column, label_separator or label_columns")
        return
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise PipelineError(
            f"train has {len(classes)} class ({listed(classes, quote=True)}); a classifier needs at least two: "
            "check download.label_column"
        )


def check_labels_known(labels: dict[str, Iterable[str]], fix: str) -> None:
    """Every validation and test label occurs in train (a class the model never saw cannot be
    predicted); a PipelineError ending in `fix` otherwise."""
    known = set(flat(labels["train"]))
    for split in ("validation", "test"):
        unseen = sorted(set(flat(labels[split])) - known)
        if unseen:
            raise PipelineError(f"{split} has labels that train does not have: {listed(unseen, quote=True)}; {fix}")


def stratified_pick(labels: pd.Series, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of `n` rows drawn so each class keeps its share (largest remainder)."""
    classes, inverse, counts = np.unique(np.array([stratum(v) for v in labels], dtype=object).astype(str), return_inverse=True, return_counts=True)
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
