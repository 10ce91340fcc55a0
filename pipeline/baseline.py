"""`baseline` stage: the classic linear model on the same splits -> reports/baseline.json.

TF-IDF of word 1-2 grams (sublinear tf, min_df 2) and logistic regression (scikit-learn),
trained on data/raw's train split and scored on its test split, the ones the neural model
uses: the ten-line model any ML engineer tries first. Every run then says, beside
reports/metrics.json, whether the neural model earns its keep. Languages written without
spaces between words (Chinese, Japanese, Thai) get character 1-3 grams instead, since a
"word" there would be a whole sentence.

The inverse regularization strength C is picked on the validation split from a small grid
(unless `baseline.C` fixes it), as that engineer would: an untuned baseline is too easy to beat.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.metrics import classification_metrics
from pipeline.params import BaselineParams

C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo"}  # no spaces between words


def read_split(raw_dir: Path, split: str) -> pd.DataFrame:
    path = raw_dir / f"{split}.parquet"
    try:
        return pd.read_parquet(path, columns=["text", "label"])
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; run the download stage first (dvc repro download)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{path}: cannot read the split ({exc}); rerun the download stage") from None


def analyzer_for(params: BaselineParams, language: str) -> tuple[str, tuple[int, int]]:
    analyzer = params.analyzer if params.analyzer != "auto" else ("char" if language in UNSPACED_LANGUAGES else "word")
    return analyzer, (1, 3) if analyzer == "char" else (1, 2)


def run_baseline(
    params: BaselineParams, language: str, raw_dir: Path, report_path: Path, runtime_path: Path | None = None
) -> dict:
    """Fit the baseline on train, pick C on validation, score test; write the report.
    Switched off (`baseline.enabled: false`), it writes an empty report."""
    if not params.enabled:
        write_json(report_path, {})
        if runtime_path is not None:
            write_json(runtime_path, {})
        return {}
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    train, validation, test = (read_split(raw_dir, split) for split in ("train", "validation", "test"))
    labels = sorted(set(train["label"]))
    index = {name: i for i, name in enumerate(labels)}
    unseen = sorted(set(validation["label"]).union(test["label"]) - set(labels))
    if unseen:
        raise PipelineError(f"{raw_dir}: validation/test labels {', '.join(unseen[:5])} are not in train; rerun the download stage")
    analyzer, ngrams = analyzer_for(params, language)
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=params.min_df, dtype=np.float32)
    try:
        train_x = vectorizer.fit_transform(train["text"])
    except ValueError as exc:  # "empty vocabulary": nothing occurs min_df times
        raise PipelineError(f"baseline: no {analyzer} n-gram occurs in {params.min_df}+ train texts ({exc}); lower baseline.min_df") from None
    validation_x, test_x = vectorizer.transform(validation["text"]), vectorizer.transform(test["text"])
    train_y, validation_y, test_y = (frame["label"].map(index).to_numpy() for frame in (train, validation, test))
    vectorize_seconds = time.perf_counter() - started

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=params.max_iter).fit(train_x, train_y)

    best = None
    for c in [params.C] if params.C is not None else C_GRID:
        model = fit(c)
        accuracy = float((model.predict(validation_x) == validation_y).mean())
        if best is None or accuracy > best[0]:  # ties keep the smaller C: the stronger regularization
            best = (accuracy, c, model)
    validation_accuracy, chosen_c, model = best
    scores = classification_metrics(model.predict_log_proba(test_x), test_y, labels)
    report = {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "validation_accuracy": validation_accuracy,
        "C": chosen_c,
        "features": len(vectorizer.vocabulary_),
    }
    runtime = {
        "analyzer": f"{analyzer} {ngrams[0]}-{ngrams[1]} grams",
        "vectorize_seconds": round(vectorize_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(report_path, report)
    if runtime_path is not None:
        write_json(runtime_path, runtime)
    return {**report, **runtime}
