"""From a source's columns to the pipeline's two: `text` (the text columns joined) and
`label` (the class name), checking that the text columns hold text and every row a label."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, clip, listed


def is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def check_text_values(column: pd.Series, name: str, where: str) -> None:
    """Text columns hold strings (or nothing); a number, list or mapping there is a wrong column, not text."""
    if isinstance(column.dtype, pd.StringDtype):
        return
    wrong = column.map(lambda value: not (isinstance(value, str) or is_null(value))).to_numpy(dtype=bool)
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        value = column.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value  # 5, not np.int64(5)
        kind = "list" if isinstance(value, (list, tuple, np.ndarray)) else type(value).__name__
        raise PipelineError(
            f"{where}: text column {clip(repr(name))} holds {kind} values, not text ({int(wrong.sum())} rows, "
            f"first at row {first + 1}: {clip(repr(value))}); pick the right download.text_columns or store the text as strings"
        )


def to_text_label(
    frame: pd.DataFrame,
    text_columns: list[str],
    label_column: str,
    label_names: dict[str, str] | None,
    where: str,
) -> pd.DataFrame:
    """Select and join the text columns and turn labels into class-name strings."""
    missing = [c for c in [*text_columns, label_column] if c not in frame.columns]
    if missing:
        raise PipelineError(
            f"{where}: no column {listed(missing, quote=True)} (columns: {listed(frame.columns)}); "
            "set download.text_columns and download.label_column, or download.column_names for a headerless file"
        )
    for column in text_columns:
        check_text_values(frame[column], column, where)
    parts = [frame[c].fillna("").astype(str) for c in text_columns]
    text = parts[0] if len(parts) == 1 else pd.Series([" ".join(row) for row in zip(*parts)], index=frame.index)
    raw = frame[label_column]
    if pd.api.types.is_float_dtype(raw) and raw.dropna().eq(raw.dropna().round()).all():
        raw = raw.astype("Int64")  # 1.0 read back from a float column is the label "1"
    absent = raw.isna() | (raw.astype(str).str.strip() == "")
    if absent.any():
        first = int(np.flatnonzero(absent.to_numpy())[0])
        raise PipelineError(f"{where}: {int(absent.sum())} rows have no label (first: row {first + 1}); fill or remove them")
    labels = raw.astype(str).str.strip()
    if label_names is not None:
        unknown = sorted(set(labels) - set(label_names))
        if unknown:
            raise PipelineError(
                f"{where}: labels {listed(unknown, quote=True)} have no entry in download.label_names "
                f"(it maps {listed(label_names, quote=True)})"
            )
        labels = labels.map(label_names)
    return pd.DataFrame({"text": text.to_numpy(dtype=object), "label": labels.to_numpy(dtype=object)})
