"""`export` stage: the best checkpoint -> an ONNX inference bundle (fp32 and int8) in
models/export/, checked and measured, with the numbers in reports/export.json.

Checks (any failure stops the stage and leaves the previous bundle in place):
  - onnx.checker on the fp32 graph;
  - the gate (`check_gate`): ONNX Runtime fp32 logits against PyTorch on `export.parity_documents`
    test documents (a seeded sample) plus edge inputs (an empty text, a one-token text, the
    longest test text) within `export.max_abs_diff`, with every argmax equal; int8 test accuracy
    on the whole split at most `export.max_int8_drop` below PyTorch's. One full pass of the
    split per engine that needs it: int8's, and PyTorch's unless evaluate's logits (computed on
    a CPU) stand in for it;
  - the bundle's own tokenizer (spaCy + vocabulary, or a pretrained model's tokenizer.json,
    as `predict` runs it) reproduces the tokenized test ids from the raw test texts.
Measured: accuracy of PyTorch fp32 and ONNX int8 on the whole test split; batch-1 latency
(p50, p95) and batch-64 throughput of the three engines, on the model alone
(token ids in, logits out). Each engine is timed in blocks of consecutive calls, the blocks
of the three engines repeated in a seeded random order, with the same thread count and no
spinning threads (ONNX Runtime's allow_spinning 0, OpenMP's PASSIVE wait policy), so that
one engine's idle threads never compete with the next engine's call; each measurement takes at
most about a sixth of a scoring pass of the split (or 3 s), so a slow model is timed on fewer calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

# before torch loads OpenMP (it reads this once): idle OpenMP threads sleep instead of spinning,
# so they do not slow ONNX Runtime's calls when the engines are timed one after another
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from pipeline import __version__
from pipeline.data.tokenized import TokenizedSplit
from pipeline.inference.bundle import (
    BUNDLE_FORMAT,
    CALIBRATION,
    FP32_MODEL,
    INT8_MODEL,
    LABELS,
    MANIFEST,
    TEXT_SETTINGS,
    TOKENIZER,
    VOCAB,
    Bundle,
    file_entry,
    onnx_session,
    pad_batch,
    run_session,
    session_logits,
)
from pipeline.inference.calibration import Calibration
from pipeline.inference.classifier import Classifier
from pipeline.errors import PipelineError
from pipeline.files import read_json, stage_outputs, write_json
from pipeline.metrics import headline
from pipeline.params import ExportParams, Params
from pipeline.system import available_cores
from pipeline.training.checkpoint import load_scoring_inputs, model_from_checkpoint
from pipeline.training.loader import predict_logits, reusable_test_logits

# ops whose weights ONNX Runtime's dynamic quantization turns to int8 (Gather: embedding tables)
QUANTIZED_OPS = ["Gather", "MatMul", "Gemm", "Conv", "LSTM", "Attention"]
THROUGHPUT_BATCH = 64
LATENCY_BLOCK = 50  # consecutive calls of one engine per timed block
THROUGHPUT_BLOCK = 1  # batch-64 calls of one engine per timed block (each call is long enough to time alone)
SPEED_BUDGET_SHARE = 0.15  # latency, then throughput: each timed for at most this share of a full scoring pass...
MIN_SPEED_SECONDS = 3.0  # ...or this long, whichever is more (a bag model is timed on every call asked for)
TOKENIZER_CHECK_DOCUMENTS = 2000


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter and quantizer log warnings about their internals (missing torchvision ops,
    pre-processing advice) that say nothing about our model; errors still surface."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(model: torch.nn.Module, vocab_size: int, path: Path, opset: int) -> None:
    """Trace with torch.export (dynamo) with dynamic batch and time axes, save, check the graph."""
    import onnx
    from torch.export import Dim

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, max(vocab_size, 3), (2, 16), generator=generator)
    lengths = torch.tensor([16, 5])
    # time may be 0 (an empty text): min=0 keeps the traced graph valid for it
    dynamic = {"ids": {0: Dim("batch"), 1: Dim("time", min=0)}, "lengths": {0: Dim("batch")}}
    with quiet(), torch.no_grad():
        program = torch.onnx.export(
            model, (ids, lengths), dynamo=True, input_names=["ids", "lengths"], output_names=["logits"],
            dynamic_shapes=dynamic, opset_version=opset, verbose=False,
        )
        program.save(str(path))
    graph = onnx.load(str(path))
    without_source_locations(graph.graph)
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def without_source_locations(graph) -> None:
    """Drop the exporter's per-node debugging records (Python stack traces with absolute paths
    of this checkout, FX node names, module scopes) from an ONNX graph and its subgraphs: they
    made the same model differ byte for byte between two clones, and ship the build path in
    the bundle. Inference reads none of them."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                without_source_locations(subgraph)


def quantize_int8(fp32_path: Path, int8_path: Path, min_weights: int) -> list[str]:
    """Dynamic int8 quantization of every weight with at least `min_weights` elements
    (embedding tables included); returns the op types that were quantized."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    sizes = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
    small = [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and max((sizes.get(i, 0) for i in n.input), default=0) < min_weights]
    with quiet():
        quantize_dynamic(
            str(fp32_path), str(int8_path), weight_type=QuantType.QUInt8,
            op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=small,
        )
    fp32_ops = {n.op_type for n in graph.node}
    int8_ops = {n.op_type for n in onnx.load(str(int8_path), load_external_data=False).graph.node}
    return sorted(int8_ops - fp32_ops)


def edge_inputs(test: TokenizedSplit) -> tuple[np.ndarray, np.ndarray]:
    """An empty text, a one-token text and the longest test text, in one batch."""
    longest = int(np.argmax(test.lengths))
    ids, _, _ = test.batch(np.array([longest]))
    return pad_batch([np.zeros(0, np.int64), ids[0, :1], ids[0]])


def check_tokenizer(classifier: Classifier, texts, test: TokenizedSplit, rng: np.random.Generator) -> int:
    """Tokenize raw test texts the way `predict` does; every one must give the stored ids."""
    picked = np.sort(rng.choice(len(test), min(len(test), TOKENIZER_CHECK_DOCUMENTS), replace=False))
    encoded = classifier.encode([texts[i] for i in picked])
    for index, ids in zip(picked, encoded):
        expected = test.ids[test.offsets[index] : test.offsets[index + 1]]
        if not np.array_equal(ids, expected):
            raise PipelineError(
                f"the bundle's tokenizer gives other token ids than data/processed for test text {index}; "
                "the tokenized data is stale (was the tokenizer library upgraded?): rerun the tokenize stage"
            )
    return len(picked)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


def check_gate(
    model: torch.nn.Module,
    test: TokenizedSplit,
    fp32_session,
    int8_session,
    config: ExportParams,
    calibration: Calibration | None = None,
    torch_logits: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """The export gate, with one full pass of the test split per engine it needs: PyTorch's
    (`torch_logits` when evaluate's can be reused) and int8's. Raises a PipelineError, and so
    stops the stage before the bundle replaces the previous one, if fp32 logits differ from
    PyTorch's by more than `config.max_abs_diff` or any decision differs (the top class; for
    label sets, each label at its threshold), on `config.parity_documents` test documents (a
    seeded sample) and the edge inputs, or if int8's test accuracy (label sets: micro-F1) on the
    whole split is more than `config.max_int8_drop` below PyTorch's. Returns the logits and
    differences for the report."""
    calibration = calibration or Calibration.identity([], test.multilabel)
    if torch_logits is None:
        torch_logits = predict_logits(model, test, config.batch_size, torch.device("cpu"))
    started = time.perf_counter()
    int8_logits = session_logits(int8_session, test, config.batch_size)
    pass_seconds = time.perf_counter() - started
    sample = parity_sample(len(test), config.parity_documents, config.seed)
    fp32_logits = session_logits(fp32_session, test, config.batch_size, subset=sample)
    torch_sample = torch_logits[sample]
    edge_ids, edge_lengths = edge_inputs(test)
    with torch.inference_mode():
        edge_torch = model(torch.from_numpy(edge_ids), torch.from_numpy(edge_lengths)).numpy()
    edge_fp32 = run_session(fp32_session, edge_ids, edge_lengths)
    fp32_diff = max(max_abs_diff(fp32_logits, torch_sample), max_abs_diff(edge_fp32, edge_torch))
    int8_diff = max(max_abs_diff(int8_logits, torch_logits), max_abs_diff(run_session(int8_session, edge_ids, edge_lengths), edge_torch))
    if not fp32_diff <= config.max_abs_diff:  # also catches NaN
        raise PipelineError(
            f"export gate: ONNX fp32 logits differ from PyTorch's by up to {fp32_diff:.3g} (export.max_abs_diff {config.max_abs_diff:g}); "
            "the exported graph is wrong: the bundle was not replaced"
        )
    decide = calibration.decisions
    flipped = int(differing(decide(fp32_logits), decide(torch_sample))) + int(differing(decide(edge_fp32), decide(edge_torch)))
    if flipped:
        raise PipelineError(
            f"export gate: ONNX fp32 {'decides a label otherwise' if test.multilabel else 'predicts another class'} than PyTorch for {flipped} inputs; "
            "the exported graph is wrong: the bundle was not replaced"
        )
    quality = "micro-F1" if test.multilabel else "accuracy"
    torch_score, int8_score = (gate_score(logits, test.labels, calibration) for logits in (torch_logits, int8_logits))
    drop = torch_score - int8_score
    if drop > config.max_int8_drop + 1e-12:
        raise PipelineError(
            f"export gate: int8 test {quality} {int8_score:.4f} is {drop * 100:.2f} points below PyTorch's {torch_score:.4f} "
            f"(export.max_int8_drop {config.max_int8_drop:g}); raise export.int8_min_weights to keep more weights fp32, "
            "or raise export.max_int8_drop: the bundle was not replaced"
        )
    return {"torch": torch_logits, "int8": int8_logits, "fp32_diff": fp32_diff, "int8_diff": int8_diff,
            "parity_documents": len(sample), "pass_seconds": pass_seconds}


def parity_sample(documents: int, size: int, seed: int) -> np.ndarray:
    """The test documents the fp32 parity check scores: all of them, or a seeded sample."""
    if documents <= size:
        return np.arange(documents)
    return np.sort(np.random.default_rng([seed, documents]).choice(documents, size, replace=False))


def differing(a: np.ndarray, b: np.ndarray) -> int:
    """Inputs whose decisions differ: the top class, or any label's."""
    return int((a != b).any(1).sum()) if a.ndim == 2 else int((a != b).sum())


def gate_score(logits: np.ndarray, actual: np.ndarray, calibration: Calibration) -> float:
    """Test accuracy; for label sets micro-F1 at the bundle's thresholds."""
    if not len(actual):
        return 0.0
    decided = calibration.decisions(logits)
    if actual.ndim == 1:
        return float((decided == actual).mean())
    truth = actual.astype(bool)
    return float(2 * (decided & truth).sum() / max(decided.sum() + truth.sum(), 1))


def time_blocks(
    engines: dict[str, Callable], inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int, block: int, rng: np.random.Generator,
    budget_seconds: float = math.inf,
) -> dict[str, np.ndarray]:
    """Seconds per call of each engine on each input. Each engine first runs `warmup` calls
    untimed, then the inputs in blocks of `block` consecutive calls of one engine; each round
    runs one block per engine in a random order, so no engine always follows the same one. No
    round starts once `budget_seconds` have passed (a slow model is timed on fewer calls)."""
    started = time.perf_counter()
    for call in engines.values():
        for ids, lengths in inputs[:warmup]:
            call(ids, lengths)
    timed = inputs[warmup:]
    times: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for start in range(0, len(timed), block):
        if start and time.perf_counter() - started > budget_seconds:
            break
        for index in rng.permutation(len(names)):
            name, call = names[index], engines[names[index]]
            for ids, lengths in timed[start : start + block]:
                began = time.perf_counter()
                call(ids, lengths)
                times[name].append(time.perf_counter() - began)
    return {name: np.array(values) for name, values in times.items()}


def measure_speed(engines: dict[str, Callable], test: TokenizedSplit, config: ExportParams, pass_seconds: float = math.inf) -> dict[str, float]:
    """Batch-1 latency and batch-64 throughput of each engine. Each of the two measurements
    stops starting new rounds after SPEED_BUDGET_SHARE of a full scoring pass (`pass_seconds`,
    int8's) or MIN_SPEED_SECONDS, whichever is longer: a fast model gets every call the params
    ask for, a pretrained one on a CPU is not timed for longer than it takes to score the split."""
    budget = max(MIN_SPEED_SECONDS, SPEED_BUDGET_SHARE * pass_seconds)
    rng = np.random.default_rng(config.seed)
    count = config.latency_warmup + config.latency_runs
    singles = [test.batch(np.array([i]))[:2] for i in rng.choice(len(test), count, replace=count > len(test))]
    batch_warmup = 1
    batches = [
        test.batch(rng.choice(len(test), THROUGHPUT_BATCH, replace=THROUGHPUT_BATCH > len(test)))[:2]
        for _ in range(batch_warmup + config.throughput_batches)
    ]
    single_times = time_blocks(engines, singles, config.latency_warmup, LATENCY_BLOCK, rng, budget)
    batch_times = time_blocks(engines, batches, batch_warmup, THROUGHPUT_BLOCK, rng, budget)
    result = {}
    for name, times in single_times.items():
        result[f"latency_ms_batch1_{name}"] = round(float(np.percentile(times, 50)) * 1e3, 4)
    for name, times in single_times.items():
        result[f"latency_ms_batch1_p95_{name}"] = round(float(np.percentile(times, 95)) * 1e3, 4)
    for name, times in batch_times.items():
        result[f"throughput_batch64_{name}"] = round(THROUGHPUT_BATCH * len(times) / float(times.sum()), 1)
    result["latency_block_calls"] = LATENCY_BLOCK
    calls, batches_timed = len(next(iter(single_times.values()))), len(next(iter(batch_times.values())))  # the same for every engine
    result["latency_blocks_per_engine"] = calls // LATENCY_BLOCK
    result["latency_calls_per_engine"] = calls
    result["throughput_batches_per_engine"] = batches_timed
    return result


def library_versions(pretrained: bool) -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    if pretrained:
        import tokenizers
        import transformers

        return {**versions, "tokenizers": tokenizers.__version__, "transformers": transformers.__version__}
    import spacy

    return {**versions, "spacy": spacy.__version__}


def run_export(
    params: Params,
    checkpoint_path: Path,
    processed: Path,
    raw_dir: Path,
    out_dir: Path,
    report_path: Path,
    runtime_path: Path | None = None,
    calibration_path: Path | None = None,
    metrics_path: Path | None = None,
    scores_dir: Path | None = None,
) -> dict[str, float]:
    """Export, quantize, check and measure; write the bundle, the report (accuracy, parity,
    sizes; given a path, its headline figures) and, given a path, the runtime numbers (latency, throughput: they swing
    between identical runs, so they are kept out of `dvc metrics diff`). Returns both together.
    The bundle's calibration is evaluate's (`calibration_path`), as export.calibrate asks; without
    a path, the model's own probabilities (labels at 0.5). evaluate's test logits
    (`scores_dir`), when computed on a CPU, stand in for PyTorch's pass over the test split."""
    config = params.export
    started = time.perf_counter()
    threads = config.threads or available_cores()
    torch.set_num_threads(threads)
    checkpoint, labels, test, texts = load_scoring_inputs(checkpoint_path, processed, raw_dir)
    calibration = bundle_calibration(calibration_path, labels, test.multilabel, config.calibrate)
    model = model_from_checkpoint(checkpoint)
    with stage_outputs() as outputs:
        bundle_dir = outputs.folder(out_dir)
        manifest = write_bundle(model, checkpoint, processed, bundle_dir, config, calibration)
        bundle = Bundle.load(bundle_dir, verify=())  # the checksums were just taken from these very files
        fp32 = onnx_session(bundle_dir / FP32_MODEL, threads)
        classifier = Classifier(bundle, int8=True, threads=threads)
        manifest["tokenizer"] = classifier.tokenizer_record()
        write_json(bundle_dir / MANIFEST, manifest)
        checked = check_tokenizer(classifier, texts, test, np.random.default_rng(config.seed))
        reused = reusable_test_logits(scores_dir, len(test), len(labels))
        gate = check_gate(model, test, fp32, classifier.session, config, calibration, torch_logits=reused)
        speed = measure_speed(engines(model, fp32, classifier.session), test, config, pass_seconds=gate["pass_seconds"])
        report = {**export_report(gate, test.labels, calibration, manifest), "tokenizer_checked_documents": checked}
        runtime = {
            **speed,
            "int8_speedup_batch1": round(speed["latency_ms_batch1_torch_fp32"] / speed["latency_ms_batch1_onnx_int8"], 3),
            "torch_test_logits": "evaluate" if reused is not None else "export",  # who scored the split with PyTorch
            "int8_pass_seconds": round(gate["pass_seconds"], 3),
            "opset": config.opset,
            "threads": threads,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy_passive": int(os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"),
            "seconds": round(time.perf_counter() - started, 3),
        }
        outputs.json(report_path, report)
        if metrics_path is not None:
            outputs.json(metrics_path, headline("export", report, test.multilabel))
        if runtime_path is not None:
            outputs.json(runtime_path, runtime)
    return {**report, **runtime}


def bundle_calibration(path: Path | None, labels: list[str], multilabel: bool, calibrate: bool) -> Calibration:
    """What the bundle applies to the model's logits: evaluate's fit (the calibrated variant, or
    the raw one with its own thresholds), checked to be for these classes."""
    if path is None:
        return Calibration.identity(labels, multilabel)
    fitted = read_json(path, "run the evaluate stage first (dvc repro evaluate)")
    try:
        calibration = Calibration.from_json(fitted, calibrated=calibrate)
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: not a calibration of this pipeline ({exc}); rerun the evaluate stage") from None
    if calibration.labels != labels or calibration.multilabel != multilabel:
        raise PipelineError(f"{path} was fitted for other classes than the tokenized data's; rerun the evaluate stage (dvc repro)")
    return calibration


def write_bundle(model: torch.nn.Module, checkpoint: dict, processed: Path, bundle_dir: Path, config: ExportParams, calibration: Calibration) -> dict:
    """The ONNX graphs (fp32, int8), the tokenizer's files from data/processed, the calibration
    and the manifest, into `bundle_dir`; returns the manifest."""
    pretrained = checkpoint["text"].get("tokenizer") == "pretrained"
    text_files = (VOCAB, LABELS, TEXT_SETTINGS, TOKENIZER) if pretrained else (VOCAB, LABELS, TEXT_SETTINGS)
    export_onnx(model, checkpoint["vocab_size"], bundle_dir / FP32_MODEL, config.opset)
    int8_ops = quantize_int8(bundle_dir / FP32_MODEL, bundle_dir / INT8_MODEL, config.int8_min_weights)
    for name in text_files:
        source = processed / name
        if not source.is_file():
            raise PipelineError(f"{source} not found; rerun the tokenize stage")
        shutil.copyfile(source, bundle_dir / name)
    write_json(bundle_dir / CALIBRATION, {**calibration.to_json(), "calibrated": config.calibrate})
    text_files = (*text_files, CALIBRATION)
    manifest = {
        "format": BUNDLE_FORMAT,
        "pipeline_version": __version__,
        "arch": checkpoint["model_config"]["arch"],
        "task": "multilabel" if calibration.multilabel else "multiclass",
        "opset": config.opset,
        "inputs": {"ids": "int64 [batch, time], token ids right-padded with 0", "lengths": "int64 [batch]"},
        "outputs": {"logits": "float32 [batch, classes], in labels.json order; calibration.json turns them into probabilities "
                    "(softmax, or a sigmoid per label, of logits / temperature) and, per label, decisions"},
        "int8_quantized_ops": int8_ops,
        "versions": library_versions(pretrained),
        "params": {
            "model": checkpoint["model_config"],
            "text": json.loads((processed / TEXT_SETTINGS).read_text(encoding="utf-8")),
            "export": config.model_dump(),
        },
        "files": {name: file_entry(bundle_dir / name) for name in (FP32_MODEL, INT8_MODEL, *text_files)},
    }
    write_json(bundle_dir / MANIFEST, manifest)
    return manifest


def engines(model: torch.nn.Module, fp32_session, int8_session) -> dict[str, Callable]:
    """The three engines as calls on (ids, lengths), for timing."""

    def torch_call(ids: np.ndarray, lengths: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(ids), torch.from_numpy(lengths))

    return {"torch_fp32": torch_call, "onnx_fp32": lambda *x: run_session(fp32_session, *x), "onnx_int8": lambda *x: run_session(int8_session, *x)}


def export_report(gate: dict, actual: np.ndarray, calibration: Calibration, manifest: dict) -> dict:
    """What export.json says: accuracy (label sets: micro-F1 at the bundle's thresholds) of
    PyTorch and int8 on the whole test split, int8's drop and agreement (every decision of a text
    the same), fp32's parity on the documents the gate checked, sizes."""
    quality = "micro_f1" if actual.ndim == 2 else "accuracy"
    score = {name: gate_score(gate[key], actual, calibration) for name, key in (("torch_fp32", "torch"), ("onnx_int8", "int8"))}
    torch_decisions, int8_decisions = calibration.decisions(gate["torch"]), calibration.decisions(gate["int8"])
    fp32_bytes, int8_bytes = manifest["files"][FP32_MODEL]["bytes"], manifest["files"][INT8_MODEL]["bytes"]
    return {
        f"torch_fp32_{quality}": score["torch_fp32"],
        f"onnx_int8_{quality}": score["onnx_int8"],
        f"onnx_int8_{quality}_drop": round(score["torch_fp32"] - score["onnx_int8"], 6),
        "onnx_int8_agreement": round(1 - differing(int8_decisions, torch_decisions) / max(len(actual), 1), 6),
        "onnx_fp32_max_abs_diff": float(gate["fp32_diff"]),
        "onnx_fp32_checked_documents": gate["parity_documents"],  # and the edge inputs: every decision the same as PyTorch's
        "onnx_int8_max_abs_diff": float(gate["int8_diff"]),
        "onnx_fp32_bytes": fp32_bytes,
        "onnx_int8_bytes": int8_bytes,
        "onnx_int8_size_ratio": round(int8_bytes / fp32_bytes, 4),
        "onnx_int8_mb": round(int8_bytes / 1e6, 2),  # the size a user compares (the int8 model is the bundle's default)
        "documents": len(actual),
    }
