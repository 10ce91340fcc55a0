"""The tokenized splits (data/processed), written by `tokenize` and read by every later stage,
and grouping documents into batches of similar length.

Per split, in data/processed/<split>/:
  ids.npy      int32, every document's token ids back to back
  offsets.npy  int64, document i is ids[offsets[i]:offsets[i+1]]
  labels.npy   int64 class ids (index into labels.json); for multi-label data a uint8 0/1
               matrix, documents x classes
These load with np.load(mmap_mode="r"), so later stages never build Python lists.
Beside them: vocab.json (token, train count; list index = id), labels.json and text.json
(the settings that turn text into tokens, for inference), and a pretrained model's tokenizer.json.

NumPy only, so that inference without torch can reuse it. Grouping by length means little
compute is spent on padding: documents are shuffled, sorted by length inside pools of many
batches, cut into batches, and the batches shuffled.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.files import atomic_file

REMAP_CHUNK = 1 << 22  # tokens mapped to ids per step by `write_ids`, bounding memory


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

    @property
    def multilabel(self) -> bool:
        """Label sets (a 0/1 matrix documents x classes), not one class id per document."""
        return self.labels.ndim == 2

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 (batch, longest), lengths int64, labels: int64 class ids, or float32 0/1
        rows for label sets), right-padded with 0."""
        lengths = self.lengths[indices].astype(np.int64)
        padded = np.zeros((len(indices), int(lengths.max(initial=0))), dtype=np.int64)
        for row, (index, length) in enumerate(zip(indices, lengths)):
            start = self.offsets[index]
            padded[row, :length] = self.ids[start : start + length]
        return padded, lengths, self.labels[indices].astype(np.float32 if self.multilabel else np.int64)


class JoinedSplit:
    """A training split with joined texts added (`train.join_texts`): after the split's own texts
    come pairs of two, the second of the same class as the first (label sets: any text, the two
    label sets joined). Batches are built on the fly; `lengths` are the joined lengths, cut at
    `max_tokens` as tokenize cuts."""

    def __init__(self, split: TokenizedSplit, pairs: np.ndarray, max_tokens: int):
        self.split, self.pairs = split, pairs.reshape(-1, 2)
        joined = split.lengths[self.pairs[:, 0]] + split.lengths[self.pairs[:, 1]]
        self.lengths = np.concatenate([split.lengths, np.minimum(joined, max(max_tokens, 1))])
        self.multilabel = split.multilabel

    @classmethod
    def drawn(cls, split: TokenizedSplit, share: float, rng: np.random.Generator, max_tokens: int) -> JoinedSplit:
        """round(share x texts) pairs: a random text, and a random text of its class (label sets: any)."""
        first = rng.integers(0, len(split), round(share * len(split)))
        second = np.empty_like(first)
        if split.multilabel:
            second[:] = rng.integers(0, len(split), len(first))
        else:
            labels = split.labels[first]
            for label in np.unique(labels):
                chosen = labels == label
                second[chosen] = rng.choice(np.flatnonzero(split.labels == label), int(chosen.sum()))
        return cls(split, np.stack([first, second], 1), max_tokens)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        split, texts = self.split, len(self.split)
        lengths = self.lengths[indices].astype(np.int64)
        first = np.where(indices < texts, indices, self.pairs[np.maximum(indices - texts, 0), 0])
        padded, _, labels = split.batch(first)
        padded = np.pad(padded, ((0, 0), (0, int(lengths.max(initial=0)) - padded.shape[1])))
        for row in np.flatnonzero(indices >= texts):
            head, second = self.pairs[indices[row] - texts]
            start, used = split.offsets[second], split.lengths[head]
            padded[row, used : lengths[row]] = split.ids[start : start + lengths[row] - used]
            if split.multilabel:
                labels[row] = np.maximum(labels[row], split.labels[second])
        return padded, lengths, labels


def read_labels(processed: Path) -> list[str]:
    path = processed / "labels.json"
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the tokenize stage first")
    return json.loads(path.read_text(encoding="utf-8"))


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


def encode_labels(labels: list, classes: list[str]) -> np.ndarray:
    """Class ids, int64 (documents,); or, for label sets (multi-label data), a 0/1 uint8 matrix
    (documents, classes)."""
    index = {name: i for i, name in enumerate(classes)}
    if labels and isinstance(labels[0], (list, tuple, np.ndarray)):
        hot = np.zeros((len(labels), len(classes)), dtype=np.uint8)
        for row, names in enumerate(labels):
            hot[row, [index[name] for name in names]] = 1
        return hot
    return np.array([index[name] for name in labels], dtype=np.int64)


def write_ids(staging: Path, split: str, kept: np.ndarray, to_ids: Callable[[np.ndarray], np.ndarray],
              unknown_id: int | None, dtype: type = np.uint64) -> int:
    """Map the split's token file (`dtype`: spaCy's hashes, or ids already) to int32 ids in ids.npy,
    with offsets; returns how many are `unknown_id`."""
    folder = staging / split
    folder.mkdir()
    tokens_path = staging / f"{split}.tokens"
    total = int(kept.sum())
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r") if total else np.empty(0, dtype)
    ids = np.lib.format.open_memmap(folder / "ids.npy", mode="w+", dtype=np.int32, shape=(total,))
    unknown = 0
    for start in range(0, total, REMAP_CHUNK):
        chunk = to_ids(np.asarray(tokens[start : start + REMAP_CHUNK]))
        unknown += int((chunk == unknown_id).sum()) if unknown_id is not None else 0
        ids[start : start + len(chunk)] = chunk
    ids.flush()
    del ids, tokens
    tokens_path.unlink()
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum(kept)]).astype(np.int64))
    return unknown


def write_vocab(path: Path, tokens: list[str], counts: list[int]) -> None:
    """One [token, train count] pair per line: readable, diffable, and the list index is the id."""
    with atomic_file(path) as handle:
        handle.write('{\n  "tokens": [\n')
        lines = [json.dumps([t, c], ensure_ascii=False) for t, c in zip(tokens, counts)]
        handle.write(",\n".join(f"    {line}" for line in lines))
        handle.write("\n  ]\n}\n")
