"""`predict`: classify texts with an exported bundle; JSON Lines out, one line per input text.

Texts come from arguments, from --file (one text per line; or a CSV/TSV column; or a JSON
Lines field) or from stdin (one per line). Input is streamed in chunks: tokenized by spaCy
(in worker processes when there is more than one chunk and more than one core), run
through ONNX Runtime in length-sorted batches, written in input order.

Import pipeline.torchless before this module where torch must stay out (the CLI does).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TextIO

from pipeline.bundle import FP32_MODEL, INT8_MODEL, LABELS, TEXT_SETTINGS, VOCAB, Bundle, Classifier
from pipeline.errors import PipelineError
from pipeline.system import available_cores
from pipeline.text import Hasher, Workers

CHUNK = 512  # texts per tokenizing task: large enough to amortize the worker round trip
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def _lines(handle: TextIO) -> Iterator[str]:
    for line in handle:
        yield line.rstrip("\r\n")


def read_texts(path: Path, column: str = "text") -> Iterator[str]:
    """Texts of a file, streamed: a `column` of a CSV/TSV with a header, a `column` field of
    JSON Lines, otherwise one text per line (an empty line is an empty text)."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file; pass a text file, CSV/TSV or JSON Lines with --file") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read it ({exc.strerror})") from None
    with handle:
        try:
            suffix = path.suffix.lower()
            if suffix in TABLE_SUFFIXES:
                reader = csv.DictReader(handle, delimiter=TABLE_SUFFIXES[suffix])
                if column not in (reader.fieldnames or []):
                    found = ", ".join(reader.fieldnames or []) or "none"
                    raise PipelineError(f"{path} has no column {column!r} (columns: {found}); pass --column NAME")
                for row in reader:
                    yield row[column] or ""
            elif suffix in JSONL_SUFFIXES:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise PipelineError(f"{path}:{number}: not a JSON object; JSON Lines need one object per line") from None
                    if not isinstance(record, dict) or not isinstance(record.get(column), str):
                        raise PipelineError(f"{path}:{number}: no string field {column!r}; pass --column NAME")
                    yield record[column]
            else:
                yield from _lines(handle)
        except UnicodeDecodeError:
            raise PipelineError(f"{path}: not UTF-8 text; convert it to UTF-8 first") from None
        except csv.Error as exc:
            raise PipelineError(f"{path}: malformed CSV ({exc})") from None


def _short(probability: float) -> float:
    """Six significant digits: readable, and a small probability does not collapse to 0."""
    return float(f"{probability:.6g}")


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while chunk := list(islice(iterator, size)):
        yield chunk


def predict_lines(
    bundle_dir: Path,
    texts: Iterable[str],
    out: TextIO,
    int8: bool = True,
    batch_size: int = 64,
    workers: int | None = None,
) -> int:
    """Write one JSON line per text to `out`; returns the number of texts."""
    model = INT8_MODEL if int8 else FP32_MODEL
    bundle = Bundle.load(bundle_dir, verify=(model, VOCAB, LABELS, TEXT_SETTINGS))
    # ONNX Runtime uses the cores left over from tokenizing
    workers = workers or available_cores()
    classifier = Classifier(bundle, int8=int8, threads=max(1, available_cores() - workers + 1))
    chunks = _chunks(texts, CHUNK)
    first = list(islice(chunks, 2))
    if len(first) < 2:
        workers = 1  # one chunk: a pool would cost more than it saves
    pending: deque[list[str]] = deque()

    def feed() -> Iterator[list[str]]:
        for chunk in [*first, *chunks]:
            pending.append(chunk)
            yield chunk

    names = bundle.labels
    count = 0
    with Workers(bundle.settings, workers, Hasher.hash_batch) as pool:
        for hashes, lengths in pool.map(feed()):
            chunk = pending.popleft()
            probabilities = classifier.probabilities(classifier.token_ids(hashes, lengths), batch_size)
            best = probabilities.argmax(1)
            lines = []
            for text, row, top in zip(chunk, probabilities, best):
                record = {
                    "text": text,
                    "label": names[top],
                    "score": _short(row[top]),
                    "probabilities": {name: _short(p) for name, p in zip(names, row)},
                }
                lines.append(json.dumps(record, ensure_ascii=False))
            out.write("\n".join(lines) + "\n")
            count += len(chunk)
    return count


def stdin_texts() -> Iterator[str]:
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict", newline="")
    try:
        yield from _lines(stream)
    except UnicodeDecodeError:
        raise PipelineError("stdin is not UTF-8 text; convert it to UTF-8 first") from None
