"""From a source's columns to the pipeline's two: `text` (the text columns joined) and
`label` (the class name), checking that the text columns hold text and every row a label."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, clip, listed
from pipeline.params import DownloadParams


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
    params: DownloadParams,
    columns: tuple[list[str], str],
    label_names: dict[str, str] | None,
    where: str,
) -> pd.DataFrame:
    """Select and join the text columns (`columns`: the text columns and the label column to
    use) and turn labels into class names: one string per row (multiclass), or a sorted list
    of names per row, maybe empty (multilabel)."""
    text_columns, label_column = columns
    multilabel = params.task == "multilabel"
    label_sources = params.label_columns if multilabel and params.label_columns else [label_column]
    missing = [c for c in [*text_columns, *label_sources] if c not in frame.columns]
    if missing:
        raise PipelineError(
            f"{where}: no column {listed(missing, quote=True)} (columns: {listed(frame.columns)}); "
            "set download.text_columns and download.label_column (or label_columns), or download.column_names for a headerless file"
        )
    for column in text_columns:
        check_text_values(frame[column], column, where)
    parts = [frame[c].fillna("").astype(str) for c in text_columns]
    text = parts[0] if len(parts) == 1 else pd.Series([" ".join(row) for row in zip(*parts)], index=frame.index)
    if not multilabel:
        labels = class_names(single_labels(frame[label_column], label_column, where), label_names, where)
    elif params.label_columns:
        labels = label_sets_from_columns(frame, params.label_columns, where)
    else:
        labels = label_sets(frame[label_column], label_column, params.label_separator, where)
    if multilabel:
        labels = [sorted(set(class_names(row, label_names, where))) for row in labels]
    result = pd.DataFrame({"text": text.to_numpy(dtype=object), "label": pd.Series(list(labels), dtype=object).to_numpy()})
    result.attrs.update(frame.attrs)  # what reading found (readers.INVALID_UNICODE)
    return result


def single_labels(raw: pd.Series, name: str, where: str) -> list[str]:
    """One class-name string per row, every row labelled."""
    if raw.dtype == object and raw.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
        first = int(np.flatnonzero(raw.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).to_numpy())[0])
        raise PipelineError(
            f"{where}: label column {clip(repr(name))} holds lists of labels (first at row {first + 1}: {clip(repr(raw.iloc[first]))}); "
            "for several labels per text set download.task: multilabel"
        )
    if pd.api.types.is_float_dtype(raw) and raw.dropna().eq(raw.dropna().round()).all():
        raw = raw.astype("Int64")  # 1.0 read back from a float column is the label "1"
    elif raw.dtype == object:
        raw = same_kind_labels(raw, name, where)
    absent = raw.isna() | (raw.astype(str).str.strip() == "")
    if absent.any():
        first = int(np.flatnonzero(absent.to_numpy())[0])
        raise PipelineError(f"{where}: {int(absent.sum())} rows have no label (first: row {first + 1}); fill or remove them")
    return raw.astype(str).str.strip().tolist()


def class_names(labels: list[str], label_names: dict[str, str] | None, where: str) -> list[str]:
    """Raw labels through download.label_names; a raw label it does not map is an error."""
    if label_names is None:
        return labels
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise PipelineError(
            f"{where}: labels {listed(unknown, quote=True)} have no entry in download.label_names "
            f"(it maps {listed(label_names, quote=True)})"
        )
    return [label_names[label] for label in labels]


def _label_text(value: object) -> str:
    """A raw label as text: integral numbers as integers (2.0 is "2")."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value).strip()


def label_sets(raw: pd.Series, name: str, separator: str | None, where: str) -> list[list[str]]:
    """Each row's raw labels: a list (JSON Lines, Parquet), or a string split by `separator`;
    a row without any is allowed (it means "none of these")."""
    lists = raw.map(lambda v: isinstance(v, (list, tuple, np.ndarray)))
    if lists.any():
        kinds = {_label_kind(item) for row in raw[lists] for item in row} - {None}
        if len(kinds) > 1:
            raise PipelineError(f"{where}: the label lists of {clip(repr(name))} mix {' and '.join(sorted(kinds))} values; make every label the same JSON type")
        return [[_label_text(item) for item in value if not is_null(item)] if is_list else ([] if is_null(value) else [_label_text(value)])
                for value, is_list in zip(raw, lists)]
    strings = ["" if is_null(value) else _label_text(value) for value in raw]
    if separator is None:
        raise PipelineError(
            f"{where}: download.task is multilabel but label column {clip(repr(name))} holds one label per row; "
            "set download.label_separator if each holds several labels joined (e.g. \",\"), or use download.task: multiclass"
        )
    if not any(separator in text for text in strings):
        raise PipelineError(
            f"{where}: download.label_separator {separator!r} occurs in no label of column {clip(repr(name))} "
            f"(e.g. {clip(repr(next((t for t in strings if t), '')), 40)}); check the separator"
        )
    return [[part.strip() for part in text.split(separator) if part.strip()] for text in strings]


def label_sets_from_columns(frame: pd.DataFrame, label_columns: list[str], where: str) -> list[list[str]]:
    """Each row's labels from 0/1 columns: the names of the columns that hold 1 (or true)."""
    chosen = []
    for column in label_columns:
        values = frame[column].map(lambda v: _label_text(v).lower() if not is_null(v) else "0")
        wrong = ~values.isin(["0", "1", "true", "false"])
        if wrong.any():
            first = int(np.flatnonzero(wrong.to_numpy())[0])
            raise PipelineError(
                f"{where}: label column {clip(repr(column))} holds {clip(repr(frame[column].iloc[first]))} at row {first + 1}; "
                "download.label_columns are 0/1 (or true/false) columns, one per label"
            )
        chosen.append(values.isin(["1", "true"]).to_numpy())
    return [[column for column, on in zip(label_columns, row) if on] for row in zip(*chosen)]


def read_label_names(value: dict[str, str] | str | None) -> dict[str, str] | None:
    """download.label_names as a mapping: a file of names (one per line, raw label i is line i
    from 0) is read here."""
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise PipelineError(f"download.label_names: no file {clip(value)} (a file of label names, one per line); check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"download.label_names: cannot read {clip(value)} ({exc}); give a UTF-8 file of label names, one per line") from None
    names = [line for line in lines if line]
    if len(names) != len(lines) and lines[-1:] != [""]:
        raise PipelineError(f"download.label_names: {clip(value)} has blank lines; write one label name per line")
    if len(set(names)) < len(names):
        raise PipelineError(f"download.label_names: {clip(value)} names a label twice; write each name once")
    return {str(i): name for i, name in enumerate(names)}
