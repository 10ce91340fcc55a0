"""What reports/data.json says of the splits: rows, class counts, lengths, overlaps."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.data.raw import SPLITS
from pipeline.data.splitting import flat, is_label_set


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
    """`cleaning`: per split, what cleaning dropped or replaced (empty_dropped, invalid_unicode_replaced).
    Multi-label data adds, per split, the rows with no label and the label cardinality."""
    multilabel = is_label_set(frames["train"]["label"].iloc[0])
    report: dict = {"source": source, "task": "multilabel" if multilabel else "multiclass",
                    "classes": sorted(set(flat(frames["train"]["label"])))}
    for split in SPLITS:
        frame = frames[split]
        counts = pd.Series(flat(frame["label"]), dtype=object).value_counts()
        sizes = frame["label"].map(len).to_numpy() if multilabel else None
        report[split] = {
            "rows": len(frame),
            **cleaning[split],
            **({"no_label": int((sizes == 0).sum()), "labels_per_text": round(float(sizes.mean()), 4),
                "texts_with_2_or_more": int((sizes >= 2).sum())} if multilabel else {}),
            "classes": {label: int(counts.get(label, 0)) for label in report["classes"]},
            "chars": percentiles(frame["text"].str.len().to_numpy()),
            "words": percentiles(words := frame["text"].str.split().str.len().to_numpy()),
            "words_histogram": length_histogram(words),
        }
    train_texts = frames["train"]["text"]
    report["train_duplicates"] = int(train_texts.duplicated().sum())
    report["train_test_overlap"] = int(frames["test"]["text"].isin(set(train_texts)).sum())
    return report
