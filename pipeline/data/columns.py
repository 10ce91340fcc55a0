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


def _label_kind(value: object) -> str | None:
    if is_null(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):
        return "text"
    return "list" if isinstance(value, (list, tuple, np.ndarray)) else type(value).__name__


def same_kind_labels(raw: pd.Series, name: str, where: str) -> pd.Series:
    """A label column of Python values (JSON Lines) holds one kind of scalar: 1 and "1" would
    silently be two labels of one name, or one class each. Integral numbers read as integers
    (2.0 is the label "2")."""
    kinds = raw.map(_label_kind)
    found = [kind for kind in ("text", "number", "boolean") if (kinds == kind).any()]
    other = kinds.dropna()[~kinds.dropna().isin(["text", "number", "boolean"])]
    if len(other):
        first = other.index[0]
        raise PipelineError(
            f"{where}: label column {clip(repr(name))} holds {other.iloc[0]} values (first at row {raw.index.get_loc(first) + 1}: "
            f"{clip(repr(raw[first]))}); a row's label must be one value (a string or a number)"
        )
    if len(found) > 1:
        examples = ", ".join(f"{kind} {clip(repr(raw[kinds[kinds == kind].index[0]]), 20)}" for kind in found)
        raise PipelineError(
            f"{where}: label column {clip(repr(name))} mixes {' and '.join(found)} values ({examples}), which would be separate classes; "
            "write every label as the same JSON type (all strings, or all numbers)"
        )
    if found == ["number"]:
        return raw.map(lambda v: v if is_null(v) or not float(v).is_integer() else int(v))
    return raw


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
    elif raw.dtype == object:
        raw = same_kind_labels(raw, label_column, where)
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
    result = pd.DataFrame({"text": text.to_numpy(dtype=object), "label": labels.to_numpy(dtype=object)})
    result.attrs.update(frame.attrs)  # what reading found (readers.INVALID_UNICODE)
    return result
