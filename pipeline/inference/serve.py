"""`serve`: the bundle behind HTTP (Starlette on uvicorn), torch-free like `predict`.

    POST /predict   {"text": "..."} -> {"label", "score", "probabilities"}
                    {"texts": ["...", ...]} -> {"predictions": [{"label", "score", "probabilities"}, ...]}
    GET  /health    {"status": "ok"}
    GET  /metadata  labels, arch, model file, checksums, versions, limits

`create_app` loads the bundle once (a bad bundle is a PipelineError before anything listens).
Requests are batched under load: a queue collects the texts of concurrent requests for up
to `max_wait_ms` (or until `max_batch` texts) and one thread tokenizes and runs them in one
ONNX Runtime call, off the event loop. Limits are checked before any work: body bytes (413),
texts per request and characters per text (413), malformed JSON (400), a wrong shape (422);
every error body is JSON {"error": ...}. Uvicorn's graceful shutdown on SIGTERM lets
in-flight requests finish; the batch thread stops after them.

Import pipeline.text.torchless before this module where torch must stay out (the CLI does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import platform
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from pipeline.text.spacy_tokenizer import Hasher, Workers


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000  # request body; more is 413 before it is read further
    max_texts: int = 256  # texts in one request
    max_text_chars: int = 100_000  # characters in one text
    max_batch: int = 64  # texts per ONNX Runtime call, across requests
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for others


class PredictRequest(BaseModel):
    """Exactly one of `text` (one text) or `texts` (a batch)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        return self


def error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class Batcher:
    """Groups the texts of concurrent requests into batches run by one worker thread."""

    def __init__(self, classify, max_batch: int, max_wait_ms: float, concurrent: int = 1):
        self.classify, self.max_batch, self.max_wait = classify, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.concurrent = concurrent  # batches in flight (more than one when a tokenizing process works beside this one)
        self.executor = ThreadPoolExecutor(concurrent, thread_name_prefix="classify")
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()
        self.batches = self.texts = 0

    def start(self) -> None:
        self.slots = asyncio.Semaphore(self.concurrent)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def probabilities(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            items = [await self.queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
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
        texts = [text for batch, _ in items for text in batch]
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self.classify, texts)
        except Exception as exc:  # a bug: every waiting request gets it (as a 500), the loop goes on
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.slots.release()
        self.batches, self.texts = self.batches + 1, self.texts + len(texts)
        start = 0
        for batch, future in items:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(result[start : start + len(batch)])
            start += len(batch)


def create_app(bundle_dir: Path, int8: bool = True, limits: Limits = Limits(), threads: int = 1, workers: int = 0) -> Starlette:
    """The app for one bundle, loaded and checked now (a PipelineError if it is bad). `workers`
    tokenizing processes (spaCy holds the GIL, so a process of its own leaves this one free for
    HTTP and ONNX Runtime); 0: tokenize in this process, in the batch thread."""
    model_file = INT8_MODEL if int8 else FP32_MODEL
    bundle = Bundle.load(bundle_dir, verify=(model_file, VOCAB, LABELS, TEXT_SETTINGS))
    classifier = Classifier(bundle, int8=int8, threads=threads)
    labels = bundle.labels
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()

    # a pretrained model's tokenizer spreads a batch over the cores itself: no tokenizing process
    workers = workers if bundle.settings.in_worker_processes else 0
    pool = Workers(bundle.settings, workers, Hasher.hash_bounded, always_pool=True) if workers else None

    def classify(texts: list[str]) -> np.ndarray:
        tokens, lengths = pool.submit(texts).get() if pool is not None else classifier.tokenize(texts)
        return classifier.probabilities(classifier.token_ids(tokens, lengths), limits.max_batch)

    batcher = Batcher(classify, limits.max_batch, limits.max_wait_ms, concurrent=workers + 1)

    async def read_body(request: Request) -> bytes | JSONResponse:
        declared = request.headers.get("content-length")
        too_large = error(413, f"request body over {limits.max_body_bytes:,} bytes; send fewer or shorter texts per request")
        if declared is not None:
            if not declared.isdigit():
                return error(400, "invalid Content-Length header")
            if int(declared) > limits.max_body_bytes:
                return too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                return too_large
        return bytes(body)

    async def predict(request: Request) -> JSONResponse:
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"body is not valid JSON ({exc}); send {{\"text\": \"...\"}} or {{\"texts\": [\"...\"]}}")
        try:
            parsed = PredictRequest.model_validate(data)
        except ValidationError as exc:
            details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
            return error(422, 'send {"text": "..."} or {"texts": ["...", ...]}', details=details)
        texts = [parsed.text] if parsed.text is not None else parsed.texts
        if len(texts) > limits.max_texts:
            return error(413, f"{len(texts):,} texts in one request; at most {limits.max_texts:,} (--max-texts)")
        longest = max((len(t) for t in texts), default=0)
        if longest > limits.max_text_chars:
            return error(413, f"a text of {longest:,} characters; at most {limits.max_text_chars:,} (--max-text-chars)")
        if not texts:
            return JSONResponse({"predictions": []})
        rows = await batcher.probabilities(texts)
        if parsed.text is not None:
            return JSONResponse(prediction(rows[0], labels))
        return JSONResponse({"predictions": [prediction(row, labels) for row in rows]})

    async def health(request: Request) -> JSONResponse:
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
            "limits": limits.__dict__,
            "served": {"batches": batcher.batches, "texts": batcher.texts},
        })

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail, **({"allow": exc.headers["Allow"]} if exc.headers and "Allow" in exc.headers else {}))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if pool is not None:
            pool.__enter__()
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            if pool is not None:
                pool.__exit__(None, None, None)

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metadata", metadata, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


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
    config = uvicorn.Config(application, log_level="warning", timeout_graceful_shutdown=shutdown_seconds, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
