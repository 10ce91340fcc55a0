"""`download` stage: any supported source -> data/raw/{train,validation,test}.parquet.

Each split has two string columns, `text` and `label` (the class name), and
reports/data.json describes them, with where they came from (`source_sha256`,
`source_revision`) and the duplicates that were dropped. The parts live in pipeline/data/:
sources (what to read), columns (text and label), dedup, splitting, summary, raw (the format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.columns import read_label_names, to_text_label
from pipeline.data.dedup import deduplicate
from pipeline.data.raw import SPLITS, split_path, write_split
from pipeline.data.readers import INVALID_UNICODE
from pipeline.data.sources import SINGLE_FILE, load_source
from pipeline.data.splitting import carve, check_classes, check_labels_known, stratified_pick
from pipeline.data.summary import data_report
from pipeline.errors import PipelineError
from pipeline.files import scratch_dir, stage_outputs
from pipeline.params import DownloadParams
from pipeline.paths import DATA_REPORT, RAW_DIR


def run_download(params: DownloadParams, out_dir: Path = RAW_DIR, report_path: Path = DATA_REPORT) -> dict:
    """Fetch, read, clean, de-duplicate and split the source; write the splits and the data report."""
    # Downloads go next to the output: same disk, and swept by the next run if killed.
    label_names = read_label_names(params.label_names)
    with scratch_dir(out_dir, "download") as scratch:
        loaded = load_source(params, scratch)
        frames = {split: to_text_label(frame, params, loaded.columns, label_names, where) for split, (frame, where) in loaded.splits.items()}
    frames, cleaning = clean(frames, {split: where for split, (_, where) in loaded.splits.items()})
    if SINGLE_FILE in frames:
        frames["train"] = frames.pop(SINGLE_FILE)
        cleaning["train"] = cleaning.pop(SINGLE_FILE)
    # Before any carving, so that no duplicate can straddle a split we make.
    frames, duplicates = deduplicate(frames, params.dedup)
    check_classes(frames["train"]["label"])
    frames = complete_splits(frames, params, np.random.default_rng(params.seed))
    fix = "fix the source's labels or download.label_names"
    if params.max_rows is not None:
        fix = f"download.max_rows keeps {params.max_rows:,} rows per split, too few for {frames['train']['label'].nunique()} classes: raise it"
    check_labels_known({split: frame["label"] for split, frame in frames.items()}, fix)

    report = data_report(frames, {split: cleaning.get(split, {"empty_dropped": 0, INVALID_UNICODE: 0}) for split in SPLITS}, params.source)
    report = {"source": params.source, **loaded.provenance, **report, "duplicates": duplicates}
    with stage_outputs() as outputs:
        staging = outputs.folder(out_dir)
        for split in SPLITS:
            write_split(frames[split], split_path(staging, split))
        outputs.json(report_path, report)
    return report


def clean(frames: dict[str, pd.DataFrame], wheres: dict[str, str]) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, int]]]:
    """The frames without rows whose text is empty or blank; per split, how many rows that
    dropped and how many invalid characters reading replaced by U+FFFD (readers.py: the rule
    for text that is not valid Unicode)."""
    kept, counts = {}, {}
    for split, frame in frames.items():
        if frame.empty:
            raise PipelineError(f"{wheres[split]} has no rows (a header alone?); give it labelled rows")
        empty = frame["text"].str.strip() == ""
        if empty.all():
            raise PipelineError(f"all {len(frame):,} texts in {wheres[split]} are empty; check download.text_columns")
        kept[split] = frame[~empty].reset_index(drop=True)
        counts[split] = {"empty_dropped": int(empty.sum()), INVALID_UNICODE: int(frame.attrs.get(INVALID_UNICODE, 0))}
    return kept, counts


def complete_splits(frames: dict[str, pd.DataFrame], params: DownloadParams, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Carve the splits the source lacks from train (test first), then cut each to max_rows."""
    frames = dict(frames)
    if "test" not in frames:
        frames["train"], frames["test"] = carve(frames["train"], params.test_fraction, rng, "test")
    if "validation" not in frames:
        frames["train"], frames["validation"] = carve(frames["train"], params.validation_fraction, rng, "validation")
    if params.max_rows is not None:
        for split in SPLITS:
            if len(frames[split]) > params.max_rows:
                frames[split] = frames[split].iloc[stratified_pick(frames[split]["label"], params.max_rows, rng)]
    return frames
