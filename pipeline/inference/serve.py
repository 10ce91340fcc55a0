"""`serve`: the bundle behind HTTP (Starlette on uvicorn), torch-free like `predict`.

    POST /predict   {"text": "..."} -> {"label", "score", "probabilities"}
                    {"texts": ["...", ...]} -> {"predictions": [{"label", "score", "probabilities"}, ...]}
                    multi-label bundles: {"labels": [...], "scores": {...}} per text, and with
                    "all_probabilities": true every label's probability too
    GET  /health    {"status": "ok"}, or 503 {"status": "unavailable"} when it cannot classify
    GET  /metadata  labels, arch, model file, checksums, versions, limits

`create_app` loads the bundle once (a bad bundle is a PipelineError before anything listens).
Requests are batched under load: a queue collects the texts of concurrent requests for up
to `max_wait_ms` (or until `max_batch` texts) and one thread tokenizes and runs them in one
ONNX Runtime call, off the event loop.

What it protects against, so that one client cannot hurt the others:
  - limits checked before any work: body bytes (413), texts per request and characters per
    text (413), malformed or too deeply nested JSON (400), a wrong shape (422);
  - a text that fails is retried alone, so it fails only its own request (422);
  - invalid Unicode (a lone surrogate from a JSON escape) is replaced by U+FFFD, as everywhere;
  - the queue is bounded: when it is full, 503 with Retry-After; every wait is bounded
    (`request_timeout_s`: 503); a tokenizing process that dies is replaced, and /health
    checks that a text can be classified;
  - headers must arrive within `header_timeout_s` (a slow client is disconnected);
  - every error body is JSON {"error": ...}, internal failures included (500).
Uvicorn's graceful shutdown on SIGTERM lets in-flight requests finish; the batch thread and the
tokenizing processes stop after them. Not here: authentication and TLS (put a reverse proxy
in front); see docs/inference.md, Serving.

Import pipeline.text.torchless before this module where torch must stay out (the CLI does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import platform
import signal
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.inference.bundle import FP32_MODEL, INT8_MODEL, LABELS, MANIFEST, TEXT_SETTINGS, VOCAB, Bundle
from pipeline.inference.classifier import Classifier, prediction
from pipeline.text.settings import valid_unicode
from pipeline.text.spacy_tokenizer import Hasher, WorkerDied, Workers

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000  # request body; more is 413 before it is read further
    max_texts: int = 256  # texts in one request
    max_text_chars: int = 100_000  # characters in one text
    max_batch: int = 64  # texts per ONNX Runtime call, across requests
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for others
    max_queue: int = 512  # requests waiting to be classified; more get 503 with Retry-After
    request_timeout_s: float = 30.0  # the longest a request waits for its answer (503 after)
    header_timeout_s: float = 10.0  # a client must send its request headers within this


class PredictRequest(BaseModel):
    """Exactly one of `text` (one text) or `texts` (a batch)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = None
    texts: list[str] | None = None
    all_probabilities: bool = False  # multi-label bundles: every label's probability beside the labels chosen

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        return self


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class Refused(Exception):
    """A request that gets an error response instead of predictions: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 503 else None
        return error(self.status, self.message, headers)


BUSY = "the server is busy (its queue is full); retry shortly"
UNAVAILABLE = "the server cannot classify now (a tokenizing process failed); retry shortly"


class Batcher:
    """Groups the texts of concurrent requests into batches run by worker threads. A batch that
    fails is run again request by request, so that a text that cannot be classified fails only
    its own request."""

    def __init__(self, classify: Callable[[list[str]], np.ndarray], limits: Limits, concurrent: int = 1):
        self.classify, self.limits = classify, limits
        self.max_wait = limits.max_wait_ms / 1000
        self.concurrent = concurrent  # batches in flight (more than one when a tokenizing process works beside this one)
        self.executor = ThreadPoolExecutor(concurrent, thread_name_prefix="classify")
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()
        self.batches = self.texts = self.refused = 0

    def start(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=self.limits.max_queue)
        self.slots = asyncio.Semaphore(self.concurrent)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def probabilities(self, texts: list[str]) -> np.ndarray:
        """The rows for `texts`; Refused(503) when the queue is full or the answer takes too long."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((texts, future))
        except asyncio.QueueFull:
            self.refused += 1
            raise Refused(503, BUSY) from None
        try:
            return await asyncio.wait_for(future, self.limits.request_timeout_s)
        except TimeoutError:
            raise Refused(503, f"no answer within {self.limits.request_timeout_s:g} s (the server is overloaded); retry shortly") from None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            items = [await self.queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.limits.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                items.append(item)
                count += len(item[0])
            task = loop.create_task(self._classify(items))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _classify(self, items: list) -> None:
        loop = asyncio.get_running_loop()
        try:
            texts = [text for batch, _ in items for text in batch]
            try:
                result = await loop.run_in_executor(self.executor, self.classify, texts)
            except (WorkerDied, TimeoutError):
                return _settle(items, Refused(503, UNAVAILABLE))
            except Exception:  # noqa: BLE001 - one request's text, or a bug: each request again on its own
                if len(items) == 1:
                    return _settle(items, await self._alone(items[0][0]))
                for batch, future in items:
                    _settle([(batch, future)], await self._alone(batch))
                return
            self.batches, self.texts = self.batches + 1, self.texts + len(texts)
            start = 0
            for batch, future in items:
                _settle([(batch, future)], result[start : start + len(batch)])
                start += len(batch)
        finally:
            self.slots.release()

    async def _alone(self, texts: list[str]) -> np.ndarray | Exception:
        """One request's texts classified on their own: its rows, or why they cannot be."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.classify, texts)
        except (WorkerDied, TimeoutError):
            return Refused(503, UNAVAILABLE)
        except (ValueError, TypeError, UnicodeError) as exc:  # what tokenizers raise for a text they cannot take
            return Refused(422, f"a text of this request cannot be classified ({type(exc).__name__}: {str(exc)[:200]})")
        except Exception as exc:  # noqa: BLE001 - a bug: a 500 for this request, the server goes on
            return exc


def _settle(items: list, outcome: np.ndarray | Exception) -> None:
    for _, future in items:
        if future.done():  # a client that went away cancelled its future
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Tokenizing:
    """Where a batch's texts are tokenized: in this process, or in `workers` processes (spaCy
    holds the GIL, so a process of its own leaves this one free for HTTP and ONNX Runtime). A
    pool whose process died is replaced, and the batch tried once more."""

    def __init__(self, classifier: Classifier, workers: int, timeout: float):
        self.classifier, self.timeout = classifier, timeout
        self.pool = Workers(classifier.bundle.settings, workers, Hasher.hash_bounded, always_pool=True) if workers else None
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.pool is None:
            return self.classifier.tokenize(texts)
        for attempt in (1, 2):
            pool = self.pool.pool
            try:
                return Workers.result(self.pool.submit(texts), self.timeout)
            except WorkerDied:
                with self.lock:
                    if self.pool.pool is pool:  # the first thread to see it replaces the pool
                        self.pool.restart()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> None:
        if self.pool is not None:
            self.pool.__enter__()

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.__exit__(None, None, None)


def create_app(bundle_dir: Path, int8: bool = True, limits: Limits = Limits(), threads: int = 1, workers: int = 0) -> Starlette:
    """The app for one bundle, loaded and checked now (a PipelineError if it is bad). `workers`
    tokenizing processes; 0: tokenize in this process, in the batch thread."""
    model_file = INT8_MODEL if int8 else FP32_MODEL
    bundle = Bundle.load(bundle_dir, verify=(model_file, VOCAB, LABELS, TEXT_SETTINGS))
    classifier = Classifier(bundle, int8=int8, threads=threads)
    labels = bundle.labels
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
    # a pretrained model's tokenizer spreads a batch over the cores itself: no tokenizing process
    tokenizing = Tokenizing(classifier, workers if bundle.settings.in_worker_processes else 0, limits.request_timeout_s)

    def classify(texts: list[str]) -> np.ndarray:
        return classifier.probabilities(classifier.token_ids(*tokenizing(texts)), limits.max_batch)

    batcher = Batcher(classify, limits, concurrent=(tokenizing.pool is not None) + 1)
    replaced = [0]  # invalid characters replaced by U+FFFD, over every request

    async def predict(request: Request) -> JSONResponse:
        texts, single, everything = await request_texts(request, limits)
        cleaned = [valid_unicode(text) for text in texts]
        texts = [text for text, _ in cleaned]
        replaced[0] += sum(count for _, count in cleaned)
        rows = await batcher.probabilities(texts) if texts else np.zeros((0, len(labels)))
        if single:
            return JSONResponse(prediction(rows[0], bundle.calibration, everything))
        return JSONResponse({"predictions": [prediction(row, bundle.calibration, everything) for row in rows]})

    async def health(request: Request) -> JSONResponse:
        try:  # a text through the tokenizing process (replaced if it died), beside the batch queue: load is not ill health
            await asyncio.get_running_loop().run_in_executor(None, tokenizing, ["ok"])
        except (WorkerDied, TimeoutError) as exc:
            return JSONResponse({"status": "unavailable", "why": str(exc) or "timeout"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok"})

    async def metadata(request: Request) -> JSONResponse:
        import onnxruntime

        library, _, library_version = classifier.tokenizer_library()
        files = bundle.manifest["files"]
        return JSONResponse({
            "labels": labels,
            "arch": bundle.manifest.get("arch"),
            "model": model_file,
            "bundle": str(bundle_dir),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "files_sha256": {name: entry.get("sha256") for name, entry in files.items()},
            "text": bundle.settings.to_dict(),
            "exported_with": bundle.manifest.get("versions", {}),
            "versions": {"pipeline": __version__, "python": platform.python_version(),
                         "onnxruntime": onnxruntime.__version__, library: library_version},
            "limits": asdict(limits),
            "served": {"batches": batcher.batches, "texts": batcher.texts, "refused_busy": batcher.refused,
                       "invalid_unicode_replaced": replaced[0]},
        })

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokenizing.start()
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            tokenizing.stop()

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metadata", metadata, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Refused: refused, Exception: internal_error},
        lifespan=lifespan,
    )


async def read_body(request: Request, limits: Limits) -> bytes:
    declared = request.headers.get("content-length")
    too_large = Refused(413, f"request body over {limits.max_body_bytes:,} bytes; send fewer or shorter texts per request")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, "invalid Content-Length header")
        if int(declared) > limits.max_body_bytes:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise too_large
    return bytes(body)


async def request_texts(request: Request, limits: Limits) -> tuple[list[str], bool, bool]:
    """The request's texts, checked against the limits, whether it sent one `text`, and whether it
    asks for every label's probability (`"all_probabilities": true`, for multi-label bundles)."""
    body = await read_body(request, limits)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"body is not valid JSON ({exc}); send {{\"text\": \"...\"}} or {{\"texts\": [\"...\"]}}") from None
    except RecursionError:
        raise Refused(400, "body is JSON nested too deeply; send {\"text\": \"...\"} or {\"texts\": [\"...\"]}") from None
    try:
        parsed = PredictRequest.model_validate(data)
    except ValidationError as exc:
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
        raise _ShapeError(details) from None
    texts = [parsed.text] if parsed.text is not None else parsed.texts
    if len(texts) > limits.max_texts:
        raise Refused(413, f"{len(texts):,} texts in one request; at most {limits.max_texts:,} (--max-texts)")
    longest = max((len(t) for t in texts), default=0)
    if longest > limits.max_text_chars:
        raise Refused(413, f"a text of {longest:,} characters; at most {limits.max_text_chars:,} (--max-text-chars)")
    return texts, parsed.text is not None, parsed.all_probabilities


class _ShapeError(Refused):
    def __init__(self, details: list):
        super().__init__(422, 'send {"text": "..."} or {"texts": ["...", ...]}')
        self.details = details

    def response(self) -> JSONResponse:
        return error(self.status, self.message, details=self.details)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error(exc.status_code, exc.detail, **({"allow": exc.headers["Allow"]} if exc.headers and "Allow" in exc.headers else {}))


async def refused(request: Request, exc: Refused) -> JSONResponse:
    return exc.response()


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: a JSON 500 for this request (the traceback goes to the server's log), the server goes on."""
    return error(500, f"internal error ({type(exc).__name__}); the server's log has the details")


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's httptools protocol, closing a connection whose request headers take longer
    than `seconds` to arrive (uvicorn has no such limit; a slow client would hold a
    connection open for as long as it liked)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeout(HttpToolsProtocol):
        timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self.timer is None:
                self.timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def _too_slow(self) -> None:
            self.timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeout


def run_serve(
    bundle_dir: Path, host: str, port: int, int8: bool = True, limits: Limits = Limits(), threads: int = 1, workers: int = 0,
    shutdown_seconds: float = 30.0, announce: Callable[[str], None] = print,
) -> None:
    """Load the bundle, listen on host:port (0: a free port), `announce` the URL, and serve until
    SIGTERM or Ctrl-C, letting in-flight requests finish for up to `shutdown_seconds`."""
    import socket

    import uvicorn

    application = create_app(bundle_dir, int8=int8, limits=limits, threads=threads, workers=workers)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, reuse_port=False)
    except OSError as exc:
        raise PipelineError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None
    announce(f"http://{host}:{sock.getsockname()[1]}")
    config = uvicorn.Config(application, log_level="warning", timeout_graceful_shutdown=shutdown_seconds, access_log=False,
                            http=header_timeout_protocol(limits.header_timeout_s))
    # uvicorn drains on SIGTERM, then raises the signal again for the previous handler: a no-op
    # one, so that a drained server exits 0 (a supervisor's clean stop), not killed by the signal
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
