"""What reports/data.json says of the splits: rows, class counts, lengths, overlaps."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.data.raw import SPLITS


def percentiles(values: np.ndarray) -> dict:
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "max": int(values.max()),
    }


def length_histogram(values: np.ndarray) -> dict:
    """Counts of texts per length bin, bins doubling in width ([0, 1), [1, 2), [2, 4), ...):
    text lengths span orders of magnitude, so equal-width bins would hide the short ones."""
    top = int(values.max(initial=0))
    edges = [0] + [2**i for i in range(0, max(top, 1).bit_length() + 1)]
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": edges, "counts": counts.tolist()}


def data_report(frames: dict[str, pd.DataFrame], cleaning: dict[str, dict[str, int]], source: str) -> dict:
    """`cleaning`: per split, what cleaning dropped or replaced (empty_dropped, invalid_unicode_replaced)."""
    report: dict = {"source": source, "classes": sorted(frames["train"]["label"].unique().tolist())}
    for split in SPLITS:
        frame = frames[split]
        counts = frame["label"].value_counts()
        report[split] = {
            "rows": len(frame),
            **cleaning[split],
            "classes": {label: int(counts.get(label, 0)) for label in report["classes"]},
            "chars": percentiles(frame["text"].str.len().to_numpy()),
            "words": percentiles(words := frame["text"].str.split().str.len().to_numpy()),
            "words_histogram": length_histogram(words),
        }
    train_texts = frames["train"]["text"]
    report["train_duplicates"] = int(train_texts.duplicated().sum())
    report["train_test_overlap"] = int(frames["test"]["text"].isin(set(train_texts)).sum())
    return report
