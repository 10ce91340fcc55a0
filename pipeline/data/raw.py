"""The raw splits: data/raw/{train,validation,test}.parquet, written by `download`, read by
`tokenize`, `baseline`, `evaluate` and `export` (through `read_split` and `text_batches` only).

Each has two columns: `text`, and `label`: the class name (multiclass), or the list of the
row's label names, maybe empty (multilabel: a Parquet list of strings). Read with pyarrow alone:
no pandas, so that what reads them stays light.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "validation", "test")
COLUMNS = ("text", "label")


def split_path(raw_dir: Path, split: str) -> Path:
    return raw_dir / f"{split}.parquet"


def write_split(frame: pd.DataFrame, path: Path) -> None:
    """`label`: a class name per row, or a list of them (multi-label data: a Parquet list column)."""
    labels = frame["label"].tolist()
    multilabel = bool(labels) and isinstance(labels[0], (list, tuple))
    table = pa.table({"text": pa.array(frame["text"].tolist(), pa.string()),
                      "label": pa.array([list(v) for v in labels] if multilabel else labels, pa.list_(pa.string()) if multilabel else pa.string())})
    pq.write_table(table, path, compression="zstd")


def _open(path: Path) -> pq.ParquetFile:
    """The split's file, checked to be one of ours: a PipelineError names what to rerun otherwise."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the download stage first (dvc repro download)")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{path}: not a readable Parquet file ({exc}); rerun the download stage") from None
    columns = parquet.schema_arrow.names
    if any(column not in columns for column in COLUMNS):
        raise PipelineError(f"{path}: needs columns text and label (has {', '.join(columns)}); rerun the download stage")
    return parquet


def read_split(raw_dir: Path, split: str, columns: Sequence[str] = COLUMNS) -> dict[str, list[str]]:
    """The split's `columns` as lists of strings (a missing text reads as "")."""
    path = split_path(raw_dir, split)
    parquet = _open(path)
    try:
        table = parquet.read(columns=list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{path}: cannot read the split ({exc}); rerun the download stage") from None
    # a missing text reads as ""; a label is a class name, or a list of them (multi-label data)
    return {column: [value if value is not None else ("" if column == "text" else value) for value in table.column(column).to_pylist()]
            for column in columns}


def read_texts(raw_dir: Path, split: str, expected: int) -> list[str]:
    """The split's texts, checked to be as many as the tokenized split has (the ones it came from)."""
    texts = read_split(raw_dir, split, ["text"])["text"]
    if len(texts) != expected:
        raise PipelineError(
            f"{split_path(raw_dir, split)} has {len(texts):,} rows but the tokenized {split} split {expected:,}; rerun dvc repro"
        )
    return texts


def text_batches(raw_dir: Path, split: str, batch_size: int) -> Iterator[list[str]]:
    """The split's texts in batches, streamed from the file."""
    for batch in _open(split_path(raw_dir, split)).iter_batches(batch_size=batch_size, columns=["text"]):
        yield [t or "" for t in batch.column(0).to_pylist()]
