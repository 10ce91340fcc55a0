"""`tokenize` stage: data/raw/*.parquet -> token ids, vocabulary and labels in data/processed/.

(Named tokenizing.py so that it can never shadow the standard library's `tokenize`.)

Output, per split, in data/processed/<split>/:
  ids.npy      int32, every document's token ids back to back
  offsets.npy  int64, document i is ids[offsets[i]:offsets[i+1]]
  labels.npy   int64 class ids (index into labels.json)
These load with np.load(mmap_mode="r"), so later stages never build Python lists.
Beside them: vocab.json (token, train count; list index = id), labels.json and
text.json (the settings that turn text into tokens, for inference).

Two tokenizers write this format: spaCy's rules with a vocabulary built from train (the
default), or, for `model.arch` pretrained, the model's own tokenizer and vocabulary
(pipeline/pretrained_text.py), whose tokenizer.json is then copied beside text.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError, clip
from pipeline.files import atomic_file, staged_dir, write_json
from pipeline.params import PretrainedParams, TokenizeParams, short_repr
from pipeline.paths import PROCESSED_DIR, RAW_DIR, TOKENIZE_REPORT
from pipeline.pretrained_text import TOKENIZER_FILE, SubwordTokenizer, load_tokenizer, model_folder, model_max_tokens
from pipeline.system import available_cores
from pipeline.text import PAD, UNK, UNK_ID, Hasher, HashLookup, TextSettings, Workers, make_tokenizer

SPLITS = ("train", "validation", "test")
REMAP_CHUNK = 1 << 22  # hashes mapped to ids per step, bounding memory


def _hash_texts(hasher: Hasher, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Token hashes and full lengths of a batch, its distinct hashes with counts, and the strings
    of hashes this worker has not reported before (each string crosses the process boundary once)."""
    hashes, lengths = hasher.hash_batch(texts)
    distinct, counts = np.unique(hashes, return_counts=True)
    new = [h for h in distinct.tolist() if h not in hasher.reported]
    hasher.reported.update(new)
    return hashes, lengths, distinct, counts, {h: hasher.string(h) for h in new}


# --- the stage ----------------------------------------------------------------------------
def read_split_meta(path: Path) -> tuple[int, list[str]]:
    """Row count and labels of a raw split, checking it is one of ours."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the download stage first (python -m pipeline download)")
    try:
        columns = pq.read_schema(path).names
        if "text" not in columns or "label" not in columns:
            raise PipelineError(f"{path}: needs columns text and label (has {', '.join(columns)}); rerun download")
        table = pq.read_table(path, columns=["label"])
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{path}: not a readable Parquet file ({exc}); rerun download") from None
    return table.num_rows, [str(x) for x in table.column("label").to_pylist()]


def text_batches(path: Path, batch_size: int) -> Iterator[list[str]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["text"]):
        yield [t or "" for t in batch.column(0).to_pylist()]


def run_tokenize(
    params: TokenizeParams,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = PROCESSED_DIR,
    report_path: Path = TOKENIZE_REPORT,
    progress: bool | None = None,
    runtime_path: Path | None = None,
    pretrained: PretrainedParams | None = None,
) -> dict:
    """Tokenize every split, build the vocabulary from train, and write ids, vocab and labels:
    with spaCy, or with `pretrained`'s own tokenizer when given (`model.arch` pretrained).
    Returns the report and the runtime numbers together; writes the runtime too if given a path."""
    if pretrained is None:
        settings = TextSettings(
            language=params.language, lowercase=params.lowercase, strip_html=params.strip_html,
            max_tokens=params.spacy_max_tokens, truncation=params.truncation,
        )
        make_tokenizer(settings.language)  # an unknown language fails before any work
        subwords = None
    else:
        subwords = pretrained_tokenizer(params, pretrained)  # a missing model fails before any work
        settings = subwords.settings
    meta = {split: read_split_meta(raw_dir / f"{split}.parquet") for split in SPLITS}
    classes = sorted(set(meta["train"][1]))
    class_ids = {name: i for i, name in enumerate(classes)}
    for split in ("validation", "test"):
        unseen = sorted(set(meta[split][1]) - set(classes))
        if unseen:
            raise PipelineError(f"{split} has labels that train does not have: {', '.join(unseen[:10])}; rerun download")
    workers = params.workers or available_cores()

    def bar(split: str):
        from tqdm import tqdm

        return tqdm(total=meta[split][0], desc=f"tokenize {split}", unit="doc", disable=None if progress is None else not progress)

    started = time.perf_counter()
    with staged_dir(out_dir) as staging:
        if subwords is None:
            tokens = _spacy_tokens(params, settings, raw_dir, staging, workers, bar)
        else:
            tokens = _subword_tokens(params, subwords, raw_dir, staging, workers, bar)
        for split in SPLITS:
            labels = np.array([class_ids[name] for name in meta[split][1]], dtype=np.int64)
            np.save(staging / split / "labels.npy", labels)
        write_json(staging / "labels.json", classes)
        write_json(staging / "text.json", settings.to_dict())

    seconds = time.perf_counter() - started
    lengths, kept, unknown = tokens["lengths"], tokens["kept"], tokens["unknown"]
    total_tokens = int(sum(int(v.sum()) for v in lengths.values()))
    train_lengths = lengths["train"]
    report = {
        "vocab_size": tokens["vocab_size"],
        "classes": len(classes),
        "documents": int(sum(len(v) for v in lengths.values())),
        "tokens": total_tokens,
        "oov_rate_validation": round(unknown["validation"] / max(kept["validation"], 1), 6),
        "oov_rate_test": round(unknown["test"] / max(kept["test"], 1), 6),
        "tokens_per_doc_p50": float(np.percentile(train_lengths, 50)),
        "tokens_per_doc_p95": float(np.percentile(train_lengths, 95)),
        "tokens_per_doc_max": int(train_lengths.max()),
        "truncated_share": round(float((train_lengths > settings.max_tokens).mean()), 6),
    }
    runtime = {  # timings are not metrics: they differ between identical runs
        "tokenizer": settings.tokenizer,
        "workers": workers,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(total_tokens / tokens["seconds"]),
    }
    write_json(report_path, report)
    if runtime_path is not None:
        write_json(runtime_path, runtime)
    return {**report, **runtime}


def _spacy_tokens(params: TokenizeParams, settings: TextSettings, raw_dir: Path, staging: Path, workers: int, bar: Callable) -> dict:
    """spaCy in `workers` processes: hashes per split, the vocabulary from train's counts, then ids.
    Writes <split>/ids.npy, offsets.npy and vocab.json into `staging`."""
    started = time.perf_counter()
    strings: dict[int, str] = {}
    lengths: dict[str, np.ndarray] = {}
    train_distinct, train_counts = [], []
    with Workers(settings, workers, _hash_texts) as pool:  # closed before the remap, which needs no workers
        for split in SPLITS:
            split_bar, split_lengths = bar(split), []
            with (staging / f"{split}.tokens").open("wb") as hashes_out:
                for hashes, full_lengths, distinct, counts, new in pool.map(text_batches(raw_dir / f"{split}.parquet", params.batch_size)):
                    hashes.tofile(hashes_out)
                    split_lengths.append(full_lengths)
                    strings.update(new)
                    if split == "train":
                        train_distinct.append(distinct)
                        train_counts.append(counts)
                    split_bar.update(len(full_lengths))
            split_bar.close()
            lengths[split] = np.concatenate(split_lengths) if split_lengths else np.empty(0, np.int64)
    seconds = time.perf_counter() - started

    vocab = build_vocab(train_distinct, train_counts, strings, params.min_freq, params.max_vocab)
    if not vocab["tokens"]:  # raised inside staged_dir: nothing is written
        raise PipelineError(empty_vocab_message(train_distinct, train_counts, strings, params.min_freq))
    lookup = HashLookup(np.array([0, 0, *vocab["hashes"]], dtype=np.uint64))
    kept = {split: np.minimum(lengths[split], settings.max_tokens) for split in SPLITS}
    unknown = {split: write_ids(staging, split, kept[split], lookup.ids, UNK_ID) for split in SPLITS}
    write_vocab(staging / "vocab.json", [PAD, UNK, *vocab["tokens"]], [0, unknown["train"], *vocab["counts"]])
    return {"lengths": lengths, "kept": {s: int(k.sum()) for s, k in kept.items()}, "unknown": unknown,
            "vocab_size": len(vocab["tokens"]) + 2, "seconds": seconds}


def pretrained_tokenizer(params: TokenizeParams, pretrained: PretrainedParams) -> SubwordTokenizer:
    """The model's tokenizer with the tokenize params; tokenize.max_tokens null is the model's
    input limit, and a larger one is an error (the model has no positions for it)."""
    folder = model_folder(pretrained)
    limit = model_max_tokens(folder)
    if params.max_tokens is not None and params.max_tokens > limit:
        raise PipelineError(
            f"tokenize.max_tokens: {params.max_tokens} is above what {clip(pretrained.source)} takes ({limit} tokens, special tokens included); "
            f"lower it, or set it to null for {limit}"
        )
    settings = TextSettings(strip_html=params.strip_html, max_tokens=params.max_tokens or limit, truncation=params.truncation, tokenizer="pretrained")
    return SubwordTokenizer(load_tokenizer(folder), settings)


def _subword_tokens(params: TokenizeParams, subwords: SubwordTokenizer, raw_dir: Path, staging: Path, workers: int, bar: Callable) -> dict:
    """The model's tokenizer, whose batches run on `workers` threads of its own (no processes):
    ids per split; the vocabulary is the model's, with train counts. Writes <split>/ids.npy,
    offsets.npy, vocab.json and tokenizer.json into `staging`."""
    # before the tokenizer's first parallel call, which sizes its thread pool for the process
    os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    tokens = subwords.vocabulary()
    counts = np.zeros(len(tokens), dtype=np.int64)
    lengths: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for split in SPLITS:
        split_bar, split_lengths = bar(split), []
        with (staging / f"{split}.tokens").open("wb") as ids_out:
            # large batches: one call spreads them over every thread
            for texts in text_batches(raw_dir / f"{split}.parquet", params.batch_size * workers):
                ids, full_lengths = subwords.encode_batch(texts)
                ids.astype(np.int32).tofile(ids_out)
                split_lengths.append(full_lengths)
                if split == "train":
                    counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
                split_bar.update(len(full_lengths))
        split_bar.close()
        lengths[split] = np.concatenate(split_lengths) if split_lengths else np.empty(0, np.int64)
    seconds = time.perf_counter() - started

    unknown_id = subwords.unknown_id
    kept = {split: np.minimum(lengths[split], subwords.settings.max_tokens) for split in SPLITS}
    unknown = {split: write_ids(staging, split, kept[split], lambda chunk: chunk, unknown_id, np.int32) for split in SPLITS}
    write_vocab(staging / "vocab.json", tokens, counts.tolist())
    subwords.tokenizer.save(str(staging / TOKENIZER_FILE))
    return {"lengths": lengths, "kept": {s: int(k.sum()) for s, k in kept.items()}, "unknown": unknown,
            "vocab_size": len(tokens), "seconds": seconds}


def build_vocab(distinct: list[np.ndarray], counts: list[np.ndarray], strings: dict[int, str], min_freq: int, max_vocab: int | None) -> dict:
    """Train tokens with count >= min_freq, most frequent first, ties in string order."""
    if distinct:
        all_hashes, inverse = np.unique(np.concatenate(distinct), return_inverse=True)
        totals = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
    else:
        all_hashes, totals = np.empty(0, np.uint64), np.empty(0, np.int64)
    keep = totals >= min_freq
    entries = sorted(
        ((strings[h], int(c), h) for h, c in zip(all_hashes[keep].tolist(), totals[keep].tolist())),
        key=lambda e: (-e[1], e[0]),
    )
    if max_vocab is not None:
        entries = entries[: max_vocab - 2]
    return {"tokens": [e[0] for e in entries], "counts": [e[1] for e in entries], "hashes": [e[2] for e in entries]}


def empty_vocab_message(distinct: list[np.ndarray], counts: list[np.ndarray], strings: dict[int, str], min_freq: int) -> str:
    top = build_vocab(distinct, counts, strings, 1, 3)
    if not top["tokens"]:
        return "the train split has no tokens at all, so there is no vocabulary; check download.text_columns"
    return (
        f"tokenize.min_freq: no train token occurs {min_freq:,} times or more (the most frequent, {short_repr(top['tokens'][0], 40)}, "
        f"occurs {top['counts'][0]:,}), so the vocabulary would hold only <pad> and <unk>; lower tokenize.min_freq"
    )


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
