"""`evaluate` stage: the best checkpoint on the test split -> metrics, confusion rows, worst errors.

reports/metrics.json   accuracy, macro_f1, loss, documents, then <class>_precision,
                       <class>_recall, <class>_f1 for every class (flat keys: `dvc metrics
                       diff` lines them up across commits)
reports/confusion.csv  actual,predicted per test document, by class name (DVC's confusion plot)
reports/errors.csv     the most confident mistakes: text (cut), actual, predicted, confidence
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.files import stage_outputs
from pipeline.metrics import classification_metrics, softmax
from pipeline.params import Params
from pipeline.system import available_cores
from pipeline.training.checkpoint import load_scoring_inputs, model_from_checkpoint
from pipeline.training.device import resolve_device
from pipeline.training.loader import predict_logits


def worst_errors(texts: list[str], logits: np.ndarray, actual: np.ndarray, labels: list[str], count: int, chars: int) -> pd.DataFrame:
    """The `count` mistakes the model was surest of, most confident first."""
    probabilities = softmax(logits.astype(np.float64))
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != actual)
    confidence = probabilities[wrong, predicted[wrong]]
    picked = wrong[np.argsort(-confidence, kind="stable")[:count]]
    cut = [texts[i] if len(texts[i]) <= chars else texts[i][: chars - 1].rstrip() + "…" for i in picked]
    names = np.asarray(labels, dtype=object)
    return pd.DataFrame(
        {
            "text": cut,
            "actual": names[actual[picked]],
            "predicted": names[predicted[picked]],
            "confidence": np.round(probabilities[picked, predicted[picked]], 4),
        }
    )


def run_evaluate(
    params: Params,
    checkpoint_path: Path,
    processed: Path,
    raw_dir: Path,
    metrics_path: Path,
    confusion_path: Path,
    errors_path: Path,
) -> dict[str, float]:
    """Score the checkpoint on the test split and write the three reports."""
    config = params.evaluate
    torch.set_num_threads(available_cores())
    checkpoint, labels, test, texts = load_scoring_inputs(checkpoint_path, processed, raw_dir)

    device = resolve_device(config.device)
    model = model_from_checkpoint(checkpoint).to(device)
    logits = predict_logits(model, test, config.batch_size, device)
    actual = test.labels.astype(np.int64)
    metrics = classification_metrics(logits, actual, labels)

    names = np.asarray(labels, dtype=object)
    with stage_outputs() as outputs:
        with outputs.file(confusion_path) as handle:
            pd.DataFrame({"actual": names[actual], "predicted": names[logits.argmax(1)]}).to_csv(handle, index=False)
        with outputs.file(errors_path) as handle:
            worst_errors(texts, logits, actual, labels, config.errors, config.error_chars).to_csv(handle, index=False)
        outputs.json(metrics_path, metrics)
    return metrics
