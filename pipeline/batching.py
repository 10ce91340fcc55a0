"""Reading the tokenize stage's outputs (and the raw texts they came from), and grouping
documents into batches of similar length.

Torch-free (NumPy; pandas only to read texts) so that inference without torch can reuse it. Grouping by
length means little compute is spent on padding: documents are shuffled, sorted
by length inside pools of many batches, cut into batches, and the batches shuffled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd


class TokenizedSplit:
    """One split written by the tokenize stage, memory-mapped: nothing is copied until a batch is built."""

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            self.ids = np.load(folder / "ids.npy", mmap_mode="r")
            self.offsets = np.load(folder / "offsets.npy")
            self.labels = np.load(folder / "labels.npy")
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{folder}: cannot read tokenized data ({exc}); run the tokenize stage first") from None
        if len(self.offsets) != len(self.labels) + 1 or self.offsets[-1] != len(self.ids):
            raise PipelineError(f"{folder}: ids, offsets and labels do not match; rerun the tokenize stage")
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self):  # loader workers reopen the files instead of copying the arrays
        return TokenizedSplit, (self.folder,)

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 (batch, longest), lengths int64, labels int64), right-padded with 0."""
        lengths = self.lengths[indices].astype(np.int64)
        padded = np.zeros((len(indices), int(lengths.max(initial=0))), dtype=np.int64)
        for row, (index, length) in enumerate(zip(indices, lengths)):
            start = self.offsets[index]
            padded[row, :length] = self.ids[start : start + length]
        return padded, lengths, self.labels[indices].astype(np.int64)


def read_labels(processed: Path) -> list[str]:
    path = processed / "labels.json"
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the tokenize stage first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_test_texts(raw_test: Path, expected: int) -> pd.Series:
    """The test split's texts, checked to be the ones the tokenized test split came from."""
    import pandas as pd

    try:
        texts = pd.read_parquet(raw_test, columns=["text"])["text"]
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{raw_test}: cannot read the test texts ({exc}); rerun the download stage") from None
    if len(texts) != expected:
        raise PipelineError(f"{raw_test} has {len(texts):,} rows but the tokenized test split {expected:,}; rerun dvc repro")
    return texts


def read_vocab_size(processed: Path) -> int:
    path = processed / "vocab.json"
    try:
        return len(json.loads(path.read_text(encoding="utf-8"))["tokens"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: cannot read the vocabulary ({exc}); run the tokenize stage first") from None


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None, pool_batches: int = 50
) -> list[np.ndarray]:
    """Index batches of similar length. With `rng` (training): shuffled and seeded. Without
    (evaluation): longest first, so a too-large batch fails at once rather than at the end."""
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
