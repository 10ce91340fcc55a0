"""TF-IDF features for the baseline: scikit-learn's TfidfVectorizer, counted on every core.

scikit-learn's vectorizer counts in a Python loop in one process, and its fit sorts every
n-gram seen (1.4M in IMDB's train split): 22 s of IMDB's 32 s baseline. Here every split is
cut into chunks, all counted at once on worker processes with scikit-learn's own analyzer;
the chunks are merged on one vocabulary by their n-gram strings (`_merge`: the min_df cut and
the column order are scikit-learn's) and TfidfTransformer weighs them. Nothing depends on the
processes' start method (no hash() values cross a process boundary). tests/test_baseline.py
checks that the matrices equal TfidfVectorizer's, under fork and spawn.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline.system import process_map, workers_for

if TYPE_CHECKING:
    import scipy.sparse

PARALLEL_MIN_TEXTS = 4000  # fewer texts per worker are counted in this process: starting workers would cost more


class Counted(NamedTuple):
    """One chunk of texts counted: n-gram counts with the chunk's own n-grams as columns."""

    counts: scipy.sparse.csr_matrix  # (texts, n-grams), float32
    terms: list[str]  # column -> n-gram, in order of first sight


def _count(analyze, texts: list[str]) -> Counted:
    import scipy.sparse

    vocabulary: defaultdict[str, int] = defaultdict()
    vocabulary.default_factory = vocabulary.__len__  # an unseen n-gram gets the next column
    columns, lengths = array("q"), []
    for text in texts:
        features = analyze(text)
        columns.extend(map(vocabulary.__getitem__, features))
        lengths.append(len(features))
    rows = np.repeat(np.arange(len(texts)), lengths)
    counts = scipy.sparse.csr_matrix(
        (np.ones(len(columns), np.float32), (rows, np.frombuffer(columns, np.int64))), shape=(len(texts), len(vocabulary))
    )
    counts.sum_duplicates()
    return Counted(counts, list(vocabulary))


def _merge(train: list[Counted], others: list[list[Counted]], min_df: int) -> tuple[list, list[list], int]:
    """The chunks' counts on one vocabulary: train's n-grams in `min_df`+ train texts, in
    scikit-learn's column order (Python's string order)."""
    import scipy.sparse

    vocabulary: dict[str, int] = {}  # every train n-gram -> its id, in order of first sight
    train_ids = [np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for t in chunk.terms), np.int64, len(chunk.terms)) for chunk in train]
    frequency = np.zeros(len(vocabulary))  # train texts per n-gram: a count matrix has one entry per (text, n-gram)
    for chunk, ids in zip(train, train_ids):
        frequency += np.bincount(ids, weights=np.bincount(chunk.counts.indices, minlength=len(ids)), minlength=len(vocabulary))
    kept = np.flatnonzero(frequency >= min_df)
    if len(kept) == 0:
        raise ValueError("empty vocabulary")
    terms = list(vocabulary)
    kept_terms = [terms[i] for i in kept.tolist()]
    order = np.array(sorted(range(len(kept)), key=kept_terms.__getitem__), dtype=np.int64)
    column_of_id = np.full(len(vocabulary), -1, np.int64)
    column_of_id[kept[order]] = np.arange(len(kept))

    def remapped(chunk: Counted, ids: np.ndarray) -> scipy.sparse.csr_matrix:
        column = np.where(ids >= 0, column_of_id[ids], -1)
        counts = chunk.counts.tocoo()
        keep = column[counts.col] >= 0
        return scipy.sparse.csr_matrix(
            (counts.data[keep], (counts.row[keep], column[counts.col[keep]])), shape=(counts.shape[0], len(kept))
        )

    def looked_up(chunk: Counted) -> np.ndarray:  # another split's n-grams: -1 for those train lacks
        return np.fromiter((vocabulary.get(t, -1) for t in chunk.terms), np.int64, len(chunk.terms))

    return (
        [remapped(chunk, ids) for chunk, ids in zip(train, train_ids)],
        [[remapped(chunk, looked_up(chunk)) for chunk in split] for split in others],
        len(kept),
    )


def tfidf_features(
    analyzer: str, ngrams: tuple[int, int], min_df: int, train: list[str], others: list[list[str]], workers: int,
    min_texts_per_worker: int = PARALLEL_MIN_TEXTS, start_method: str | None = None,
) -> tuple[scipy.sparse.csr_matrix, list[scipy.sparse.csr_matrix], int]:
    """TfidfVectorizer(analyzer, ngrams, sublinear_tf, min_df).fit_transform(train) and
    .transform(each of others): the same matrices, counted on `workers` processes."""
    import scipy.sparse
    from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

    settings = {"analyzer": analyzer, "ngram_range": ngrams, "dtype": np.float32}
    workers = workers_for(len(train), min_texts_per_worker, workers)
    splits = [train, *others]
    chunks = [
        (split, split_texts[len(split_texts) * k // workers : len(split_texts) * (k + 1) // workers])  # rows stay in order
        for split, split_texts in enumerate(splits)
        for k in range(workers)
    ]
    with process_map(workers, method=start_method) as run:
        counted = run(_count, [TfidfVectorizer(**settings).build_analyzer()] * len(chunks), [texts for _, texts in chunks])
    by_split = [[chunk for (split, _), chunk in zip(chunks, counted) if split == index] for index in range(len(splits))]
    train_pieces, other_pieces, features = _merge(by_split[0], by_split[1:], min_df)
    weigh = TfidfTransformer(sublinear_tf=True)
    train_x = weigh.fit_transform(scipy.sparse.vstack(train_pieces, format="csr"))
    return train_x, [weigh.transform(scipy.sparse.vstack(pieces, format="csr")) for pieces in other_pieces], features
