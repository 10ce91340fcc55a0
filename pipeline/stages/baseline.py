"""`baseline` stage: the classic linear model on the same splits -> reports/baseline.json.

TF-IDF of word 1-2 grams (sublinear tf, min_df 2) and logistic regression (scikit-learn),
trained on data/raw's train split and scored on its test split, the ones the neural model
uses: the ten-line model any ML engineer tries first. Every run then says, beside
reports/evaluate.json, whether the neural model earns its keep. Languages written without
spaces between words (Chinese, Japanese, Thai) get character 1-3 grams instead, since a
"word" there would be a whole sentence.

The inverse regularization strength C is picked on the validation split from a small grid
(unless `baseline.C` fixes it), as that engineer would: an untuned baseline is too easy to beat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pipeline.data.raw import SPLITS, read_split
from pipeline.data.splitting import check_labels_known, flat
from pipeline.data.tokenized import encode_labels
from pipeline.errors import PipelineError
from pipeline.files import stage_outputs
from pipeline.metrics import classification_metrics, headline, multilabel_metrics, tune_thresholds
from pipeline.params import BaselineParams
from pipeline.system import available_cores, process_map
from pipeline.text.tfidf import PARALLEL_MIN_TEXTS, tfidf_features

C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo"}  # no spaces between words


def analyzer_for(params: BaselineParams, language: str) -> tuple[str, tuple[int, int]]:
    analyzer = params.analyzer if params.analyzer != "auto" else ("char" if language in UNSPACED_LANGUAGES else "word")
    return analyzer, (1, 3) if analyzer == "char" else (1, 2)


_grid_data: tuple | None = None  # (train x, train y, validation x, validation y, max_iter, threads), in each grid worker


def _set_grid_data(*data) -> None:
    global _grid_data
    _grid_data = data


def _fit_scored(c: float):
    """Logistic regression with this C on train; (validation score, model). Label sets: one
    binary regression per label, with balanced class weights, scored by validation macro-F1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from threadpoolctl import threadpool_limits

    train_x, train_y, validation_x, validation_y, max_iter, threads = _grid_data
    with threadpool_limits(threads):  # the workers share the cores: no BLAS threads fighting over them
        if train_y.ndim == 2:
            model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced")).fit(train_x, train_y)
            return multilabel_metrics(as_logits(model.predict_proba(validation_x)), validation_y, [""] * train_y.shape[1])["macro_f1"], model
        model = LogisticRegression(C=c, max_iter=max_iter).fit(train_x, train_y)
    return float((model.predict(validation_x) == validation_y).mean()), model


def as_logits(probs: np.ndarray) -> np.ndarray:
    """Probabilities as the logits whose sigmoid they are (the metrics take logits). In float64:
    scikit-learn returns float32 for float32 features, where 1 - 1e-12 rounds to 1 (an infinite logit)."""
    probs = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(probs) - np.log1p(-probs)


def run_baseline(
    params: BaselineParams, language: str, raw_dir: Path, report_path: Path, runtime_path: Path | None = None,
    metrics_path: Path | None = None,
) -> dict:
    """Fit the baseline on train, pick C on validation, score test; write the report.
    Switched off (`baseline.enabled: false`), it writes an empty report."""
    if not params.enabled:
        write_reports(report_path, {}, runtime_path, {}, metrics_path)
        return {}
    started = time.perf_counter()
    splits = {split: read_split(raw_dir, split) for split in SPLITS}
    check_labels_known({split: columns["label"] for split, columns in splits.items()}, "rerun the download stage")
    labels = sorted(set(flat(splits["train"]["label"])))
    analyzer, ngrams = analyzer_for(params, language)
    texts = [splits[split]["text"] for split in SPLITS]
    cores = available_cores()
    try:
        train_x, (validation_x, test_x), features = tfidf_features(analyzer, ngrams, params.min_df, texts[0], texts[1:], cores)
    except ValueError as exc:  # "empty vocabulary": nothing occurs min_df times
        raise PipelineError(f"baseline: no {analyzer} n-gram occurs in {params.min_df}+ train texts ({exc}); lower baseline.min_df") from None
    train_y, validation_y, test_y = (encode_labels(splits[split]["label"], labels) for split in SPLITS)
    vectorize_seconds = time.perf_counter() - started

    check_memory(1 if train_y.ndim == 2 else len(labels), features, params)  # one-vs-rest fits a label at a time
    validation_score, chosen_c, model, workers = fit_best(params, cores, (train_x, train_y, validation_x, validation_y))
    if train_y.ndim == 2:
        report = multilabel_report(model, validation_x, validation_y, test_x, test_y, labels)
        report = {**report, "validation_macro_f1": validation_score, "C": chosen_c, "features": features}
    else:
        scores = classification_metrics(model.predict_log_proba(test_x), test_y, labels)
        report = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "validation_accuracy": validation_score,
                  "C": chosen_c, "features": features}
    runtime = {
        "analyzer": f"{analyzer} {ngrams[0]}-{ngrams[1]} grams",
        "vectorize_seconds": round(vectorize_seconds, 2),
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_reports(report_path, report, runtime_path, runtime, metrics_path, multilabel=train_y.ndim == 2)
    return {**report, **runtime}


def multilabel_report(model, validation_x, validation_y: np.ndarray, test_x, test_y: np.ndarray, labels: list[str]) -> dict:
    """One-vs-rest scores on test at thresholds tuned per label on validation, and at 0.5."""
    thresholds = tune_thresholds(model.predict_proba(validation_x), validation_y)
    logits = as_logits(model.predict_proba(test_x))
    tuned, at_half = multilabel_metrics(logits, test_y, labels, thresholds), multilabel_metrics(logits, test_y, labels, 0.5)
    return {"accuracy": tuned["accuracy"], "macro_f1": tuned["macro_f1"], "micro_f1": tuned["micro_f1"],
            "macro_f1_at_05": at_half["macro_f1"], "micro_f1_at_05": at_half["micro_f1"]}


def write_reports(
    report_path: Path, report: dict, runtime_path: Path | None, runtime: dict, metrics_path: Path | None, multilabel: bool = False
) -> None:
    with stage_outputs() as outputs:
        outputs.json(report_path, report)
        if metrics_path is not None:
            outputs.json(metrics_path, headline("baseline", report, multilabel))
        if runtime_path is not None:
            outputs.json(runtime_path, runtime)


LBFGS_COPIES = 25  # coefficient-sized arrays L-BFGS keeps (weights, gradient, 10 pairs of history, work arrays)


def check_memory(classes: int, features: int, params: BaselineParams) -> None:
    """Logistic regression keeps classes x features coefficients many times over: past half the
    machine's memory, say so instead of being killed (20,000 classes x 20,000 features: ~80 GB)."""
    needed = classes * features * 8 * LBFGS_COPIES
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if total and needed > total / 2:
        raise PipelineError(
            f"baseline: logistic regression over {classes:,} classes and {features:,} features needs about {needed / 1e9:,.0f} GB, "
            f"more than half of this machine's {total / 1e9:,.0f} GB; set baseline.enabled: false, or raise baseline.min_df (now {params.min_df})"
        )


def fit_best(params: BaselineParams, cores: int, data: tuple) -> tuple[float, float, object, int]:
    """Logistic regression for each C of the grid (or `baseline.C`), fitted at once on the cores;
    (validation accuracy, C, model) of the best, and the number of processes used."""
    grid = [params.C] if params.C is not None else list(C_GRID)
    workers = min(cores, len(grid)) if data[0].shape[0] >= PARALLEL_MIN_TEXTS else 1
    with process_map(workers, _set_grid_data, (*data, params.max_iter, max(1, cores // workers))) as run:  # ~9 s -> ~5 s on IMDB
        fitted = run(_fit_scored, grid)
    best = None
    for c, (accuracy, model) in zip(grid, fitted):
        if best is None or accuracy > best[0]:  # ties keep the smaller C: the stronger regularization
            best = (accuracy, c, model)
    return (*best, workers)
