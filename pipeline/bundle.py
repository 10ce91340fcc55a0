"""The inference bundle written by `export`, and a classifier that runs it without torch.

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

Only NumPy, ONNX Runtime and the bundle's tokenizer (spaCy, or `tokenizers` for a pretrained
model) are imported here, so that `predict` starts fast and deploys without torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.batching import TokenizedSplit, length_grouped_batches
from pipeline.errors import PipelineError, warn
from pipeline.files import read_json
from pipeline.metrics import softmax
from pipeline.pretrained_text import TOKENIZER_FILE, SubwordTokenizer
from pipeline.text import PAD_ID, HashLookup, Hasher, TextSettings

BUNDLE_FORMAT = 1
FP32_MODEL, INT8_MODEL = "model.onnx", "model.int8.onnx"
VOCAB, LABELS, TEXT_SETTINGS, MANIFEST = "vocab.json", "labels.json", "text.json", "manifest.json"
TOKENIZER = TOKENIZER_FILE  # beside text.json when text.json's tokenizer is "pretrained"
BUNDLE_FILES = (FP32_MODEL, INT8_MODEL, VOCAB, LABELS, TEXT_SETTINGS)
TOKENIZERS = ("spacy", "pretrained")  # text.json's tokenizer kinds
PROBE_TEXT = (  # what tokenizer rules touch: contractions, URLs, e-mail, numbers, units, quotes, HTML, accents, emoji
    "Don't stop! It's a 10/10 film... e-mail me@example.com, see https://example.com/a?b=1 — “quoted” (ok) "
    "3.5km, $20, U.S.A. vs. U.K.; well-made <br />naïve café 😀 #tag @user :-) x2 C++ can't won't"
)
PROBE_VOCAB = 300  # the most frequent vocabulary entries (by train count), appended to the probe so that its ids mean something


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def pad_batch(ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id arrays with <pad> into the model's two inputs."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    padded = np.full((len(ids), int(lengths.max(initial=0))), PAD_ID, dtype=np.int64)
    for row, doc in enumerate(ids):
        padded[row, : len(doc)] = doc
    return padded, lengths


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
    except Exception as exc:  # ORT raises its own exception types for a damaged model
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{path}: ONNX Runtime cannot load it ({message}); rerun the export stage") from None


def run_session(session, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return session.run(None, {"ids": ids, "lengths": lengths})[0]


def session_logits(session, split: TokenizedSplit, batch_size: int) -> np.ndarray:
    """float32 logits for a tokenized split in its order, batched by length like `predict_logits`."""
    out: np.ndarray | None = None
    for indices in length_grouped_batches(split.lengths, batch_size):
        ids, lengths, _ = split.batch(indices)
        logits = run_session(session, ids, lengths)
        if out is None:
            out = np.zeros((len(split), logits.shape[1]), dtype=np.float32)
        out[indices] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


@dataclass
class Bundle:
    folder: Path
    manifest: dict[str, Any]
    labels: list[str]
    settings: TextSettings
    tokens: list[str]  # index = token id
    counts: list[int]  # train count of each token

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
        return cls(folder, manifest, labels, settings, tokens, counts)

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


class Classifier:
    """Text in, class probabilities out: the bundle's tokenizer, vocabulary and ONNX model.
    The tokenizer is spaCy with the bundle's vocabulary, or, for a pretrained model, the
    model's own tokenizer.json run by `tokenizers`. Checks the bundle's tokenizer record (see
    `tokenizer_record`) against the installed library: other token ids on the probe text are
    a PipelineError; only another version, a warning."""

    def __init__(self, bundle: Bundle, int8: bool = True, threads: int | None = None, warn: Callable[[str], None] = warn):
        self.bundle, self.labels = bundle, bundle.labels
        self.session = onnx_session(bundle.folder / (INT8_MODEL if int8 else FP32_MODEL), threads)
        self.hasher: Hasher | None = None
        self.subwords: SubwordTokenizer | None = None
        if bundle.settings.tokenizer == "pretrained":
            self.subwords = SubwordTokenizer.from_file(bundle.folder / TOKENIZER, bundle.settings)
        else:
            self.hasher = Hasher(bundle.settings)
            self.lookup = HashLookup(np.concatenate([np.zeros(2, np.uint64), self.hasher.hashes_of(bundle.tokens[2:])]))
        self.check_tokenizer(warn)

    def tokenizer_library(self) -> tuple[str, str, str]:
        """(the key of its version in the tokenizer record and its package, its name in messages, the installed version)."""
        if self.subwords is not None:
            import tokenizers

            return "tokenizers", "tokenizers", tokenizers.__version__
        import spacy

        return "spacy", "spaCy", spacy.__version__

    def tokenizer_record(self) -> dict[str, Any]:
        """What the export stage stores in the manifest: the tokenizer library's version, a probe text, its ids."""
        key, _, version = self.tokenizer_library()
        counts = np.asarray(self.bundle.counts[2:], dtype=np.int64)
        frequent = 2 + np.argsort(-counts, kind="stable")[:PROBE_VOCAB]  # ids 0 and 1 are <pad> and <unk> for spaCy
        probe = " ".join([PROBE_TEXT, *(self.bundle.tokens[i] for i in frequent)])
        return {key: version, "probe": probe, "probe_ids": self.probe_ids(probe)}

    def probe_ids(self, probe: str) -> list[int]:
        """The probe's ids: what the model's tokenizer gives for it whole (max_tokens may be far shorter
        than the probe), or, with spaCy, what `encode` gives (as every spaCy bundle recorded them)."""
        if self.subwords is not None:
            return self.subwords.tokenizer.encode(self.bundle.settings.clean(probe)).ids
        return self.encode([probe])[0].tolist()

    def check_tokenizer(self, warn: Callable[[str], None]) -> None:
        recorded = self.bundle.manifest.get("tokenizer")
        if not isinstance(recorded, dict) or not isinstance(recorded.get("probe"), str):
            return  # a bundle from before the record: nothing to compare with
        key, name, version = self.tokenizer_library()
        folder = self.bundle.folder
        if self.probe_ids(recorded["probe"]) != recorded.get("probe_ids"):
            raise PipelineError(
                f"{folder}: {name} {version} tokenizes text differently from {name} {recorded.get(key)}, "
                f"which the bundle was exported with (other token ids on its probe text); install {key}=={recorded.get(key)} "
                "or rerun the pipeline under this version"
            )
        if recorded.get(key) != version:
            warn(
                f"{folder} was exported with {name} {recorded.get(key)}, this is {name} {version}; "
                "the probe text gives the same token ids, so predictions should match"
            )

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One batch's tokens back to back and each text's full length, for `token_ids`: spaCy's
        hashes (its cache kept bounded, for long-running inference), or the model tokenizer's ids."""
        if self.subwords is not None:
            return self.subwords.encode_batch(texts)
        return self.hasher.hash_bounded(texts)

    def token_ids(self, tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Split one batch's tokens (as `tokenize` or `Hasher.hash_batch` returns them) into id arrays per text."""
        if len(lengths) == 0:
            return []
        kept = np.minimum(lengths, self.bundle.settings.max_tokens)
        ids = tokens if self.subwords is not None else self.lookup.ids(tokens).astype(np.int64)
        return np.split(ids, np.cumsum(kept)[:-1])

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return self.token_ids(*self.tokenize(texts))

    def probabilities(self, ids: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """(texts, classes) float64 probabilities; texts of similar length are run together."""
        result = np.zeros((len(ids), len(self.labels)))
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            result[rows] = softmax(run_session(self.session, *pad_batch([ids[i] for i in rows])).astype(np.float64))
        return result

    def predict(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.probabilities(self.encode(texts), batch_size)
