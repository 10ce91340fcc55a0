"""Reading a download source into frames by split: a local file, folder or archive, an
http(s) URL, or a Hugging Face dataset (hf:<id>, a Hub id or a local dataset folder)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from pipeline.data.archives import ArchiveFolder, read_archive
from pipeline.data.fetch import check_sha256, download_url, folder_sha256, is_archive, is_url
from pipeline.data.readers import SUPPORTED, TABLE_FORMATS, TEXT_TABLES, match_splits, read_table, read_tree, table_files, table_format, tree_splits
from pipeline.errors import PipelineError, clip, first_line, warn
from pipeline.files import sha256_of
from pipeline.params import DownloadParams

SINGLE_FILE = "all"  # the one "split" a single-file source has before we split it
READABLE = (*TABLE_FORMATS, ".txt")  # the files of a local folder that its provenance hash covers


Sourced = dict[str, tuple[pd.DataFrame, str]]  # split -> (frame, where it came from, for messages)


class Loaded(NamedTuple):
    splits: Sourced
    columns: tuple[list[str], str]  # (text columns, label column) to use
    provenance: dict  # source_sha256 and source_revision: what exactly was read


def load_source(params: DownloadParams, scratch: Path) -> Loaded:
    """Read the source into frames by split, with the columns to use and what exactly was read."""
    columns = (params.text_columns, params.label_column)
    if params.source.startswith("hf:"):  # params.py has refused sha256 for hf: and revision for the rest
        splits, provenance = load_hf(params)
        return Loaded(splits, columns, provenance)
    downloaded = None
    if is_url(params.source):
        fetched = download_url(params.source, scratch, params.sha256)
        path, digest, downloaded = fetched.path, fetched.sha256, fetched.path
        if not fetched.length_known and params.sha256 is None:
            check_not_cut(path, params.source, digest)
    else:
        path = Path(params.source).expanduser()
        if not path.exists():
            raise PipelineError(
                f"download.source {clip(repr(params.source), 200)} does not exist; give a local file, folder or archive, "
                "an http(s) URL, or hf:<dataset id>"
            )
        if params.sha256 is not None and not path.is_file():
            raise PipelineError("download.sha256 applies to a file, but download.source is a folder; remove it")
        digest = sha256_of(path) if path.is_file() else folder_sha256(path, READABLE)
        check_sha256(digest, params.sha256, str(path))
    provenance = {"source_sha256": digest, "source_revision": None}
    if path.is_file() and is_archive(path):
        path = read_archive(path, params.max_unpacked_bytes)  # in memory, a folder to the readers

    def name_of(where: Path | ArchiveFolder) -> str:
        """How messages call a path: the user's source, or `source:member` inside an archive."""
        if isinstance(where, ArchiveFolder):
            member = where.member.as_posix()
            return params.source if member == "." else f"{params.source}:{member}"
        return params.source if where == downloaded else str(where)

    if path.is_file():
        frame = read_table(path, params.encoding, params.column_names, name_of, params.tsv_quoting)
        return Loaded({SINGLE_FILE: (frame, name_of(path))}, columns, provenance)
    tables = table_files(path, name_of)
    if tables:
        mapping = match_splits(list(tables), params.splits, name_of(path))
        splits = {
            ours: (read_table(tables[theirs], params.encoding, params.column_names, name_of, params.tsv_quoting), name_of(tables[theirs]))
            for ours, theirs in mapping.items()
        }
        return Loaded(splits, columns, provenance)
    trees = tree_splits(path)
    if trees:
        mapping = match_splits(list(trees), params.splits, name_of(path))
        frames = read_tree({ours: trees[theirs] for ours, theirs in mapping.items()}, params.encoding, name_of)
        splits = {split: (frame, name_of(trees[mapping[split]])) for split, frame in frames.items()}
        return Loaded(splits, (["text"], "label"), provenance)
    raise PipelineError(
        f"{name_of(path)}: found no train.* file and no <split>/<label>/*.txt folders; "
        f"download.source takes {SUPPORTED} with train and test files or folders"
    )


def check_not_cut(path: Path, url: str, digest: str) -> None:
    """Without Content-Length a cut transfer looks complete: a text table that stops mid-row is
    refused; anything else is accepted with a warning that gives the checksum to pin."""
    if table_format(path) in TEXT_TABLES and path.stat().st_size > 0:
        with path.open("rb") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                raise PipelineError(
                    f"download of {url} was probably cut short: the server sent no Content-Length and the file "
                    f"ends mid-row; try again, or if the file is complete accept it with download.sha256: {digest}"
                )
    warn(
        f"{url} sent no Content-Length and download.sha256 is not set: a cut transfer cannot be "
        f"detected; pin it with download.sha256: {digest}"
    )


def load_hf(params: DownloadParams) -> tuple[Sourced, dict]:
    """Load a Hugging Face dataset (Hub id or local folder) with `datasets`, and what exactly was read."""
    import datasets
    import datasets.exceptions

    name = params.source.removeprefix("hf:")
    local = Path(name).expanduser()
    if local.exists() and params.revision is not None:
        raise PipelineError(f"download.revision applies to Hub datasets, but {clip(name, 200)} is a local folder; remove it")
    datasets.disable_progress_bars()  # stderr is for the one-line error; the stage reports when it is done
    try:
        # load_dataset's own three steps, so that the builder's hash (the Hub commit read) is at hand
        builder = datasets.load_dataset_builder(name, params.hf_config, revision=params.revision)
        builder.download_and_prepare()
        loaded = builder.as_dataset()
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:  # the Hub or network (OSError), a config, the files
        raise PipelineError(
            f"could not load Hugging Face dataset {clip(repr(name), 200)}: {clip(first_line(exc), 300)}; check the id, "
            "download.revision and the network, or set download.source to a local file or folder"
        ) from None
    if local.exists():  # a folder has no commit: its files' hash says what was read
        provenance = {"source_sha256": folder_sha256(local, None), "source_revision": None}
    else:
        commit = builder.hash if isinstance(builder.hash, str) and len(builder.hash) == 40 else None
        provenance = {"source_sha256": None, "source_revision": commit}
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
        inner = getattr(feature, "feature", None)  # a Sequence (or List) of ClassLabel: multi-label ids
        if isinstance(inner, datasets.ClassLabel) and params.label_names is None:
            frame[params.label_column] = [[inner.int2str(int(i)) for i in ids if i >= 0] for ids in frame[params.label_column]]
        frames[ours] = (frame, where)
    return frames, provenance
