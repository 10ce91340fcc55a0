"""From a model's logits to the probabilities and decisions a bundle gives: the temperature(s)
that calibrate them and, for multi-label data, each label's decision threshold.

The evaluate stage fits them on the validation split (reports/calibration.json); the export
stage puts the variant export.calibrate asks for into the bundle (calibration.json); predict
and serve apply it. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.metrics import probabilities


@dataclass(frozen=True)
class Calibration:
    multilabel: bool
    labels: list[str]
    temperature: np.ndarray | float = 1.0  # one, or one per label for multi-label data
    thresholds: np.ndarray | float | None = None  # multi-label: the probability at or above which a label is predicted
    bias: np.ndarray | float = 0.0  # multi-label: added to each label's logit / temperature (Platt scaling)

    @classmethod
    def identity(cls, labels: list[str], multilabel: bool) -> Calibration:
        """The model's own probabilities; labels at 0.5."""
        return cls(multilabel, labels, 1.0, 0.5 if multilabel else None)

    @classmethod
    def from_json(cls, data: dict[str, Any], calibrated: bool = True) -> Calibration:
        """Read what evaluate wrote (or a bundle's calibration.json): the calibrated variant, or
        the model's own probabilities with the thresholds tuned on them (`calibrated` false)."""
        labels, multilabel = list(data["labels"]), data["task"] == "multilabel"
        temperature = data["temperature"] if calibrated else 1.0
        if isinstance(temperature, dict):
            temperature = np.array([temperature[name] for name in labels], dtype=np.float64)
        key = "thresholds" if calibrated or "thresholds_uncalibrated" not in data else "thresholds_uncalibrated"
        thresholds = np.array([data[key][name] for name in labels], dtype=np.float64) if multilabel else None
        bias = np.array([data["bias"][name] for name in labels], dtype=np.float64) if multilabel and calibrated and "bias" in data else 0.0
        return cls(multilabel, labels, temperature, thresholds, bias)

    def to_json(self) -> dict[str, Any]:
        temperature = per_label(self.labels, self.temperature) if self.multilabel else round(float(self.temperature), 6)
        data: dict[str, Any] = {"task": "multilabel" if self.multilabel else "multiclass", "labels": self.labels, "temperature": temperature}
        if self.multilabel:
            data["bias"] = per_label(self.labels, self.bias)
            data["thresholds"] = per_label(self.labels, self.thresholds)
        return data

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return probabilities(logits, self.multilabel, self.temperature, self.bias)

    def scaled_logits(self, logits: np.ndarray) -> np.ndarray:
        """The logits whose softmax (sigmoid per label) is `probabilities`."""
        return logits.astype(np.float64) / self.temperature + self.bias

    def decisions(self, logits: np.ndarray) -> np.ndarray:
        """The predicted class per text, or the 0/1 label decisions at the thresholds."""
        if not self.multilabel:
            return logits.argmax(1)
        return self.probabilities(logits) >= self.thresholds


def per_label(labels: list[str], values: np.ndarray | float) -> dict[str, float]:
    """{label: value} (one value broadcast to every label), rounded to 6 decimals for the JSON files."""
    return dict(zip(labels, np.round(np.broadcast_to(values, len(labels)), 6).tolist()))
