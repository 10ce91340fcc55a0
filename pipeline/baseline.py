"""`baseline` stage: the classic linear model on the same splits -> reports/baseline.json.

TF-IDF of word 1-2 grams (sublinear tf, min_df 2) and logistic regression (scikit-learn),
trained on data/raw's train split and scored on its test split, the ones the neural model
uses: the ten-line model any ML engineer tries first. Every run then says, beside
reports/metrics.json, whether the neural model earns its keep. Languages written without
spaces between words (Chinese, Japanese, Thai) get character 1-3 grams instead, since a
"word" there would be a whole sentence.

The inverse regularization strength C is picked on the validation split from a small grid
(unless `baseline.C` fixes it), as that engineer would: an untuned baseline is too easy to beat.
"""

from __future__ import annotations

import multiprocessing
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.metrics import classification_metrics
from pipeline.params import BaselineParams
from pipeline.system import available_cores

if TYPE_CHECKING:
    import scipy.sparse

C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo"}  # no spaces between words
PARALLEL_MIN_TEXTS = 4000  # fewer texts are counted in this process: starting workers would cost more


def read_split(raw_dir: Path, split: str) -> pd.DataFrame:
    path = raw_dir / f"{split}.parquet"
    try:
        return pd.read_parquet(path, columns=["text", "label"])
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; run the download stage first (dvc repro download)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{path}: cannot read the split ({exc}); rerun the download stage") from None


def analyzer_for(params: BaselineParams, language: str) -> tuple[str, tuple[int, int]]:
    analyzer = params.analyzer if params.analyzer != "auto" else ("char" if language in UNSPACED_LANGUAGES else "word")
    return analyzer, (1, 3) if analyzer == "char" else (1, 2)


@contextmanager
def process_map(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[Callable]:
    """map(function, *iterables) on `workers` forked processes, or in this process for one.
    Forked, so a worker inherits the parent's data (initargs are not pickled)."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield lambda function, *iterables: list(map(function, *iterables))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=initializer, initargs=initargs) as pool:
        yield lambda function, *iterables: list(pool.map(function, *iterables))


class Counted(NamedTuple):
    """One chunk of texts counted: n-gram counts with the chunk's own n-grams as columns."""

    counts: scipy.sparse.csr_matrix  # (texts, n-grams), float32
    terms: np.ndarray  # column -> n-gram (str objects), in order of first sight
    hashes: np.ndarray  # int64 hash() of each term: forked workers share the parent's hash seed


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
    terms = np.array(list(vocabulary), dtype=object)
    return Counted(counts, terms, np.fromiter(map(hash, terms), np.int64, count=len(terms)))


class HashCollision(Exception):
    """Two different n-grams with one 64-bit hash: the merge falls back to scikit-learn."""


def _merge(train: list[Counted], others: list[list[Counted]], min_df: int) -> tuple[list, list[list], int]:
    """The chunks' counts on one vocabulary: train's n-grams in `min_df`+ train texts, sorted as
    scikit-learn sorts them. Chunks are matched by hash, and every matched pair of strings is
    compared, so a hash collision is detected (HashCollision), never silently merged."""
    import scipy.sparse

    hashes = np.concatenate([chunk.hashes for chunk in train])
    unique, inverse = np.unique(hashes, return_inverse=True)
    frequency = np.bincount(inverse, weights=np.concatenate(  # a count matrix has one entry per (text, n-gram)
        [np.bincount(chunk.counts.indices, minlength=len(chunk.terms)) for chunk in train]
    ))
    kept = np.flatnonzero(frequency >= min_df)  # positions in `unique`
    if len(kept) == 0:
        raise ValueError("empty vocabulary")
    where = np.full(len(unique), -1, np.int64)  # position in `unique` -> slot among the kept
    where[kept] = np.arange(len(kept))
    strings = np.empty(len(kept), dtype=object)  # each kept n-gram's string
    train_slots = np.split(where[inverse], np.cumsum([len(chunk.terms) for chunk in train])[:-1])
    for chunk, slots in zip(train, train_slots):
        present = slots >= 0
        strings[slots[present]] = chunk.terms[present]
    order = np.argsort(strings, kind="stable")  # scikit-learn's column order (Python's string order)
    column_of_slot = np.empty(len(kept), np.int64)
    column_of_slot[order] = np.arange(len(kept))
    kept_hashes = unique[kept]

    def remapped(chunk: Counted, slots: np.ndarray | None = None) -> scipy.sparse.csr_matrix:
        if slots is None:  # another split's chunk: its n-grams looked up among the kept hashes
            position = np.searchsorted(kept_hashes, chunk.hashes).clip(max=len(kept) - 1)
            slots = np.where(kept_hashes[position] == chunk.hashes, position, -1)
        present = slots >= 0
        if (strings[slots[present]] != chunk.terms[present]).any():
            raise HashCollision()  # one hash, two strings
        column = np.where(present, column_of_slot[slots], -1)
        counts = chunk.counts.tocoo()
        keep = column[counts.col] >= 0
        return scipy.sparse.csr_matrix(
            (counts.data[keep], (counts.row[keep], column[counts.col[keep]])), shape=(counts.shape[0], len(kept))
        )

    return [remapped(chunk, slots) for chunk, slots in zip(train, train_slots)], [[remapped(chunk) for chunk in split] for split in others], len(kept)


def tfidf_features(
    analyzer: str, ngrams: tuple[int, int], min_df: int, train: list[str], others: list[list[str]], workers: int,
    min_texts_per_worker: int = PARALLEL_MIN_TEXTS,
) -> tuple[scipy.sparse.csr_matrix, list[scipy.sparse.csr_matrix], int]:
    """TfidfVectorizer(analyzer, ngrams, sublinear_tf, min_df).fit_transform(train) and
    .transform(each of others): the same matrices, counted on `workers` processes.

    scikit-learn's vectorizer counts in a Python loop in one process, and its fit sorts every
    n-gram seen (1.4M in IMDB's train split): 22 s of IMDB's 32 s baseline. Here every split
    is cut into chunks, all counted at once on the workers with scikit-learn's own analyzer;
    the chunks are merged on one vocabulary (`_merge`: the min_df cut and column order are
    scikit-learn's) and TfidfTransformer weighs them. tests/test_baseline.py checks that the
    matrices equal TfidfVectorizer's."""
    import scipy.sparse
    from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

    settings = {"analyzer": analyzer, "ngram_range": ngrams, "dtype": np.float32}
    workers = max(1, min(workers, len(train) // min_texts_per_worker))
    splits = [train, *others]
    chunks = [
        (split, split_texts[len(split_texts) * k // workers : len(split_texts) * (k + 1) // workers])  # rows stay in order
        for split, split_texts in enumerate(splits)
        for k in range(workers)
    ]
    with process_map(workers) as run:
        counted = run(_count, [TfidfVectorizer(**settings).build_analyzer()] * len(chunks), [texts for _, texts in chunks])
    by_split = [[chunk for (split, _), chunk in zip(chunks, counted) if split == index] for index in range(len(splits))]
    try:
        train_pieces, other_pieces, features = _merge(by_split[0], by_split[1:], min_df)
    except HashCollision:  # about one run in 10 million: scikit-learn, in this process
        vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=min_df, **settings)
        return vectorizer.fit_transform(train), [vectorizer.transform(texts) for texts in others], len(vectorizer.vocabulary_)
    weigh = TfidfTransformer(sublinear_tf=True)
    train_x = weigh.fit_transform(scipy.sparse.vstack(train_pieces, format="csr"))
    return train_x, [weigh.transform(scipy.sparse.vstack(pieces, format="csr")) for pieces in other_pieces], features


_grid_data: tuple | None = None  # (train x, train y, validation x, validation y, max_iter, threads), in each grid worker


def _set_grid_data(*data) -> None:
    global _grid_data
    _grid_data = data


def _fit_scored(c: float):
    """Logistic regression with this C on train; (validation accuracy, model)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train_x, train_y, validation_x, validation_y, max_iter, threads = _grid_data
    with threadpool_limits(threads):  # the workers share the cores: no BLAS threads fighting over them
        model = LogisticRegression(C=c, max_iter=max_iter).fit(train_x, train_y)
    return float((model.predict(validation_x) == validation_y).mean()), model


def run_baseline(
    params: BaselineParams, language: str, raw_dir: Path, report_path: Path, runtime_path: Path | None = None
) -> dict:
    """Fit the baseline on train, pick C on validation, score test; write the report.
    Switched off (`baseline.enabled: false`), it writes an empty report."""
    if not params.enabled:
        write_json(report_path, {})
        if runtime_path is not None:
            write_json(runtime_path, {})
        return {}
    started = time.perf_counter()
    train, validation, test = (read_split(raw_dir, split) for split in ("train", "validation", "test"))
    labels = sorted(set(train["label"]))
    index = {name: i for i, name in enumerate(labels)}
    unseen = sorted(set(validation["label"]).union(test["label"]) - set(labels))
    if unseen:
        raise PipelineError(f"{raw_dir}: validation/test labels {', '.join(unseen[:5])} are not in train; rerun the download stage")
    analyzer, ngrams = analyzer_for(params, language)
    texts = [frame["text"].tolist() for frame in (train, validation, test)]
    cores = available_cores()
    try:
        train_x, (validation_x, test_x), features = tfidf_features(analyzer, ngrams, params.min_df, texts[0], texts[1:], cores)
    except ValueError as exc:  # "empty vocabulary": nothing occurs min_df times
        raise PipelineError(f"baseline: no {analyzer} n-gram occurs in {params.min_df}+ train texts ({exc}); lower baseline.min_df") from None
    train_y, validation_y, test_y = (frame["label"].map(index).to_numpy() for frame in (train, validation, test))
    vectorize_seconds = time.perf_counter() - started

    grid = [params.C] if params.C is not None else list(C_GRID)
    workers = min(cores, len(grid)) if len(train) >= PARALLEL_MIN_TEXTS else 1
    data = (train_x, train_y, validation_x, validation_y, params.max_iter, max(1, cores // workers))
    with process_map(workers, _set_grid_data, data) as run:  # the grid's fits at once: ~9 s -> ~5 s on IMDB
        fitted = run(_fit_scored, grid)
    best = None
    for c, (accuracy, model) in zip(grid, fitted):
        if best is None or accuracy > best[0]:  # ties keep the smaller C: the stronger regularization
            best = (accuracy, c, model)
    validation_accuracy, chosen_c, model = best
    scores = classification_metrics(model.predict_log_proba(test_x), test_y, labels)
    report = {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "validation_accuracy": validation_accuracy,
        "C": chosen_c,
        "features": features,
    }
    runtime = {
        "analyzer": f"{analyzer} {ngrams[0]}-{ngrams[1]} grams",
        "vectorize_seconds": round(vectorize_seconds, 2),
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(report_path, report)
    if runtime_path is not None:
        write_json(runtime_path, runtime)
    return {**report, **runtime}
