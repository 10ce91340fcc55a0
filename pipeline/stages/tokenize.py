"""`tokenize` stage: data/raw/*.parquet -> token ids, vocabulary and labels in data/processed/
(the format: pipeline/data/tokenized.py).

Two tokenizers write it: spaCy's rules with a vocabulary built from train (the default,
pipeline/text/spacy_tokenizer.py), or, for `model.arch` pretrained, the model's own tokenizer
and vocabulary (pipeline/text/subwords.py), whose tokenizer.json is then saved beside text.json.
Both go through one loop (`token_files`): each split's tokens are streamed to a file, then
mapped to int32 ids.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.raw import SPLITS, read_split, text_batches
from pipeline.data.splitting import check_labels_known, flat
from pipeline.data.tokenized import encode_labels, write_ids, write_vocab
from pipeline.errors import PipelineError
from pipeline.files import stage_outputs, write_json
from pipeline.params import PretrainedParams, TokenizeParams, min_freq_for, short_repr
from pipeline.paths import PROCESSED_DIR, RAW_DIR, TOKENIZE_REPORT
from pipeline.system import available_cores, workers_for
from pipeline.text.settings import PAD, UNK, UNK_ID, TextSettings, spacy_settings
from pipeline.text.spacy_tokenizer import Hasher, HashLookup, Workers, make_tokenizer
from pipeline.text.subwords import TOKENIZER_FILE, SubwordTokenizer, pretrained_tokenizer

SPACY_MIN_TEXTS_PER_WORKER = 2000

Batches = Callable[[str], Iterator[tuple[np.ndarray, np.ndarray]]]  # split -> (tokens, full lengths) per batch


def run_tokenize(
    params: TokenizeParams,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = PROCESSED_DIR,
    report_path: Path = TOKENIZE_REPORT,
    progress: bool | None = None,
    runtime_path: Path | None = None,
    pretrained: PretrainedParams | None = None,
    arch: str = "bag",
) -> dict:
    """Tokenize every split, build the vocabulary from train, and write ids, vocab and labels:
    with spaCy, or with `pretrained`'s own tokenizer when given (`model.arch` pretrained).
    `arch` (`model.arch`) decides a null `min_freq`.
    Returns the report and the runtime numbers together; writes the runtime too if given a path."""
    if pretrained is None:
        settings, subwords = spacy_settings(params), None
        make_tokenizer(settings.language)  # an unknown language fails before any work
    else:
        subwords = pretrained_tokenizer(params, pretrained)  # a missing model fails before any work
        settings = subwords.settings
    labels = {split: read_split(raw_dir, split, ["label"])["label"] for split in SPLITS}
    check_labels_known(labels, "rerun the download stage")
    classes = sorted(set(flat(labels["train"])))
    # null: every core; spaCy's workers are processes, so small data stays in this one (a worker takes seconds to start)
    workers = params.workers or (available_cores() if subwords else workers_for(sum(map(len, labels.values())), SPACY_MIN_TEXTS_PER_WORKER))

    def bar(split: str):
        from tqdm import tqdm

        return tqdm(total=len(labels[split]), desc=f"tokenize {split}", unit="doc", disable=None if progress is None else not progress)

    started = time.perf_counter()
    with stage_outputs() as outputs:
        staging = outputs.folder(out_dir)
        if subwords is None:
            tokens = spacy_tokens(params, min_freq_for(params, arch), settings, raw_dir, staging, workers, bar)
        else:
            tokens = subword_tokens(params, subwords, raw_dir, staging, workers, bar)
        for split in SPLITS:
            np.save(staging / split / "labels.npy", encode_labels(labels[split], classes))
        write_json(staging / "labels.json", classes)
        write_json(staging / "text.json", settings.to_dict())
        report = tokenize_report(tokens, settings, len(classes))
        runtime = {  # timings are not metrics: they differ between identical runs
            "tokenizer": settings.tokenizer,
            "workers": workers,
            "seconds": round(time.perf_counter() - started, 3),
            "tokens_per_second": round(report["tokens"] / max(tokens.seconds, 1e-9)),
        }
        outputs.json(report_path, report)
        if runtime_path is not None:
            outputs.json(runtime_path, runtime)
    return {**report, **runtime}


@dataclass
class Tokens:
    """What tokenizing the splits gave: full lengths per document, tokens kept, unknown tokens."""

    lengths: dict[str, np.ndarray]
    kept: dict[str, int]
    unknown: dict[str, int]
    vocab_size: int
    seconds: float


def tokenize_report(tokens: Tokens, settings: TextSettings, classes: int) -> dict:
    train_lengths = tokens.lengths["train"]
    return {
        "vocab_size": tokens.vocab_size,
        "classes": classes,
        "documents": int(sum(len(v) for v in tokens.lengths.values())),
        "tokens": int(sum(int(v.sum()) for v in tokens.lengths.values())),
        "oov_rate_validation": round(tokens.unknown["validation"] / max(tokens.kept["validation"], 1), 6),
        "oov_rate_test": round(tokens.unknown["test"] / max(tokens.kept["test"], 1), 6),
        "tokens_per_doc_p50": float(np.percentile(train_lengths, 50)),
        "tokens_per_doc_p95": float(np.percentile(train_lengths, 95)),
        "tokens_per_doc_max": int(train_lengths.max()),
        "truncated_share": round(float((train_lengths > settings.max_tokens).mean()), 6),
    }


def token_files(staging: Path, batches: Batches, bar: Callable, dtype: type) -> dict[str, np.ndarray]:
    """Each split's tokens, batch by batch, into `staging`/<split>.tokens (as `dtype`); returns
    every document's full length (before truncation) per split."""
    lengths = {}
    for split in SPLITS:
        split_bar, pieces = bar(split), []
        with (staging / f"{split}.tokens").open("wb") as out:
            for tokens, full_lengths in batches(split):
                tokens.astype(dtype, copy=False).tofile(out)
                pieces.append(full_lengths)
                split_bar.update(len(full_lengths))
        split_bar.close()
        lengths[split] = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
    return lengths


def ids_from_token_files(staging: Path, lengths: dict[str, np.ndarray], max_tokens: int, to_ids, unknown_id, dtype) -> tuple[dict, dict]:
    """Every split's token file mapped to ids (data/tokenized.py's format); (tokens kept, unknown) per split."""
    kept = {split: np.minimum(lengths[split], max_tokens) for split in SPLITS}
    unknown = {split: write_ids(staging, split, kept[split], to_ids, unknown_id, dtype) for split in SPLITS}
    return {split: int(k.sum()) for split, k in kept.items()}, unknown


@dataclass
class TrainVocabulary:
    """What spaCy's workers report of train: distinct hashes and counts per batch, and the
    strings of hashes first seen (each string crosses the process boundary once)."""

    distinct: list[np.ndarray] = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)
    strings: dict[int, str] = field(default_factory=dict)


def _hash_texts(hasher: Hasher, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Token hashes and full lengths of a batch, its distinct hashes with counts, and the strings
    of hashes this worker has not reported before."""
    hashes, lengths = hasher.hash_batch(texts)
    distinct, counts = np.unique(hashes, return_counts=True)
    new = [h for h in distinct.tolist() if h not in hasher.reported]
    hasher.reported.update(new)
    return hashes, lengths, distinct, counts, {h: hasher.string(h) for h in new}


def _hashed(pool: Workers, raw_dir: Path, split: str, batch_size: int, vocabulary: TrainVocabulary) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for hashes, lengths, distinct, counts, new in pool.map(text_batches(raw_dir, split, batch_size)):
        vocabulary.strings.update(new)
        if split == "train":
            vocabulary.distinct.append(distinct)
            vocabulary.counts.append(counts)
        yield hashes, lengths


def spacy_tokens(
    params: TokenizeParams, min_freq: int, settings: TextSettings, raw_dir: Path, staging: Path, workers: int, bar: Callable
) -> Tokens:
    """spaCy in `workers` processes: hashes per split, the vocabulary from train's counts, then ids."""
    started = time.perf_counter()
    vocabulary = TrainVocabulary()
    with Workers(settings, workers, _hash_texts) as pool:  # closed before the remap, which needs no workers
        lengths = token_files(staging, lambda split: _hashed(pool, raw_dir, split, params.batch_size, vocabulary), bar, np.uint64)
    seconds = time.perf_counter() - started
    vocab = build_vocab(vocabulary, min_freq, params.max_vocab)
    if not vocab["tokens"]:  # raised inside stage_outputs: nothing is written
        raise PipelineError(empty_vocab_message(vocabulary, min_freq))
    lookup = HashLookup(np.array([0, 0, *vocab["hashes"]], dtype=np.uint64))
    kept, unknown = ids_from_token_files(staging, lengths, settings.max_tokens, lookup.ids, UNK_ID, np.uint64)
    write_vocab(staging / "vocab.json", [PAD, UNK, *vocab["tokens"]], [0, unknown["train"], *vocab["counts"]])
    return Tokens(lengths, kept, unknown, len(vocab["tokens"]) + 2, seconds)


def _encoded(subwords: SubwordTokenizer, raw_dir: Path, split: str, batch_size: int, counts: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for texts in text_batches(raw_dir, split, batch_size):
        ids, lengths = subwords.encode_batch(texts)
        if split == "train":
            counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
        yield ids, lengths


def subword_tokens(params: TokenizeParams, subwords: SubwordTokenizer, raw_dir: Path, staging: Path, workers: int, bar: Callable) -> Tokens:
    """The model's tokenizer, whose batches run on `workers` threads of its own (no processes):
    ids per split; the vocabulary is the model's, with train counts; its tokenizer.json beside."""
    # before the tokenizer's first parallel call, which sizes its thread pool for the process
    os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    tokens = subwords.vocabulary()
    counts = np.zeros(len(tokens), dtype=np.int64)
    started = time.perf_counter()
    # large batches: one call spreads them over every thread
    lengths = token_files(staging, lambda split: _encoded(subwords, raw_dir, split, params.batch_size * workers, counts), bar, np.int32)
    seconds = time.perf_counter() - started
    kept, unknown = ids_from_token_files(staging, lengths, subwords.settings.max_tokens, lambda chunk: chunk, subwords.unknown_id, np.int32)
    write_vocab(staging / "vocab.json", tokens, counts.tolist())
    subwords.tokenizer.save(str(staging / TOKENIZER_FILE))
    return Tokens(lengths, kept, unknown, len(tokens), seconds)


def build_vocab(vocabulary: TrainVocabulary, min_freq: int, max_vocab: int | None) -> dict:
    """Train tokens with count >= min_freq, most frequent first, ties in string order."""
    if vocabulary.distinct:
        all_hashes, inverse = np.unique(np.concatenate(vocabulary.distinct), return_inverse=True)
        totals = np.bincount(inverse, weights=np.concatenate(vocabulary.counts)).astype(np.int64)
    else:
        all_hashes, totals = np.empty(0, np.uint64), np.empty(0, np.int64)
    keep = totals >= min_freq
    entries = sorted(
        ((vocabulary.strings[h], int(c), h) for h, c in zip(all_hashes[keep].tolist(), totals[keep].tolist())),
        key=lambda e: (-e[1], e[0]),
    )
    if max_vocab is not None:
        entries = entries[: max_vocab - 2]
    return {"tokens": [e[0] for e in entries], "counts": [e[1] for e in entries], "hashes": [e[2] for e in entries]}


def empty_vocab_message(vocabulary: TrainVocabulary, min_freq: int) -> str:
    top = build_vocab(vocabulary, 1, 3)
    if not top["tokens"]:
        return "the train split has no tokens at all, so there is no vocabulary; check download.text_columns"
    return (
        f"tokenize.min_freq: no train token occurs {min_freq:,} times or more (the most frequent, {short_repr(top['tokens'][0], 40)}, "
        f"occurs {top['counts'][0]:,}), so the vocabulary would hold only <pad> and <unk>; lower tokenize.min_freq"
    )
