"""Text in, probabilities out: a bundle's tokenizer, vocabulary and ONNX model, without torch;
and the record `predict` and `serve` answer with for each text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.errors import PipelineError, warn
from pipeline.inference.bundle import FP32_MODEL, INT8_MODEL, TOKENIZER, Bundle, onnx_session, pad_batch, run_session
from pipeline.inference.calibration import Calibration
from pipeline.text.spacy_tokenizer import HashLookup, Hasher
from pipeline.text.subwords import SubwordTokenizer

PROBE_TEXT = (  # what tokenizer rules touch: contractions, URLs, e-mail, numbers, units, quotes, HTML, accents, emoji
    "Don't stop! It's a 10/10 film... e-mail me@example.com, see https://example.com/a?b=1 — “quoted” (ok) "
    "3.5km, $20, U.S.A. vs. U.K.; well-made <br />naïve café 😀 #tag @user :-) x2 C++ can't won't"
)
PROBE_VOCAB = 300  # the most frequent vocabulary entries (by train count), appended to the probe so that its ids mean something


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
        """(texts, classes) float64 probabilities, calibrated as the bundle says (softmax, or a
        sigmoid per label, of logits / temperature); texts of similar length are run together."""
        result = np.zeros((len(ids), len(self.labels)))
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            result[rows] = self.bundle.calibration.probabilities(run_session(self.session, *pad_batch([ids[i] for i in rows])))
        return result

    def predict(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.probabilities(self.encode(texts), batch_size)


def _short(probability: float) -> float:
    """Six significant digits: readable, and a small probability does not collapse to 0."""
    return float(f"{probability:.6g}")


def prediction(probabilities: np.ndarray, calibration: Calibration, all_probabilities: bool = False) -> dict[str, Any]:
    """What `predict` (after the text) and `serve` answer for one text: the top label, its score
    and every class's probability; for multi-label bundles every label at or above its
    threshold, most probable first, with its probability (and, asked for, every label's)."""
    labels = calibration.labels
    everything = {n: _short(p) for n, p in zip(labels, probabilities)}
    if not calibration.multilabel:
        top = int(probabilities.argmax())
        return {"label": labels[top], "score": _short(probabilities[top]), "probabilities": everything}
    chosen = np.flatnonzero(probabilities >= np.broadcast_to(calibration.thresholds, len(labels)))
    chosen = chosen[np.argsort(-probabilities[chosen], kind="stable")]
    record: dict[str, Any] = {"labels": [labels[i] for i in chosen], "scores": {labels[i]: _short(probabilities[i]) for i in chosen}}
    if all_probabilities:
        record["probabilities"] = everything
    return record
