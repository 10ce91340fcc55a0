"""`evaluate` stage: the best checkpoint on the test split -> metrics, confusion rows, worst
errors, and the calibration the bundle uses.

On the validation split it fits what calibrates the model's probabilities: one temperature
(Guo et al. 2017), or for multi-label data a temperature and a bias per label (Platt scaling),
and, for multi-label data, one decision threshold per label (the one that maximizes the label's
validation F1). Then on test:

reports/evaluate.json     multiclass: accuracy, macro_f1, loss, documents, per class precision /
                          recall / F1; multi-label: subset accuracy, macro_f1 and micro_f1 at the
                          tuned thresholds and at 0.5 (`*_at_05`), hamming_loss, loss, per label
                          precision / recall / F1 / support; both: ECE (15 bins) and Brier score
                          after and before calibration (`*_uncalibrated`), the temperature (flat
                          keys: `dvc metrics diff --targets` lines them up across commits)
reports/metrics/evaluate.json  the few of them that `dvc metrics show` lists (metrics.HEADLINE)
reports/confusion.csv     actual,predicted rows by class name (DVC's confusion plot); for label
                          sets one row per true or predicted label, `(missed)` / `(none)` opposite
reports/errors.csv        the most confident mistakes (per label, for label sets)
reports/calibration.json  temperature(s), thresholds (calibrated and not), reliability bins:
                          what export puts in the bundle (export.calibrate)
models/evaluate/         the test logits (test_logits.npy), which export's gate reuses when
                          they were computed on a CPU: PyTorch need not score the split twice
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.data.tokenized import TokenizedSplit
from pipeline.files import stage_outputs
from pipeline.inference.calibration import Calibration, per_label
from pipeline.metrics import (
    MISSED, NONE, bce_sum, calibration_scores, fit_platt, fit_temperature, headline, probabilities, reliability, scores, tune_thresholds,
)
from pipeline.params import Params
from pipeline.system import available_cores
from pipeline.training.checkpoint import load_scoring_inputs, model_from_checkpoint
from pipeline.training.device import resolve_device
from pipeline.training.loader import predict_logits, save_test_logits



def run_evaluate(
    params: Params,
    checkpoint_path: Path,
    processed: Path,
    raw_dir: Path,
    report_path: Path,
    confusion_path: Path,
    errors_path: Path,
    calibration_path: Path | None = None,
    metrics_path: Path | None = None,
    scores_dir: Path | None = None,
) -> dict[str, float]:
    """Calibrate on validation, score the test split, and write the reports (given a path, the
    headline figures too)."""
    config = params.evaluate
    torch.set_num_threads(available_cores())
    checkpoint, labels, test, texts = load_scoring_inputs(checkpoint_path, processed, raw_dir)
    validation = TokenizedSplit(processed / "validation")
    device = resolve_device(config.device)
    model = model_from_checkpoint(checkpoint).to(device)
    validation_logits = predict_logits(model, validation, config.batch_size, device)
    logits = predict_logits(model, test, config.batch_size, device)
    fitted = calibrate(validation_logits, validation.labels, labels)
    metrics = test_metrics(logits, test.labels, labels, fitted)
    calibration = Calibration.from_json(fitted)

    with stage_outputs() as outputs:
        with outputs.file(confusion_path) as handle:
            confusion_rows(logits, test.labels, labels, calibration).to_csv(handle, index=False)
        with outputs.file(errors_path) as handle:
            worst_errors(texts, logits, test.labels, labels, calibration, config.errors, config.error_chars).to_csv(handle, index=False)
        outputs.json(report_path, metrics)
        if metrics_path is not None:
            outputs.json(metrics_path, headline("evaluate", metrics, test.multilabel))
        if calibration_path is not None:
            outputs.json(calibration_path, fitted)
        if scores_dir is not None:
            save_test_logits(outputs.folder(scores_dir), logits, device)
    return metrics


def calibrate(logits: np.ndarray, actual: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """What reports/calibration.json holds: the temperature(s) fitted on validation and, for
    label sets, the thresholds tuned on the calibrated probabilities and on the raw ones
    (export.calibrate picks the variant; `Calibration.from_json` reads it)."""
    if actual.ndim == 1:
        return Calibration(False, labels, fit_temperature(logits, actual)).to_json()
    temperature, bias = fit_platt(logits, actual)
    thresholds = tune_thresholds(probabilities(logits, True, temperature, bias), actual)
    data = Calibration(True, labels, temperature, thresholds, bias).to_json()
    data["thresholds_uncalibrated"] = per_label(labels, tune_thresholds(probabilities(logits, True), actual))
    return data


def test_metrics(logits: np.ndarray, actual: np.ndarray, labels: list[str], fitted: dict[str, Any]) -> dict[str, float]:
    """The test split's scores (label sets: at the tuned thresholds, and at 0.5), and calibration
    after and before the temperature; adds the reliability bins to `fitted`."""
    multilabel = actual.ndim == 2
    calibration = Calibration.from_json(fitted)
    calibrated, raw = calibration.probabilities(logits), probabilities(logits, multilabel)
    if multilabel:
        scaled = calibration.scaled_logits(logits)
        at_half = scores(scaled, actual, labels, 0.5)
        metrics = {**scores(scaled, actual, labels, calibration.thresholds), "loss": bce_sum(logits, actual) / max(len(actual), 1),
                   "macro_f1_at_05": at_half["macro_f1"], "micro_f1_at_05": at_half["micro_f1"]}
    else:
        metrics = scores(logits, actual, labels)  # the loss of the model's own probabilities; the top class is the same either way
    after, before = calibration_scores(calibrated, actual), calibration_scores(raw, actual)
    fitted["reliability"] = {"calibrated": reliability(calibrated, actual), "uncalibrated": reliability(raw, actual)}
    extra = {"ece": after["ece"], "ece_uncalibrated": before["ece"], "brier": after["brier"], "brier_uncalibrated": before["brier"]}
    if not multilabel:
        extra["temperature"] = fitted["temperature"]
    head = ("accuracy", "macro_f1", "micro_f1", "macro_f1_at_05", "micro_f1_at_05", "hamming_loss", "loss", "documents")
    return {**{k: metrics[k] for k in head if k in metrics}, **extra, **{k: v for k, v in metrics.items() if k not in head}}


def confusion_rows(logits: np.ndarray, actual: np.ndarray, labels: list[str], calibration: Calibration) -> pd.DataFrame:
    names = np.asarray(labels, dtype=object)
    predicted = calibration.decisions(logits)
    if actual.ndim == 1:
        return pd.DataFrame({"actual": names[actual], "predicted": names[predicted]})
    rows = []
    for truth, guess in zip(actual.astype(bool), predicted):
        rows += [(name, name if hit else MISSED) for name, hit in zip(names[truth], guess[truth])]
        rows += [(NONE, name) for name in names[guess & ~truth]]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def worst_errors(texts: list[str], logits: np.ndarray, actual: np.ndarray, labels: list[str], calibration: Calibration,
                 count: int, chars: int) -> pd.DataFrame:
    """The `count` mistakes the model was surest of, most confident first (calibrated
    probabilities); for label sets, the surest mistakes of each label, `count` over the labels
    (at least two each): a label predicted that is not there, or one there and missed."""
    probs = calibration.probabilities(logits)
    names = np.asarray(labels, dtype=object)
    if not calibration.multilabel:
        predicted = probs.argmax(1)
        wrong = np.flatnonzero(predicted != actual)
        picked = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")[:count]]
        return pd.DataFrame({"text": [_cut(texts[i], chars) for i in picked], "actual": names[actual[picked]],
                             "predicted": names[predicted[picked]], "confidence": np.round(probs[picked, predicted[picked]], 4)})
    predicted, truth = calibration.decisions(logits), actual.astype(bool)
    per_label = max(2, count // max(len(labels), 1))
    rows = []
    for label in range(len(labels)):
        wrong = np.flatnonzero(predicted[:, label] != truth[:, label])
        surest = np.abs(probs[wrong, label] - 0.5)  # how far from unsure the wrong decision was
        for i in wrong[np.argsort(-surest, kind="stable")[:per_label]]:
            rows.append({"text": _cut(texts[i], chars), "actual": ", ".join(names[truth[i]]) or NONE,
                         "predicted": ", ".join(names[predicted[i]]) or NONE, "label": labels[label],
                         "confidence": round(float(probs[i, label] if predicted[i, label] else 1 - probs[i, label]), 4)})
    frame = pd.DataFrame(rows, columns=["text", "actual", "predicted", "label", "confidence"])
    return frame.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)
