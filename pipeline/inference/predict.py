"""`predict`: classify texts with an exported bundle; JSON Lines out, one line per input text.

Texts come from arguments, from --file (one text per line; or a CSV/TSV column; or a JSON
Lines field, read by the same streaming reader as `download`'s formats) or from stdin.
Input is streamed: a reader thread cuts it into chunks (full ones, or whatever has arrived
when the input pauses), chunks are tokenized (by spaCy in worker processes once there is
more than one chunk and more than one core; by a pretrained model's own tokenizer on every
core of this process) and run through ONNX Runtime, and each chunk's
lines are written, in input order, and flushed as soon as it is done. Memory stays bounded
whatever the input size: a few chunks in flight, and spaCy's lexeme cache is started afresh
when it grows large.

Import pipeline.text.torchless before this module where torch must stay out (the CLI does).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from pipeline.data.readers import stream_records, table_format
from pipeline.errors import PipelineError
from pipeline.files import ENVIRONMENT_ERRNOS, atomic_file
from pipeline.inference.bundle import FP32_MODEL, INT8_MODEL, LABELS, TEXT_SETTINGS, VOCAB, Bundle
from pipeline.inference.calibration import Calibration
from pipeline.inference.classifier import Classifier, prediction
from pipeline.system import available_cores
from pipeline.text.settings import valid_unicode
from pipeline.text.spacy_tokenizer import Hasher, Workers

CHUNK = 512  # texts per tokenizing task: large enough to amortize the worker round trip
PAUSE_SECONDS = 0.05  # input idle this long: classify what has arrived instead of waiting for a full chunk


def file_texts(path: Path, column: str = "text", encoding: str = "utf-8", on_bad: Callable[[str], None] | None = None) -> Iterator[str]:
    """Texts of a file, streamed: a `column` of a CSV/TSV with a header, a `column` field of
    JSON Lines, otherwise one text per line (an empty line is an empty text)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file; pass a text file, CSV/TSV or JSON Lines with --file") from None
    except IsADirectoryError:
        raise PipelineError(f"{path} is a folder; pass a text file, CSV/TSV or JSON Lines with --file") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read it ({exc.strerror})") from None
    return _records(handle, str(path), table_format(path), column, encoding, on_bad)


def stdin_texts(encoding: str = "utf-8", on_bad: Callable[[str], None] | None = None) -> Iterator[str]:
    """One text per line of stdin."""
    return _records(sys.stdin.buffer, "stdin", None, "text", encoding, on_bad)


def _records(handle: BinaryIO, where: str, fmt: str | None, column: str, encoding: str, on_bad) -> Iterator[str]:
    with handle:
        for _, text in stream_records(handle, where, fmt, column, encoding, on_bad):
            yield text


def echoed(text: str, limit: int | None) -> str:
    """What a line shows of its text: all of it, or its first `limit` characters and "…"."""
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def json_lines(texts: list[str], probabilities: np.ndarray, calibration: Calibration, echo_chars: int | None = None,
               all_probabilities: bool = False) -> str:
    return "".join(
        json.dumps({"text": echoed(text, echo_chars), **prediction(row, calibration, all_probabilities)}, ensure_ascii=False) + "\n"
        for text, row in zip(texts, probabilities)
    )


_END = object()


class Chunker:
    """Reads an iterable of texts in a thread and hands out chunks in order: full ones of `size`
    texts, or, when the input pauses, whatever has arrived. At most `ahead` full chunks wait, so
    memory is bounded. An error of the input (a bad line) comes out after every text before it."""

    def __init__(self, texts: Iterable[str], size: int, ahead: int):
        self.texts, self.size = texts, size
        self.ready: queue.Queue = queue.Queue(maxsize=ahead)
        self.lock = threading.Lock()
        self.partial: list[str] = []
        self.thread = threading.Thread(target=self._read, name="predict-input", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for text in self.texts:
                with self.lock:  # a blocking put here is safe: next() takes the lock only when `ready` is empty
                    self.partial.append(text)
                    if len(self.partial) >= self.size:
                        self.ready.put(self.partial)
                        self.partial = []
            end: object = _END
        except BaseException as exc:  # handed to the consumer, in order
            end = exc
        with self.lock:
            if self.partial:
                self.ready.put(self.partial)
                self.partial = []
            self.ready.put(end)

    def next(self, wait: float) -> list[str] | object | None:
        """The next chunk, _END, the input's exception, or None if nothing arrived within `wait`."""
        try:
            return self.ready.get(timeout=wait)
        except queue.Empty:
            pass
        with self.lock:
            if not self.ready.empty():
                return self.ready.get_nowait()
            if self.partial:
                chunk, self.partial = self.partial, []
                return chunk
        return None


def _done(value: object) -> Future:
    """A finished Future holding `value` (a chunk tokenized in this process)."""
    future: Future = Future()
    future.set_result(value)
    return future


def predict_lines(
    bundle_dir: Path,
    texts: Iterable[str],
    out: TextIO,
    int8: bool = True,
    batch_size: int = 64,
    workers: int | None = None,
    flush: bool = True,
    echo_chars: int | None = None,
    all_probabilities: bool = False,
) -> int:
    """Write one JSON line per text to `out`, chunk by chunk in input order (flushed after each
    when `flush`); returns the number of texts. An exception of `texts` is raised after the
    lines of every text before it were written."""
    model = INT8_MODEL if int8 else FP32_MODEL
    bundle = Bundle.load(bundle_dir, verify=(model, VOCAB, LABELS, TEXT_SETTINGS))
    # ONNX Runtime uses the cores left over from tokenizing
    workers = (workers or available_cores()) if bundle.settings.in_worker_processes else 1
    classifier = Classifier(bundle, int8=int8, threads=max(1, available_cores() - workers + 1))
    in_flight = 2 * workers
    chunker = Chunker(texts, CHUNK, ahead=in_flight)
    pending: deque = deque()  # (texts, result) in input order
    pool: Workers | None = None
    count, started = 0, False

    def write_oldest() -> None:
        nonlocal count
        chunk, result = pending.popleft()
        tokens, lengths = Workers.result(result)
        probabilities = classifier.probabilities(classifier.token_ids(tokens, lengths), batch_size)
        out.write(json_lines(chunk, probabilities, bundle.calibration, echo_chars, all_probabilities))
        if flush:
            out.flush()
        count += len(chunk)

    try:
        while True:
            while pending and (pending[0][1].done() or len(pending) >= in_flight):
                write_oldest()
            item = chunker.next(PAUSE_SECONDS)
            if item is None:
                continue
            if item is _END or isinstance(item, BaseException):
                while pending:
                    write_oldest()
                if isinstance(item, BaseException):
                    raise item
                return count
            if pool is None and started and workers > 1:  # a second chunk: worth starting the pool
                pool = Workers(bundle.settings, workers, Hasher.hash_bounded).__enter__()
            started = True
            if pool is None:
                pending.append((item, _done(classifier.tokenize(item))))
            else:
                pending.append((item, pool.submit(item)))
    finally:
        if pool is not None:
            pool.__exit__(None, None, None)


# --- the command: which texts, which bundle, where the lines go ------------------------------
def _looks_like_path(text: str) -> bool:
    return bool(text) and not any(c.isspace() for c in text) and ("/" in text or "\\" in text or text in (".", ".."))


def bundle_and_texts(items: list[str], bundle: Path | None, default: Path) -> tuple[Path, list[str]]:
    """The bundle and the texts among the arguments: without --bundle, a first argument that is
    a folder is the bundle; a path that is no folder is an error rather than a text."""
    if bundle is not None:
        return bundle, items
    first = items[0] if items else ""
    if first and Path(first).is_dir():
        return Path(first), items[1:]
    if first and Path(first).is_file() and _looks_like_path(first):
        raise PipelineError(f"{first} is a file, not a text or a bundle; pass it with --file {first}")
    if _looks_like_path(first):
        raise PipelineError(
            f"{first}: no model bundle there (it looks like a path, so it is not taken as a text); "
            "run the export stage or pass --bundle FOLDER (with --bundle every argument is a text)"
        )
    return default, items


@dataclass
class Predicted:
    count: int | None  # texts classified (None when the reader of stdout stopped early)
    seconds: float
    skipped: list[str] = field(default_factory=list)  # the messages of the bad lines skipped (--skip-bad)
    replaced: int = 0  # invalid characters (lone surrogates) replaced by U+FFFD

    def valid(self, texts: Iterator[str]) -> Iterator[str]:
        """The texts with invalid Unicode replaced (pipeline.text.settings.valid_unicode), counted."""
        for text in texts:
            text, replaced = valid_unicode(text)
            self.replaced += replaced
            yield text


def run_predict(
    items: list[str],
    bundle: Path | None,
    default_bundle: Path,
    file: Path | None = None,
    column: str = "text",
    encoding: str = "utf-8",
    skip_bad: bool = False,
    int8: bool = True,
    out: Path | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    echo_chars: int | None = None,
    all_probabilities: bool = False,
) -> Predicted:
    """Classify the texts (arguments, `file`, or stdin) into JSON Lines on stdout, or atomically
    into `out`; each line echoes its text cut to `echo_chars` (None: whole)."""
    bundle, texts = bundle_and_texts(items, bundle, default_bundle)
    if texts and file is not None:
        raise PipelineError("give texts as arguments or with --file, not both")
    result = Predicted(None, 0.0)
    on_bad = result.skipped.append if skip_bad else None
    if texts:
        source: Iterator[str] = iter(texts)
    elif file is not None:
        source = file_texts(file, column, encoding, on_bad)
    elif not sys.stdin.isatty():
        source = stdin_texts(encoding, on_bad)
    else:
        raise PipelineError("no texts to classify: pass them as arguments, with --file, or on stdin (one per line)")
    source = result.valid(source)
    options = {"int8": int8, "batch_size": batch_size, "workers": workers, "echo_chars": echo_chars, "all_probabilities": all_probabilities}
    started = time.perf_counter()
    if out is None:
        try:
            result.count = predict_lines(bundle, source, sys.stdout, **options)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            raise PipelineError(f"cannot write the predictions to stdout ({exc.strerror}); check where it goes, or use --out FILE") from None
    else:
        with atomic_file(out) as handle:
            result.count = predict_lines(bundle, source, handle, flush=False, **options)
    result.seconds = time.perf_counter() - started
    return result
