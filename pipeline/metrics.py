"""Classification metrics from class ids, NumPy only (train, evaluate and export share them)."""

from __future__ import annotations

import numpy as np


def class_counts(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(3, classes) int64: per class, the documents predicted right, predicted as it, and of it.
    Everything the metrics need, in O(classes) memory (a confusion matrix is classes x classes:
    3.2 GB for 20,000 classes); counts from several shards add up to the whole's."""
    hits = np.bincount(actual[actual == predicted], minlength=num_classes)
    return np.stack([hits, np.bincount(predicted, minlength=num_classes), np.bincount(actual, minlength=num_classes)]).astype(np.int64)


def per_class_scores(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class from `class_counts`; 0 where undefined (no predictions or no examples)."""
    hits, predicted, actual = counts.astype(np.float64)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return precision, recall, f1


def log_loss_sum(logits: np.ndarray, actual: np.ndarray) -> float:
    """Summed negative log-likelihood of the true class, computed stably in float64 (sums
    from several shards add up to the whole's)."""
    if not len(actual):
        return 0.0
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(actual)), actual].sum())


def cross_entropy(logits: np.ndarray, actual: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    return log_loss_sum(logits, actual) / len(actual) if len(actual) else 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def classification_metrics(logits: np.ndarray, actual: np.ndarray, labels: list[str]) -> dict[str, float]:
    """accuracy, macro_f1 (every class weighted equally), loss, documents, then
    <class>_precision, <class>_recall and <class>_f1 for every class: flat keys."""
    counts = class_counts(actual, logits.argmax(1), len(labels))
    return metrics_from_counts(counts, cross_entropy(logits, actual), labels)


def metrics_from_counts(counts: np.ndarray, loss: float, labels: list[str]) -> dict[str, float]:
    """classification_metrics from `class_counts` and the mean loss (what sharded validation
    sums over processes)."""
    precision, recall, f1 = per_class_scores(counts)
    documents = int(counts[2].sum())
    metrics: dict[str, float] = {
        "accuracy": float(counts[0].sum() / max(documents, 1)),
        "macro_f1": float(f1.mean()),
        "loss": loss,
        "documents": documents,
    }
    for i, name in enumerate(labels):
        metrics[f"{name}_precision"] = float(precision[i])
        metrics[f"{name}_recall"] = float(recall[i])
        metrics[f"{name}_f1"] = float(f1[i])
    return metrics
