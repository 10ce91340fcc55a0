"""Length-grouped batches over tokenized splits."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.tokenized import JoinedSplit, TokenizedSplit, length_grouped_batches
from pipeline.errors import PipelineError


def write_split(folder, docs, labels):
    folder.mkdir(parents=True)
    np.save(folder / "ids.npy", np.concatenate([np.array(d, dtype=np.int32) for d in docs] + [np.empty(0, np.int32)]))
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64))
    np.save(folder / "labels.npy", np.array(labels, dtype=np.int64))


def test_batch_pads_and_keeps_each_document(tmp_path):
    docs = [[5, 6, 7], [], [8], [9, 10]]
    write_split(tmp_path / "train", docs, [0, 1, 0, 1])
    split = TokenizedSplit(tmp_path / "train")
    ids, lengths, labels = split.batch(np.array([3, 1, 0]))
    assert ids.tolist() == [[9, 10, 0], [0, 0, 0], [5, 6, 7]]
    assert lengths.tolist() == [2, 0, 3] and labels.tolist() == [1, 1, 0]
    ids, lengths, _ = split.batch(np.array([1]))
    assert ids.shape == (1, 0) and lengths.tolist() == [0]


def test_joined_texts_follow_the_split_and_join_two_texts_cut_at_max_tokens(tmp_path):
    docs = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], []]
    write_split(tmp_path / "train", docs, [0, 1, 0, 1, 0])
    split = TokenizedSplit(tmp_path / "train")
    joined = JoinedSplit(split, np.array([[0, 2], [1, 3], [4, 0]]), max_tokens=4)
    assert len(joined) == 5 + 3
    assert joined.lengths.tolist() == [3, 1, 2, 4, 0, 4, 4, 3]  # 3 + 2 and 1 + 4 cut at 4 tokens
    ids, lengths, labels = joined.batch(np.array([5, 6, 2, 7, 1]))
    assert ids.tolist() == [[5, 6, 7, 9], [8, 11, 12, 13], [9, 10, 0, 0], [5, 6, 7, 0], [8, 0, 0, 0]]
    assert lengths.tolist() == [4, 4, 2, 3, 1] and labels.tolist() == [0, 1, 0, 0, 1]
    # drawn: round(share x texts) pairs, each of one class; share 0: the split as it is
    many = [[i] for i in range(400)]
    write_split(tmp_path / "many", many, [i % 3 for i in range(400)])
    split = TokenizedSplit(tmp_path / "many")
    drawn = JoinedSplit.drawn(split, 0.3, np.random.default_rng(0), max_tokens=10)
    assert len(drawn) == 400 + 120
    assert (split.labels[drawn.pairs[:, 0]] == split.labels[drawn.pairs[:, 1]]).all()
    assert len(JoinedSplit.drawn(split, 0.0, np.random.default_rng(0), max_tokens=10)) == 400


def test_joined_label_sets_join_their_labels(tmp_path):
    write_split(tmp_path / "train", [[5], [6], [7]], [0, 0, 0])
    np.save(tmp_path / "train" / "labels.npy", np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.uint8))
    split = TokenizedSplit(tmp_path / "train")
    ids, _, labels = JoinedSplit(split, np.array([[0, 1], [2, 0]]), max_tokens=5).batch(np.array([3, 4, 1]))
    assert ids.tolist() == [[5, 6], [7, 5], [6, 0]]
    assert labels.tolist() == [[1, 1, 0], [1, 0, 0], [0, 1, 0]]  # a text with no label joined to one with a label


def test_mismatched_files_are_a_clear_error(tmp_path):
    write_split(tmp_path / "train", [[1, 2]], [0])
    np.save(tmp_path / "train" / "labels.npy", np.array([0, 1]))
    with pytest.raises(PipelineError, match="do not match"):
        TokenizedSplit(tmp_path / "train")
    with pytest.raises(PipelineError, match="run the tokenize stage"):
        TokenizedSplit(tmp_path / "missing")


def test_training_batches_cover_everything_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=5000)
    batches = length_grouped_batches(lengths, 32, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(5000))
    assert max(len(b) for b in batches) == 32

    def padding_share(groups):
        padded = sum(len(b) * lengths[b].max() for b in groups)
        return 1 - lengths.sum() / padded

    shuffled = np.random.default_rng(2).permutation(5000)
    random_batches = [shuffled[i : i + 32] for i in range(0, 5000, 32)]
    assert padding_share(batches) < 0.05 < 0.4 < padding_share(random_batches)


def test_training_batches_are_seeded():
    lengths = np.arange(1000) % 97
    first = length_grouped_batches(lengths, 16, np.random.default_rng(3))
    again = length_grouped_batches(lengths, 16, np.random.default_rng(3))
    other = length_grouped_batches(lengths, 16, np.random.default_rng(4))
    assert all((a == b).all() for a, b in zip(first, again))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(first, other))


def test_evaluation_batches_are_in_order_longest_first():
    lengths = np.array([3, 9, 1, 9, 5])
    batches = length_grouped_batches(lengths, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]
