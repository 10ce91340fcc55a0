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


# --- multi-label ------------------------------------------------------------------------------
MISSED, NONE = "(missed)", "(none)"  # the other side of a label-set confusion row (reports/confusion.csv)

def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # exp-free: no overflow for large logits


def binary_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Element-wise binary cross-entropy of sigmoid(logits) against targets (0/1 or soft),
    in float64, stable for any logit."""
    x, y = logits.astype(np.float64), targets.astype(np.float64)
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def bce_sum(logits: np.ndarray, actual: np.ndarray) -> float:
    """Binary cross-entropy of every label, averaged over the labels of a text and summed over
    the texts (so that shards add up)."""
    if not len(actual):
        return 0.0
    return float(binary_cross_entropy(logits, actual).mean(1).sum())


def multilabel_tally(logits: np.ndarray, actual: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """The sums the multi-label metrics come from, one float64 vector (shards add up): per label
    (right, predicted, actual) counts, then the loss sum, the texts whose every decision is
    right, the wrong decisions and the texts. A label is predicted at `thresholds` (probability)."""
    classes = actual.shape[1] if actual.ndim == 2 else 0
    decided = sigmoid(logits) >= thresholds if len(actual) else np.zeros((0, classes), dtype=bool)
    truth = actual.astype(bool)
    counts = np.stack([(decided & truth).sum(0), decided.sum(0), truth.sum(0)]).astype(np.float64) if len(actual) else np.zeros((3, classes))
    right = (decided == truth)
    extra = [bce_sum(logits, actual), float(right.all(1).sum()), float((~right).sum()), float(len(actual))]
    return np.concatenate([counts.ravel(), extra])


def multilabel_tally_size(classes: int) -> int:
    """The length of multilabel_tally's vector: three counts per label, then four sums."""
    return 3 * classes + 4


THRESHOLD_BINS = 100  # validation during training tunes each label's threshold to the nearest 0.01


def threshold_histogram(logits: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per label, how many texts that hold it (row 0) and that do not (row 1) fall in each of
    THRESHOLD_BINS probability bins: the sums (shards add up) from which best_threshold_scores
    finds each label's best threshold without every shard's probabilities in one place."""
    classes = actual.shape[1]
    bins = np.minimum((sigmoid(logits.astype(np.float64)) * THRESHOLD_BINS).astype(np.int64), THRESHOLD_BINS - 1)
    flat_bins = bins + THRESHOLD_BINS * np.arange(classes)  # label-major: one bincount for every label
    truth = actual.astype(bool)
    size = classes * THRESHOLD_BINS
    positive = np.bincount(flat_bins[truth], minlength=size)
    negative = np.bincount(flat_bins[~truth], minlength=size)
    return np.stack([positive, negative]).astype(np.float64).ravel()


def best_threshold_scores(histogram: np.ndarray, classes: int) -> dict[str, float]:
    """Macro- and micro-F1 with each label at its best threshold on these texts (bin edges of
    threshold_histogram): what evaluate's tuned thresholds aim at, so a fair early-stopping
    signal for label sets, where a 0.5 threshold leaves rare labels at F1 0."""
    positive, negative = histogram.reshape(2, classes, THRESHOLD_BINS)
    hits = np.cumsum(positive[:, ::-1], 1)[:, ::-1]  # at the threshold of bin k: texts in bins >= k
    predicted = hits + np.cumsum(negative[:, ::-1], 1)[:, ::-1]
    support = positive.sum(1, keepdims=True)
    f1 = np.divide(2 * hits, predicted + support, out=np.zeros_like(hits), where=predicted + support > 0)
    best = f1.argmax(1)
    rows = np.arange(classes)
    right, chosen = hits[rows, best].sum(), predicted[rows, best].sum()
    return {"macro_f1": float(f1[rows, best].mean()), "micro_f1": float(2 * right / max(chosen + support.sum(), 1))}


def multilabel_metrics_from_tally(tally: np.ndarray, labels: list[str]) -> dict[str, float]:
    """accuracy (subset accuracy: every label of a text right), macro_f1, micro_f1, hamming_loss,
    loss, documents, then <label>_precision, _recall, _f1 and _support for every label."""
    classes = len(labels)
    counts = tally[: 3 * classes].reshape(3, classes)
    loss_sum, exact, wrong, documents = tally[3 * classes : multilabel_tally_size(classes)]
    precision, recall, f1 = per_class_scores(counts)
    right, predicted, actual = counts.sum(1)
    metrics: dict[str, float] = {
        "accuracy": float(exact / max(documents, 1)),
        "macro_f1": float(f1.mean()),
        "micro_f1": float(2 * right / max(predicted + actual, 1)),
        "hamming_loss": float(wrong / max(documents * classes, 1)),
        "loss": float(loss_sum / max(documents, 1)),
        "documents": int(documents),
    }
    for i, name in enumerate(labels):
        metrics[f"{name}_precision"] = float(precision[i])
        metrics[f"{name}_recall"] = float(recall[i])
        metrics[f"{name}_f1"] = float(f1[i])
        metrics[f"{name}_support"] = int(counts[2, i])
    return metrics


def multilabel_metrics(logits: np.ndarray, actual: np.ndarray, labels: list[str], thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    return multilabel_metrics_from_tally(multilabel_tally(logits, actual, thresholds), labels)


def scores(logits: np.ndarray, actual: np.ndarray, labels: list[str], thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """classification_metrics, or multilabel_metrics for label sets (a 2-D `actual`)."""
    if actual.ndim == 2:
        return multilabel_metrics(logits, actual, labels, thresholds)
    return classification_metrics(logits, actual, labels)


# --- calibration and thresholds -----------------------------------------------------------------
ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # what calibration may fit


def probabilities(logits: np.ndarray, multilabel: bool, temperature: np.ndarray | float = 1.0, bias: np.ndarray | float = 0.0) -> np.ndarray:
    """Softmax over classes of `logits / temperature`, or a sigmoid per label of
    `logits / temperature + bias` (float64)."""
    scaled = logits.astype(np.float64) / temperature
    return sigmoid(scaled + bias) if multilabel else softmax(scaled)


def confidence_bins(probs: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, hit, ECE bin) per decision. Multiclass: the top class's probability against
    being right (Guo et al. 2017); multi-label: every label's probability against the label
    being there."""
    if actual.ndim == 2:
        confidence, hit = probs.ravel(), actual.ravel().astype(np.float64)
    else:
        confidence, hit = probs.max(1), (probs.argmax(1) == actual).astype(np.float64)
    return confidence, hit, np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)


def calibration_scores(probs: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Expected calibration error (15 equal-width bins, confidence_bins) and Brier score."""
    confidence, hit, bins = confidence_bins(probs, actual)
    if actual.ndim == 2:
        brier = float(((probs - actual) ** 2).mean())
    else:
        onehot = np.zeros_like(probs)
        onehot[np.arange(len(actual)), actual] = 1
        brier = float(((probs - onehot) ** 2).sum(1).mean())
    gap = np.abs(np.bincount(bins, weights=confidence, minlength=ECE_BINS) - np.bincount(bins, weights=hit, minlength=ECE_BINS))
    return {"ece": float(gap.sum() / max(len(confidence), 1)), "brier": brier}


def reliability(probs: np.ndarray, actual: np.ndarray) -> dict[str, list]:
    """Per bin of confidence: its mean confidence, accuracy (or positive share) and count, for a reliability diagram."""
    confidence, hit, bins = confidence_bins(probs, actual)
    count = np.bincount(bins, minlength=ECE_BINS)
    mean = lambda values: np.divide(np.bincount(bins, weights=values, minlength=ECE_BINS), count, out=np.zeros(ECE_BINS), where=count > 0)  # noqa: E731
    return {"confidence": np.round(mean(confidence), 6).tolist(), "accuracy": np.round(mean(hit), 6).tolist(), "count": count.tolist()}


def fit_temperature(logits: np.ndarray, actual: np.ndarray) -> np.ndarray | float:
    """The temperature that minimizes the validation loss of `logits / T` (Guo et al. 2017):
    one for multiclass, one per label for multi-label data (each label a binary problem),
    in TEMPERATURE_RANGE; it never changes which class is on top."""
    logits = logits.astype(np.float64)
    if actual.ndim == 1:
        return multiclass_temperature(logits, actual)

    def loss(log_t: np.ndarray) -> np.ndarray:  # one loss per label
        return binary_cross_entropy(logits / np.exp(log_t), actual).mean(0)

    # golden-section search on log T, every label at once
    low, high = np.full(actual.shape[1], np.log(TEMPERATURE_RANGE[0])), np.full(actual.shape[1], np.log(TEMPERATURE_RANGE[1]))
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        left = loss(a) < loss(b)
        high, low = np.where(left, b, high), np.where(left, low, a)
    return np.exp((low + high) / 2)


def multiclass_temperature(logits: np.ndarray, actual: np.ndarray) -> float:
    """The loss is convex in the inverse temperature b = 1/T (a log-sum-exp of b x logits minus
    b x the true logit): its derivative is the mean softmax logit minus the true one, its second
    derivative their variance. Newton steps on b, kept inside a shrinking bracket (bisection
    where a step leaves it): about ten passes over the logits, which matters with many classes."""
    shifted = logits - logits.max(1, keepdims=True)  # log-softmax is unchanged by the shift; exp stays <= 1
    true_mean = shifted[np.arange(len(actual)), actual].mean()
    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]

    def slopes(inverse: float) -> tuple[float, float]:
        weights = np.exp(shifted * inverse)
        weights /= weights.sum(1, keepdims=True)
        mean = (weights * shifted).sum(1)
        return mean.mean() - true_mean, ((weights * shifted**2).sum(1) - mean**2).mean()

    if slopes(low)[0] >= 0:  # the loss rises from the hottest temperature on: the model is no better than chance
        return TEMPERATURE_RANGE[1]
    inverse = 1.0
    for _ in range(100):
        gradient, curvature = slopes(inverse)
        if gradient > 0:
            high = inverse
        else:
            low = inverse
        step = inverse - gradient / curvature if curvature > 1e-12 else np.nan
        previous, inverse = inverse, step if low < step < high else (low + high) / 2
        if abs(inverse - previous) <= 1e-10 * previous or high - low <= 1e-10 * low:
            break
    return float(1 / inverse)


def fit_platt(logits: np.ndarray, actual: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per label, the temperature T and bias b of `sigmoid(logit / T + b)` that minimize its
    validation loss (Platt scaling, with Platt's smoothed targets so that a label the model
    separates perfectly does not push T to 0). A temperature alone cannot fix a label whose
    probabilities are all too low; the bias can. T stays in TEMPERATURE_RANGE, so each label's
    ranking (and so its best threshold's F1) is unchanged. Damped Newton steps, all labels at once."""
    x, y = logits.astype(np.float64), actual.astype(np.float64)
    positives = y.sum(0)
    negatives = len(y) - positives
    target = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return binary_cross_entropy(scale * x + bias, target).mean(0)

    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    scale, bias = np.ones(x.shape[1]), np.zeros(x.shape[1])
    current = loss(scale, bias)
    for _ in range(iterations):
        p = sigmoid(scale * x + bias)
        residual, weight = p - target, p * (1 - p)
        grad_scale, grad_bias = (residual * x).mean(0), residual.mean(0)
        h_ss, h_sb, h_bb = (weight * x * x).mean(0) + 1e-9, (weight * x).mean(0), weight.mean(0) + 1e-9
        det = np.maximum(h_ss * h_bb - h_sb**2, 1e-18)
        step_scale, step_bias = (h_bb * grad_scale - h_sb * grad_bias) / det, (h_ss * grad_bias - h_sb * grad_scale) / det
        size = np.ones_like(scale)
        for _ in range(30):  # halve each label's step until its loss does not rise
            candidate_scale, candidate_bias = np.clip(scale - size * step_scale, low, high), bias - size * step_bias
            candidate = loss(candidate_scale, candidate_bias)
            worse = candidate > current + 1e-12
            if not worse.any():
                break
            size = np.where(worse, size / 2, size)
        keep = candidate <= current + 1e-12
        scale, bias = np.where(keep, candidate_scale, scale), np.where(keep, candidate_bias, bias)
        if np.all(np.abs(current - candidate) < 1e-10):
            break
        current = np.where(keep, candidate, current)
    return 1 / scale, bias


def tune_thresholds(probs: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per label, the probability at or above which it is predicted that maximizes its F1 on
    these texts (the validation split); 0.5 for a label they never hold."""
    thresholds = np.full(probs.shape[1], 0.5)
    for label in range(probs.shape[1]):
        truth = actual[:, label].astype(bool)
        if not truth.any():
            continue
        order = np.argsort(-probs[:, label], kind="stable")
        ranked, hits = probs[order, label], np.cumsum(truth[order])
        # a cut can only fall between two different probabilities: after the last of each run of ties
        ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
        predicted = ends + 1
        f1 = 2 * hits[ends] / (predicted + truth.sum())
        thresholds[label] = ranked[ends[int(np.argmax(f1))]]
    return thresholds


# The few figures of each stage that `dvc metrics show` and `dvc exp show` list
# (reports/metrics/<stage>.json, the stages' DVC metrics): for single labels, then for label
# sets, {name shown: key in the stage's own report}. The stage's reports/<stage>.json keeps
# everything it measured. Few enough that `dvc metrics show` fits a terminal (109 columns on
# IMDB), and no name twice, so `dvc exp show` needs no file prefixes.
HEADLINE = {
    "evaluate": ({"accuracy": "accuracy", "macro_f1": "macro_f1", "ece": "ece"}, {"macro_f1": "macro_f1", "micro_f1": "micro_f1", "ece": "ece"}),
    "baseline": ({"baseline_accuracy": "accuracy"}, {"baseline_macro_f1": "macro_f1"}),
    "export": ({"int8_accuracy": "onnx_int8_accuracy", "int8_mb": "onnx_int8_mb"}, {"int8_micro_f1": "onnx_int8_micro_f1", "int8_mb": "onnx_int8_mb"}),
}


def headline(stage: str, report: dict, multilabel: bool) -> dict:
    """A stage's metrics file: its HEADLINE figures that `report` holds (none for an empty report)."""
    return {shown: report[key] for shown, key in HEADLINE[stage][multilabel].items() if key in report}
