"""The inference bundle written by `export`: its files, their checks, and running its ONNX graphs.

models/export/
  model.onnx        fp32 graph: inputs ids int64 (batch, time) right-padded with 0 and
                    lengths int64 (batch,); output logits float32 (batch, classes)
  model.int8.onnx   the same graph with int8 weights (ONNX Runtime dynamic quantization)
  vocab.json        [token, train count] per id, as the tokenize stage wrote it
  labels.json       class names, index = class id
  text.json         tokenizer settings (tokenizer, language, lowercase, strip_html, max_tokens,
                    truncation)
  tokenizer.json    (pretrained models only) the model's own tokenizer, for `tokenizers`
  manifest.json     format, versions, params, the size and SHA-256 of every file above, and
                    the tokenizer record: the tokenizer library's version (spaCy, or tokenizers)
                    and the ids of a probe text, so that a bundle loaded under another version
                    warns, or refuses if the ids differ

Only NumPy and ONNX Runtime are imported here, so that `predict` starts fast and deploys
without torch; classifier.py adds the bundle's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.data.tokenized import TokenizedSplit, length_grouped_batches
from pipeline.errors import PipelineError, first_line
from pipeline.files import read_json, sha256_of
from pipeline.inference.calibration import Calibration
from pipeline.text.settings import PAD_ID, TextSettings
from pipeline.text.subwords import TOKENIZER_FILE

BUNDLE_FORMAT = 1
FP32_MODEL, INT8_MODEL = "model.onnx", "model.int8.onnx"
VOCAB, LABELS, TEXT_SETTINGS, MANIFEST = "vocab.json", "labels.json", "text.json", "manifest.json"
TOKENIZER = TOKENIZER_FILE  # beside text.json when text.json's tokenizer is "pretrained"
CALIBRATION = "calibration.json"  # temperature(s) and thresholds (inference/calibration.py); bundles before it have none
BUNDLE_FILES = (FP32_MODEL, INT8_MODEL, VOCAB, LABELS, TEXT_SETTINGS)
TOKENIZERS = ("spacy", "pretrained")  # text.json's tokenizer kinds
def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def pad_batch(ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id arrays with <pad> into the model's two inputs."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    padded = np.full((len(ids), int(lengths.max(initial=0))), PAD_ID, dtype=np.int64)
    for row, doc in enumerate(ids):
        padded[row, : len(doc)] = doc
    return padded, lengths


def _unloadable() -> tuple[type[BaseException], ...]:
    """What ONNX Runtime raises for a missing, damaged or foreign model file (its own types)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (OSError, state.InvalidProtobuf, state.InvalidArgument, state.InvalidGraph, state.NoSuchFile, state.Fail, state.NotImplemented)


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimization; `threads` intra-op threads,
    which sleep between calls instead of spinning (spinning threads would take CPU from the
    tokenizer, the server, or another engine being timed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are about its own graph rewrites
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _unloadable() as exc:
        raise PipelineError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)}); rerun the export stage") from None


def run_session(session, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return session.run(None, {"ids": ids, "lengths": lengths})[0]


def session_logits(session, split: TokenizedSplit, batch_size: int, subset: np.ndarray | None = None) -> np.ndarray:
    """float32 logits for a tokenized split in its order, batched by length like `predict_logits`;
    with `subset` (document indices), of those documents only, in that order."""
    subset = np.arange(len(split)) if subset is None else subset
    out: np.ndarray | None = None
    for rows in length_grouped_batches(split.lengths[subset], batch_size):  # positions in subset
        ids, lengths, _ = split.batch(subset[rows])
        logits = run_session(session, ids, lengths)
        if out is None:
            out = np.zeros((len(subset), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


@dataclass
class Bundle:
    folder: Path
    manifest: dict[str, Any]
    labels: list[str]
    settings: TextSettings
    tokens: list[str]  # index = token id
    counts: list[int]  # train count of each token
    calibration: Calibration  # what turns the model's logits into probabilities and decisions

    @classmethod
    def load(cls, folder: Path, verify: Sequence[str] = BUNDLE_FILES) -> Bundle:
        """Read a bundle, checking the files in `verify` against the manifest's checksums (and, when
        any are checked, the model's tokenizer.json of a pretrained bundle)."""
        if not folder.is_dir():
            raise PipelineError(f"{folder}: no model bundle there; run the export stage (dvc repro) or pass a bundle folder")
        manifest = cls._read_json(folder / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT or not isinstance(manifest.get("files"), dict):
            raise PipelineError(f"{folder / MANIFEST}: not a manifest of this pipeline (format {BUNDLE_FORMAT}); rerun the export stage")
        for name in verify:
            cls._verify(folder, manifest, name)
        try:
            labels = [str(x) for x in cls._read_json(folder / LABELS)]
            settings = TextSettings(**cls._read_json(folder / TEXT_SETTINGS))
            entries = cls._read_json(folder / VOCAB)["tokens"]
            tokens, counts = [str(entry[0]) for entry in entries], [int(entry[1]) for entry in entries]
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise PipelineError(f"{folder}: labels, text settings or vocabulary malformed ({exc}); rerun the export stage") from None
        if settings.tokenizer not in TOKENIZERS:
            raise PipelineError(f"{folder}: text.json names the tokenizer {settings.tokenizer!r}, unknown to pipeline {__version__}; upgrade it")
        if settings.tokenizer == "pretrained" and verify:
            cls._verify(folder, manifest, TOKENIZER)
        return cls(folder, manifest, labels, settings, tokens, counts, cls._calibration(folder, manifest, labels, bool(verify)))

    @classmethod
    def _calibration(cls, folder: Path, manifest: dict[str, Any], labels: list[str], verify: bool) -> Calibration:
        """The bundle's calibration.json (checked with the files it travels with), or, for a bundle
        exported before calibration existed, the model's own softmax probabilities."""
        if CALIBRATION not in manifest["files"]:
            return Calibration.identity(labels, manifest.get("task") == "multilabel")
        if verify:
            cls._verify(folder, manifest, CALIBRATION)
        try:
            calibration = Calibration.from_json(cls._read_json(folder / CALIBRATION))
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{folder / CALIBRATION}: malformed ({exc}); rerun the export stage") from None
        if calibration.labels != labels:
            raise PipelineError(f"{folder / CALIBRATION} is for other classes than {LABELS}; rerun the export stage")
        return calibration

    @staticmethod
    def _verify(folder: Path, manifest: dict[str, Any], name: str) -> None:
        path, expected = folder / name, manifest["files"].get(name)
        if not path.is_file():
            raise PipelineError(f"{path} is missing from the bundle; rerun the export stage")
        if not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes") or sha256_of(path) != expected.get("sha256"):
            raise PipelineError(f"{path} does not match the checksum in {MANIFEST} (changed or damaged); rerun the export stage")

    @staticmethod
    def _read_json(path: Path) -> Any:
        return read_json(path, "rerun the export stage")
