"""`python -m pipeline`: one Typer command per stage, each a thin wrapper over a plain function.

Stage modules are imported inside the commands so that `--help` is instant and
`predict` never pulls in torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from pipeline import __version__, paths
from pipeline.errors import PipelineError
from pipeline.files import ENVIRONMENT_ERRNOS

app = typer.Typer(
    help="Reproducible text classification: download -> tokenize -> train -> evaluate -> export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MAX_ERROR_CHARS = 1000  # of the one error line a PipelineError prints

ParamsFile = Annotated[Path, typer.Option("--params", "-p", help="Params file to read.", dir_okay=False)]
ProcessedDir = Annotated[Path, typer.Option(help="Folder written by the tokenize stage.", file_okay=False)]
RuntimeFile = Annotated[Path, typer.Option(help="Where to write timings and device (JSON; not a metric).", dir_okay=False)]
MetricsFile = Annotated[Path, typer.Option(help="Where to write the stage's headline figures (JSON; the DVC metric).", dir_okay=False)]


@contextmanager
def reported_errors(interrupted: str = "nothing was written") -> Iterator[None]:
    """A PipelineError becomes one line on stderr and exit code 1; so does an OSError that only
    the machine can cause (no space, read-only, permission denied: never a bug of ours); Ctrl-C
    one line saying `interrupted` and exit code 130. Bugs keep their traceback."""
    try:
        yield
    except PipelineError as exc:
        _error_line(str(exc))
        raise typer.Exit(1) from None
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _error_line(f"{where}{exc.strerror}; check the disk and the permissions of the files and folders involved")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted (Ctrl-C); {interrupted}", err=True)
        raise typer.Exit(130) from None


def _error_line(text: str) -> None:
    message = " ".join(line.strip() for line in text.splitlines() if line.strip())  # always one line
    if len(message) > MAX_ERROR_CHARS:  # a huge bad value must not flood the terminal
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    typer.echo(f"error: {message}", err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Reproducible text classification: download -> tokenize -> train -> evaluate -> export."""


@app.command()
def download(
    params: ParamsFile = paths.PARAMS,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for {train,validation,test}.parquet.")] = paths.RAW_DIR,
    report: Annotated[Path, typer.Option(help="Where to write the data report (JSON).")] = paths.DATA_REPORT,
) -> None:
    """Fetch `download.source` and write clean train/validation/test splits (text, label)."""
    with reported_errors():
        from pipeline.params import load_params
        from pipeline.stages.download import run_download

        result = run_download(load_params(params).download, out, report)
        rows = ", ".join(f"{split} {result[split]['rows']:,}" for split in ("train", "validation", "test"))
        typer.echo(f"download: {rows} rows; {len(result['classes'])} classes -> {out}")


@app.command()
def tokenize(
    params: ParamsFile = paths.PARAMS,
    raw: Annotated[Path, typer.Option(help="Folder with the download stage's splits.")] = paths.RAW_DIR,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for token ids, vocabulary and labels.")] = paths.PROCESSED_DIR,
    report: Annotated[Path, typer.Option(help="Where to write the tokenize report (JSON).")] = paths.TOKENIZE_REPORT,
    runtime: RuntimeFile = paths.TOKENIZE_RUNTIME,
) -> None:
    """Tokenize with spaCy and build the vocabulary from train (or, for model.arch pretrained, with the
    model's own tokenizer and vocabulary), and store token ids compactly."""
    import pipeline.text.torchless  # noqa: F401  (before spaCy: tokenizing needs no torch, and it takes seconds to load)

    with reported_errors():
        from pipeline.params import load_params
        from pipeline.stages.tokenize import run_tokenize

        config = load_params(params)
        pretrained = config.model.pretrained if config.model.arch == "pretrained" else None
        result = run_tokenize(config.tokenize, raw, out, report, runtime_path=runtime, pretrained=pretrained, arch=config.model.arch)
        typer.echo(
            f"tokenize: {result['documents']:,} documents, {result['tokens']:,} tokens, vocab {result['vocab_size']:,}, "
            f"{result['tokens_per_second']:,} tokens/s on {result['workers']} worker{'s' if result['workers'] > 1 else ''} ({result['tokenizer']}) -> {out}"
        )


@app.command()
def train(
    params: ParamsFile = paths.PARAMS,
    data: ProcessedDir = paths.PROCESSED_DIR,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for best.pt (the weights and what inference needs).")] = paths.TRAIN_DIR,
    report: Annotated[Path, typer.Option(help="Where to write the training report (JSON).")] = paths.TRAIN_REPORT,
    live: Annotated[Path, typer.Option(help="DVCLive folder for the training curves.")] = paths.TRAIN_LIVE,
    resume_dir: Annotated[Path, typer.Option(help="Resume state, kept until the run completes.")] = paths.TRAIN_RESUME,
    runtime: RuntimeFile = paths.TRAIN_RUNTIME,
    timings: Annotated[Path, typer.Option(help="Folder for the samples/s curve (a timing: not among the curves that compare).", file_okay=False)] = paths.TRAIN_TIMINGS,
    stop_after_steps: Annotated[int | None, typer.Option(hidden=True, help="Tests: fail as a kill would after this many steps.")] = None,
) -> None:
    """Train `model.arch` with the `train` params; resumes an interrupted run with the same params.
    With `train.devices` > 1, runs itself in that many processes under torchrun (DDP)."""
    with reported_errors(interrupted="the next run resumes from the last validation, if there was one"):
        from pipeline.params import load_params
        from pipeline.stages.train import run_train, run_train_processes
        from pipeline.training.distributed import World, should_launch

        config = load_params(params)
        if should_launch(config.train.devices):
            run_train_processes(config, params, data, out, report, live, resume_dir, runtime, timings, stop_after_steps)
            return
        result = run_train(config, data, out, report, live, resume_dir, runtime_path=runtime, stop_after_steps=stop_after_steps, timing_dir=timings)
        if not World.from_env().main:
            return
        typer.echo(
            f"train: best validation {result['monitor']} {result['best_validation']:.4f} at epoch {result['best_epoch']:g}; "
            f"{result['epochs']:g} epochs in {result['wall_seconds']:.0f} s, {result['samples_per_second']:,.0f} samples/s "
            f"on {result['device']} ({result['precision']}) -> {out}"
        )


@app.command()
def evaluate(
    params: ParamsFile = paths.PARAMS,
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to score.", dir_okay=False)] = paths.TRAIN_DIR / "best.pt",
    data: ProcessedDir = paths.PROCESSED_DIR,
    raw: Annotated[Path, typer.Option(help="Folder written by the download stage (for the texts of errors).")] = paths.RAW_DIR,
    report: Annotated[Path, typer.Option(help="Where to write everything measured on test (JSON).")] = paths.EVALUATE_REPORT,
    metrics: MetricsFile = paths.EVALUATE_METRICS,
    scores: Annotated[Path, typer.Option(help="Folder for the test logits (export's gate reuses them).", file_okay=False)] = paths.EVALUATE_SCORES,
    confusion: Annotated[Path, typer.Option(help="Where to write actual,predicted rows (CSV).")] = paths.CONFUSION,
    errors: Annotated[Path, typer.Option(help="Where to write the most confident mistakes (CSV).")] = paths.ERRORS,
    calibration: Annotated[Path, typer.Option(help="Where to write the temperature(s) and thresholds fitted on validation (JSON).", dir_okay=False)] = paths.CALIBRATION,
) -> None:
    """Calibrate the best checkpoint on validation and score it on the test split: metrics, confusion rows and the worst errors."""
    with reported_errors():
        from pipeline.params import load_params
        from pipeline.stages.evaluate import run_evaluate

        result = run_evaluate(load_params(params), checkpoint, data, raw, report, confusion, errors, calibration, metrics, scores)
        micro = f", micro-F1 {result['micro_f1']:.4f} (tuned thresholds)" if "micro_f1" in result else ""
        typer.echo(
            f"evaluate: test {'subset ' if micro else ''}accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}{micro}, "
            f"ECE {result['ece_uncalibrated']:.4f} -> {result['ece']:.4f} calibrated, on {result['documents']:,} documents -> {report}"
        )


@app.command()
def export(
    params: ParamsFile = paths.PARAMS,
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to export.", dir_okay=False)] = paths.TRAIN_DIR / "best.pt",
    data: ProcessedDir = paths.PROCESSED_DIR,
    raw: Annotated[Path, typer.Option(help="Folder written by the download stage (test texts for the tokenizer check).")] = paths.RAW_DIR,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the inference bundle.")] = paths.EXPORT_DIR,
    report: Annotated[Path, typer.Option(help="Where to write the export report (JSON).")] = paths.EXPORT_REPORT,
    runtime: RuntimeFile = paths.EXPORT_RUNTIME,
    metrics: MetricsFile = paths.EXPORT_METRICS,
    scores: Annotated[Path, typer.Option(help="The evaluate stage's test logits, reused when computed on a CPU.", file_okay=False)] = paths.EVALUATE_SCORES,
    calibration: Annotated[Path, typer.Option(help="The evaluate stage's calibration (JSON), for the bundle.", dir_okay=False)] = paths.CALIBRATION,
) -> None:
    """Export the best checkpoint to ONNX (fp32 and int8), check parity, measure accuracy and latency."""
    with reported_errors():
        from pipeline.params import load_params
        from pipeline.stages.export import run_export

        r = run_export(load_params(params), checkpoint, data, raw, out, report, runtime, calibration, metrics, scores)
        quality = "micro_f1" if "torch_fp32_micro_f1" in r else "accuracy"
        typer.echo(
            f"export: {quality.replace('_f1', '-F1')} torch {r[f'torch_fp32_{quality}']:.4f}, int8 {r[f'onnx_int8_{quality}']:.4f}; "
            f"onnx fp32 max |logit diff| {r['onnx_fp32_max_abs_diff']:.1e} on {r['onnx_fp32_checked_documents']:,} documents; "
            f"int8 {r['onnx_int8_bytes'] / 1e6:.1f} MB ({r['onnx_int8_size_ratio']:.0%} of fp32), "
            f"batch-1 p50 {r['latency_ms_batch1_onnx_int8']:.3f} ms ({r['int8_speedup_batch1']:.1f}x torch) -> {out}"
        )


@app.command()
def baseline(
    params: ParamsFile = paths.PARAMS,
    raw: Annotated[Path, typer.Option(help="Folder with the download stage's splits.")] = paths.RAW_DIR,
    report: Annotated[Path, typer.Option(help="Where to write the baseline's test metrics (JSON).")] = paths.BASELINE_REPORT,
    runtime: RuntimeFile = paths.BASELINE_RUNTIME,
    metrics: MetricsFile = paths.BASELINE_METRICS,
) -> None:
    """Fit TF-IDF + logistic regression on the same splits as the model: the linear model to beat."""
    with reported_errors():
        from pipeline.params import load_params
        from pipeline.stages.baseline import run_baseline

        loaded = load_params(params)
        result = run_baseline(loaded.baseline, loaded.tokenize.language, raw, report, runtime, metrics)
        if not result:
            typer.echo(f"baseline: switched off (baseline.enabled) -> {report}")
            return
        scores = (f"test macro-F1 {result['macro_f1']:.4f}, micro-F1 {result['micro_f1']:.4f} (tuned thresholds)" if "micro_f1" in result
                  else f"test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")
        typer.echo(
            f"baseline: {scores} "
            f"({result['analyzer']}, C {result['C']:g}, {result['features']:,} features, {result['seconds']:.0f} s) -> {report}"
        )


@app.command()
def report(
    params: ParamsFile = paths.PARAMS,
    reports: Annotated[Path, typer.Option(help="Folder with the stages' reports.", file_okay=False)] = paths.REPORTS_DIR,
    live: Annotated[Path, typer.Option(help="DVCLive folder of the train stage.", file_okay=False)] = paths.TRAIN_LIVE,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML page.", dir_okay=False)] = paths.REPORT_HTML,
) -> None:
    """Render every stage's reports into one self-contained HTML page."""
    with reported_errors():
        from pipeline.params import load_params
        from pipeline.stages.report import run_report

        result = run_report(load_params(params), params, reports, live, out)
        typer.echo(f"report: {len(result['figures'])} figures, {result['bytes'] / 1e3:,.0f} kB -> {out}")


@app.command()
def predict(
    items: Annotated[
        list[str] | None,
        typer.Argument(
            help="Texts to classify. (Without --bundle, a first argument that is a folder is taken as the bundle.)",
            show_default=False,
        ),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", "-b", help="Bundle folder written by the export stage (default: models/export).", file_okay=False, show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Texts: one per line, or a CSV/TSV column, or a JSON Lines field (see --column).", dir_okay=False),
    ] = None,
    column: Annotated[str, typer.Option(help="Column (CSV/TSV) or field (JSON Lines) that holds the text.")] = "text",
    encoding: Annotated[str, typer.Option(help="Encoding of --file or stdin (e.g. latin-1, cp1252); a UTF-8 byte-order mark is dropped.")] = "utf-8",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip bad lines (invalid JSON, a missing field, undecodable bytes) and count them, instead of stopping at the first.")
    ] = False,
    fp32: Annotated[bool, typer.Option("--fp32", help="Use the fp32 model instead of the int8 one.")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the JSON Lines to this file (atomically) instead of stdout.", dir_okay=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per ONNX Runtime call.")] = 64,
    echo_chars: Annotated[int, typer.Option(min=1, help="Each line's text is cut to this many characters (with …); the model reads the whole text.")] = 1000,
    full_text: Annotated[bool, typer.Option("--full-text", help="Echo every text whole, however long.")] = False,
    all_probabilities: Annotated[bool, typer.Option("--all-probabilities", help="Multi-label bundles: every label's probability beside the labels chosen.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Tokenizing processes for large inputs (spaCy bundles; a pretrained model's tokenizer uses every core itself); default: every core.", show_default=False),
    ] = None,
) -> None:
    """Classify texts with an exported bundle (ONNX Runtime and spaCy, or a pretrained model's tokenizer; no torch): one JSON line per text
    with text, label, score and probabilities, in input order, written as each chunk is classified.
    Texts from arguments, --file, or stdin (one per line)."""
    import pipeline.text.torchless  # noqa: F401  (before spaCy: keeps torch out of this process)

    with reported_errors(interrupted="stopped; the lines written so far are whole (an --out file is not written)"):
        from pipeline.inference.predict import run_predict

        result = run_predict(
            list(items or []), bundle, paths.EXPORT_DIR, file, column, encoding, skip_bad, int8=not fp32, out=out,
            batch_size=batch_size, workers=workers, echo_chars=None if full_text else echo_chars, all_probabilities=all_probabilities,
        )
        if result.replaced:
            typer.echo(f"predict: replaced {result.replaced:,} invalid characters (lone surrogates) with U+FFFD", err=True)
        if result.skipped:
            typer.echo(f"predict: skipped {len(result.skipped):,} bad lines (--skip-bad); the first: {result.skipped[0]}", err=True)
        if out is not None:
            rate = result.count / max(result.seconds, 1e-9)
            typer.echo(f"predict: {result.count:,} texts in {result.seconds:.1f} s ({rate:,.0f} texts/s) -> {out}", err=True)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder written by the export stage.", file_okay=False)] = paths.EXPORT_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on. 0.0.0.0 is every interface: there is no authentication or TLS, so put a reverse proxy in front.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one (printed).")] = 8000,
    fp32: Annotated[bool, typer.Option("--fp32", help="Use the fp32 model instead of the int8 one.")] = False,
    max_batch: Annotated[int, typer.Option(min=1, help="Texts per ONNX Runtime call, gathered across concurrent requests.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits for others to share its batch.")] = 2.0,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body (413 above).")] = 1_000_000,
    max_texts: Annotated[int, typer.Option(min=1, help="Most texts in one request (413 above).")] = 256,
    max_text_chars: Annotated[int, typer.Option(min=1, help="Longest text, in characters (413 above).")] = 100_000,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 1,
    workers: Annotated[int, typer.Option(min=0, help="Tokenizing processes beside the server's; 0: tokenize in the server process.")] = 1,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting to be classified; more get 503 with Retry-After.")] = 512,
    request_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request may wait for its answer (503 after).")] = 30.0,
    header_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a client has to send its request headers.")] = 10.0,
    shutdown_seconds: Annotated[float, typer.Option(min=0, help="On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.")] = 30.0,
) -> None:
    """Serve the bundle over HTTP: POST /predict {"text": ...} or {"texts": [...]}; GET /health, /metadata."""
    import pipeline.text.torchless  # noqa: F401  (before spaCy: keeps torch out of this process)

    with reported_errors(interrupted="stopped"):
        from pipeline.inference.serve import Limits, run_serve

        limits = Limits(max_body_bytes, max_texts, max_text_chars, max_batch, max_wait_ms, max_queue, request_timeout, header_timeout)
        announce = lambda url: typer.echo(f"serve: {bundle} on {url} (POST /predict, GET /health, GET /metadata)", err=True)  # noqa: E731
        run_serve(bundle, host, port, int8=not fp32, limits=limits, threads=threads, workers=workers,
                  shutdown_seconds=shutdown_seconds, announce=announce)


def main() -> None:
    app()
