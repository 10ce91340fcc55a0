"""spaCy's rule-based tokenizer: text -> token hashes -> token ids, shared by `tokenize` and `predict`.

spaCy's rule-based tokenizer gives each token a 64-bit hash of its text (or of
its lower-case form). We work on those hashes with NumPy and look strings up
only once per new token, which keeps the per-token Python work near zero.
No torch here: `predict` must run without it.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from pipeline.errors import PipelineError
from pipeline.text.settings import UNK_ID, TextSettings, truncate

MAX_LEXEMES = 200_000  # token types spaCy may cache in `Hasher.hash_bounded` before it starts afresh


# Languages whose spaCy tokenizer needs a package that spaCy does not install (spaCy 3.8,
# spacy/lang/*/__init__.py): the module it imports -> how to get it. Every other language
# spaCy has (zh, ru and uk included) tokenizes with spaCy alone.
EXTRA_PACKAGES = {
    "sudachipy": "pip install sudachipy sudachidict_core",  # ja
    "sudachidict_core": "pip install sudachipy sudachidict_core",  # ja
    "natto": "pip install natto-py, with the mecab-ko and mecab-ko-dic system libraries",  # ko
    "pythainlp": "pip install pythainlp",  # th
    "pyvi": "pip install pyvi",  # vi
}


def _missing_module(exc: BaseException) -> str | None:
    """The module whose import failed, from an ImportError or one it replaced: spaCy
    re-raises its own ImportError `from None`, keeping the original as __context__."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError) and current.name:
            return current.name
        current = current.__cause__ or current.__context__
    return None


def make_tokenizer(language: str):
    """spaCy's rule-based tokenizer for a language code; a PipelineError names an unknown
    code, or the package a known language needs and how to install it."""
    import spacy

    unknown = PipelineError(f"tokenize.language: spaCy has no language {language!r}; use a code such as en, de, fr, es")
    try:
        spacy.util.get_lang_class(language)
    except ImportError as exc:
        module = _missing_module(exc)
        if module is None or module.startswith("spacy.lang."):
            raise unknown from None
        raise PipelineError(f"tokenize.language: {language!r} needs the Python module {module!r}, which is not installed; install it") from None
    except (KeyError, ValueError, OSError):
        raise unknown from None
    try:
        return spacy.blank(language).tokenizer
    except ImportError as exc:
        module = (_missing_module(exc) or "?").split(".")[0]
        install = EXTRA_PACKAGES.get(module, f"install the package that provides it (pip install {module}?)")
        raise PipelineError(
            f"tokenize.language: spaCy's {language!r} tokenizer needs the module {module!r}, which is not installed; "
            f"{install}, or pick another language"
        ) from None


class Hasher:
    """Tokenizes batches of texts into 64-bit token hashes, truncated to max_tokens."""

    def __init__(self, settings: TextSettings):
        from spacy.attrs import LOWER, ORTH

        self.settings = settings
        self.tokenizer = make_tokenizer(settings.language)
        self.attr = LOWER if settings.lowercase else ORTH
        self.reported: set[int] = set()  # hashes whose strings were already handed out (tokenize)

    def hash_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated hashes of kept tokens, full token count of each text before truncation)."""
        limit, truncation = self.settings.max_tokens, self.settings.truncation
        pieces, lengths = [], np.empty(len(texts), dtype=np.int64)
        for i, doc in enumerate(self.tokenizer.pipe(self.settings.clean(t) for t in texts)):
            lengths[i] = len(doc)
            pieces.append(truncate(doc.to_array(self.attr), limit, truncation))
        hashes = np.concatenate(pieces).astype(np.uint64, copy=False) if pieces else np.empty(0, np.uint64)
        return hashes, lengths

    def hash_bounded(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`hash_batch` with spaCy's vocabulary kept bounded, for long-running inference: spaCy
        caches every token type it meets, so a long stream of new words (numbers, names, typos)
        would grow memory without end. Hashes depend on the token text only, so a fresh
        tokenizer gives the same hashes. (Not for `tokenize`, which looks strings up later.)"""
        if len(self.tokenizer.vocab) > MAX_LEXEMES:
            self.tokenizer = make_tokenizer(self.settings.language)
        return self.hash_batch(texts)

    def string(self, token_hash: int) -> str:
        return self.tokenizer.vocab.strings[token_hash]

    def hashes_of(self, tokens: list[str]) -> np.ndarray:
        """The hash each vocabulary string has as a token (its LOWER or ORTH value)."""
        strings = self.tokenizer.vocab.strings
        return np.fromiter((strings.add(token) for token in tokens), dtype=np.uint64, count=len(tokens))


class HashLookup:
    """Maps token hashes to vocabulary ids with one sorted array (no Python dict per token)."""

    def __init__(self, hashes_by_id: np.ndarray):
        # hashes_by_id[i] is the hash of token id i; ids 0 and 1 (<pad>, <unk>) are never looked up.
        ids = np.arange(2, len(hashes_by_id), dtype=np.int32)
        order = np.argsort(hashes_by_id[2:], kind="stable")
        self.sorted_hashes = hashes_by_id[2:][order]
        self.sorted_ids = ids[order]

    def ids(self, hashes: np.ndarray) -> np.ndarray:
        if len(self.sorted_hashes) == 0:
            return np.full(len(hashes), UNK_ID, dtype=np.int32)
        pos = np.searchsorted(self.sorted_hashes, hashes)
        pos[pos == len(self.sorted_hashes)] = 0
        found = self.sorted_hashes[pos] == hashes
        return np.where(found, self.sorted_ids[pos], UNK_ID).astype(np.int32, copy=False)


# --- hashing in worker processes ------------------------------------------------------------
_worker_hasher: Hasher | None = None


def _init_worker(settings: TextSettings) -> None:
    global _worker_hasher
    if multiprocessing.parent_process() is not None:  # a pool process: Ctrl-C is the parent's to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_hasher = Hasher(settings)


def _run_task(task: Callable[[Hasher, list[str]], object], texts: list[str]) -> object:
    assert _worker_hasher is not None
    return task(_worker_hasher, texts)


WORKER_DIED = "a tokenizing process stopped unexpectedly (killed, or out of memory?); rerun"


class Workers:
    """Runs `task(hasher, texts)` over batches of texts in order, in-process (workers=1) or in a
    process pool with a bounded amount of work in flight. `task` must be a module-level function.
    A pool process that dies (killed, out of memory) fails what it was doing at once with
    `WorkerDied`, never a wait without end; `restart` gives a fresh pool."""

    def __init__(self, settings: TextSettings, workers: int, task: Callable[[Hasher, list[str]], object], always_pool: bool = False):
        self.settings, self.workers, self.task, self.pool = settings, workers, task, None
        self.always_pool = always_pool  # a pool even of one process (a server: tokenizing beside the event loop)

    def __enter__(self) -> Workers:
        if self.workers == 1 and not self.always_pool:
            _init_worker(self.settings)
        else:
            self.pool = self._new_pool()
        return self

    def _new_pool(self) -> ProcessPoolExecutor:
        # forkserver: no fork of a threaded parent (pyarrow, ONNX Runtime), yet workers start
        # fast because the server imports spaCy once (without torch: see pipeline.text.torchless).
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["pipeline.text.torchless", "spacy", "pipeline.text.spacy_tokenizer"])
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker, initargs=(self.settings,))

    def restart(self) -> None:
        """A fresh pool in place of a broken one (its processes are gone)."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # the tasks running are short: a batch each
            self.pool = None

    def submit(self, texts: list[str]) -> Future:
        """Start `task` on one batch in the pool; a Future (`done()`, and `result` through `Workers.result`)."""
        assert self.pool is not None, "submit needs a pool (see __enter__)"
        try:
            return self.pool.submit(_run_task, self.task, texts)
        except BrokenProcessPool:
            raise WorkerDied(WORKER_DIED) from None

    @staticmethod
    def result(future: Future, timeout: float | None = None) -> object:
        """The task's result; WorkerDied if its process died."""
        try:
            return future.result(timeout)
        except BrokenProcessPool:
            raise WorkerDied(WORKER_DIED) from None

    def map(self, batches: Iterable[list[str]]) -> Iterator:
        if self.pool is None:
            for texts in batches:
                yield _run_task(self.task, texts)
            return
        pending: deque = deque()
        for texts in batches:
            pending.append(self.submit(texts))
            if len(pending) >= 4 * self.workers:
                yield self.result(pending.popleft())
        while pending:
            yield self.result(pending.popleft())


class WorkerDied(PipelineError):
    """A pool process died while it had work: the machine's doing (a kill, the OOM killer), not the input's."""
