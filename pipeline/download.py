"""`download` stage: any supported source -> data/raw/{train,validation,test}.parquet.

Each split has two string columns, `text` and `label` (the class name), and
reports/data.json describes them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError, first_line
from pipeline.fetch import check_sha256, download_url, extract_archive, is_archive, is_url, sha256_of
from pipeline.files import staged_dir, write_json
from pipeline.params import DownloadParams
from pipeline.paths import DATA_REPORT, RAW_DIR
from pipeline.readers import SUPPORTED, match_splits, read_table, read_tree, table_files, tree_splits

SPLITS = ("train", "validation", "test")
SINGLE_FILE = "all"  # the one "split" a single-file source has before we split it


def run_download(params: DownloadParams, out_dir: Path = RAW_DIR, report_path: Path = DATA_REPORT) -> dict:
    """Fetch, read, clean and split the source; write the splits and the data report."""
    with tempfile.TemporaryDirectory(prefix="textclf-download-") as scratch:
        sourced, columns = load_source(params, Path(scratch))
        text_columns, label_column = columns
        frames = {
            split: to_text_label(frame, text_columns, label_column, params.label_names, where)
            for split, (frame, where) in sourced.items()
        }
    dropped = {}
    for split, frame in frames.items():
        empty = frame["text"].str.strip() == ""
        if empty.all():
            raise PipelineError(f"all {len(frame)} texts in {split} are empty; check download.text_columns")
        dropped[split] = int(empty.sum())
        frames[split] = frame[~empty].reset_index(drop=True)

    rng = np.random.default_rng(params.seed)
    if SINGLE_FILE in frames:
        frames["train"] = frames.pop(SINGLE_FILE)
        dropped["train"] = dropped.pop(SINGLE_FILE)
    check_classes(frames["train"])
    if "test" not in frames:
        frames["train"], frames["test"] = carve(frames["train"], params.test_fraction, rng, "test")
    if "validation" not in frames:
        frames["train"], frames["validation"] = carve(frames["train"], params.validation_fraction, rng, "validation")
    if params.max_rows is not None:
        for split in SPLITS:
            if len(frames[split]) > params.max_rows:
                frames[split] = frames[split].iloc[stratified_pick(frames[split]["label"], params.max_rows, rng)]
    check_labels_known(frames)

    report = data_report(frames, {split: dropped.get(split, 0) for split in SPLITS}, params.source)
    with staged_dir(out_dir) as staging:
        for split in SPLITS:
            write_split(frames[split], staging / f"{split}.parquet")
    write_json(report_path, report)
    return report


Sourced = dict[str, tuple[pd.DataFrame, str]]  # split -> (frame, where it came from, for messages)


def load_source(params: DownloadParams, scratch: Path) -> tuple[Sourced, tuple[list[str], str]]:
    """Read the source into frames by split, with the (text columns, label column) to use."""
    columns = (params.text_columns, params.label_column)
    if params.source.startswith("hf:"):
        if params.sha256 is not None:
            raise PipelineError("download.sha256 applies to URL and local-file sources, not hf: datasets; remove it")
        return load_hf(params), columns
    if is_url(params.source):
        path = download_url(params.source, scratch, params.sha256)
    else:
        path = Path(params.source).expanduser()
        if not path.exists():
            raise PipelineError(
                f"download.source {params.source!r} does not exist; give a local file, folder or archive, "
                "an http(s) URL, or hf:<dataset id>"
            )
        if params.sha256 is not None:
            if not path.is_file():
                raise PipelineError("download.sha256 applies to a file, but download.source is a folder; remove it")
            check_sha256(sha256_of(path), params.sha256, str(path))
    if path.is_file() and is_archive(path):
        path = extract_archive(path, scratch / "extracted")
    if path.is_file():
        return {SINGLE_FILE: (read_table(path, params.encoding, params.column_names), str(path))}, columns
    tables = table_files(path)
    if tables:
        mapping = match_splits(list(tables), params.splits, str(path))
        return {
            ours: (read_table(tables[theirs], params.encoding, params.column_names), str(tables[theirs]))
            for ours, theirs in mapping.items()
        }, columns
    trees = tree_splits(path)
    if trees:
        mapping = match_splits(list(trees), params.splits, str(path))
        frames = read_tree({ours: trees[theirs] for ours, theirs in mapping.items()}, params.encoding)
        return {split: (frame, str(trees[mapping[split]])) for split, frame in frames.items()}, (["text"], "label")
    raise PipelineError(
        f"{path}: found no train.* file and no <split>/<label>/*.txt folders; "
        f"download.source takes {SUPPORTED} with train and test files or folders"
    )


def load_hf(params: DownloadParams) -> dict[str, tuple[pd.DataFrame, str]]:
    """Load a Hugging Face dataset through `datasets.load_dataset` (Hub id or local folder)."""
    import datasets

    name = params.source.removeprefix("hf:")
    try:
        loaded = datasets.load_dataset(name, params.hf_config)
    except Exception as exc:  # datasets raises many types (hub, network, builder); all mean "cannot load"
        raise PipelineError(
            f"could not load Hugging Face dataset {name!r}: {first_line(exc)}; check the id and network, "
            "or set download.source to a local file or folder"
        ) from None
    mapping = match_splits(list(loaded.keys()), params.splits, params.source)
    frames = {}
    for ours, theirs in mapping.items():
        dataset = loaded[theirs]
        where = f"{params.source} split {theirs!r}"
        frame = dataset.to_pandas()
        feature = dataset.features.get(params.label_column)
        if isinstance(feature, datasets.ClassLabel) and params.label_names is None:
            # ClassLabel stores ids; its names are the classes. -1 means "unlabelled".
            frame[params.label_column] = [feature.int2str(int(i)) if i >= 0 else None for i in frame[params.label_column]]
        frames[ours] = (frame, where)
    return frames


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
            f"{where}: no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, frame.columns))}); "
            "set download.text_columns and download.label_column, or download.column_names for a headerless file"
        )
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
                f"{where}: labels {', '.join(map(repr, unknown[:10]))} have no entry in download.label_names "
                f"(it maps {', '.join(map(repr, label_names))})"
            )
        labels = labels.map(label_names)
    return pd.DataFrame({"text": text.to_numpy(dtype=object), "label": labels.to_numpy(dtype=object)})


def check_classes(train: pd.DataFrame) -> None:
    classes = train["label"].unique()
    if len(classes) < 2:
        raise PipelineError(
            f"train has {len(classes)} class ({', '.join(map(str, classes))}); a classifier needs at least two: "
            "check download.label_column"
        )


def check_labels_known(frames: dict[str, pd.DataFrame]) -> None:
    known = set(frames["train"]["label"])
    for split in ("validation", "test"):
        unseen = sorted(set(frames[split]["label"]) - known)
        if unseen:
            raise PipelineError(
                f"{split} has labels that train does not have: {', '.join(map(repr, unseen[:10]))}; "
                "fix the source's labels or download.label_names"
            )


def stratified_pick(labels: pd.Series, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of `n` rows drawn so each class keeps its share (largest remainder)."""
    classes, inverse, counts = np.unique(labels.to_numpy(dtype=str), return_inverse=True, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(int)
    shortfall = n - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:shortfall]] += 1
    picked = [rng.choice(np.flatnonzero(inverse == c), quota[c], replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(picked))


def carve(frame: pd.DataFrame, fraction: float, rng: np.random.Generator, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a stratified, seeded share of `frame` as split `name`."""
    n = round(len(frame) * fraction)
    if n < 1 or n >= len(frame):
        raise PipelineError(
            f"cannot carve a {name} split of {fraction:.0%} from {len(frame)} train rows; "
            f"give more rows or change download.{name}_fraction"
        )
    held = np.zeros(len(frame), dtype=bool)
    held[stratified_pick(frame["label"], n, rng)] = True
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def write_split(frame: pd.DataFrame, path: Path) -> None:
    table = pa.table(
        {"text": pa.array(frame["text"].tolist(), pa.string()), "label": pa.array(frame["label"].tolist(), pa.string())}
    )
    pq.write_table(table, path, compression="zstd")


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


def data_report(frames: dict[str, pd.DataFrame], dropped: dict[str, int], source: str) -> dict:
    report: dict = {"source": source, "classes": sorted(frames["train"]["label"].unique().tolist())}
    for split in SPLITS:
        frame = frames[split]
        counts = frame["label"].value_counts()
        report[split] = {
            "rows": len(frame),
            "empty_dropped": dropped[split],
            "classes": {label: int(counts.get(label, 0)) for label in report["classes"]},
            "chars": percentiles(frame["text"].str.len().to_numpy()),
            "words": percentiles(words := frame["text"].str.split().str.len().to_numpy()),
            "words_histogram": length_histogram(words),
        }
    train_texts = frames["train"]["text"]
    report["train_duplicates"] = int(train_texts.duplicated().sum())
    report["train_test_overlap"] = int(frames["test"]["text"].isin(set(train_texts)).sum())
    return report
