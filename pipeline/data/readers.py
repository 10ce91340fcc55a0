"""Reading labelled text from files and folders into DataFrames.

Formats: CSV, TSV, JSON Lines, Parquet, and a folder tree <split>/<label>/*.txt.
Text is decoded by us, not by pandas, so an undecodable byte is reported with
its file and line. Messages name files through `name_of`, so that a file
read from an archive (archives.py) is called `archive.tar.gz:member`, never by the
temporary path it was read from.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from typing import TYPE_CHECKING

from pipeline.errors import PipelineError, clip, listed, warn
from pipeline.params import SplitNames
from pipeline.text.settings import valid_unicode

if TYPE_CHECKING:  # pandas loads only where a table is read: predict streams without it (~90 MB less)
    import pandas as pd

INVALID_UNICODE = "invalid_unicode_replaced"  # a frame's attrs key: characters replaced by U+FFFD while reading
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
VALIDATION_ALIASES = ("validation", "valid", "val", "dev")
TEXT_TABLES = ("csv", "tsv", "jsonl")  # formats whose rows end in a newline
SUPPORTED = "CSV (.csv), TSV (.tsv), JSON Lines (.jsonl), Parquet (.parquet), an archive (.tar.gz, .tgz, .zip) or a folder"


def table_format(path: Path) -> str | None:
    return TABLE_FORMATS.get(path.suffix.lower())


NameOf = Callable[[Path], str]  # a path -> how messages call it


def decode(path: Path, encoding: str, name_of: NameOf = str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PipelineError(
            f"{name_of(path)}: line {line} is not valid {encoding} ({exc.reason}); "
            "set download.encoding to the file's encoding (e.g. latin-1 or cp1252)"
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the first column's name


def read_table(
    path: Path, encoding: str = "utf-8", column_names: list[str] | None = None, name_of: NameOf = str, tsv_quoting: str = "none"
) -> pd.DataFrame:
    """Read one table file; every column comes back as strings except in Parquet. TSV is read
    unquoted (the format's standard), or with CSV-style double quotes (`tsv_quoting` "csv")."""
    import pandas as pd

    name = name_of(path)
    fmt = table_format(path)
    if fmt is None:
        raise PipelineError(f"{name}: unknown format {clip(path.suffix) or '(no suffix)'!r}; supported: {SUPPORTED}")
    if fmt == "parquet":
        import pyarrow

        try:  # a member of an archive is read from memory
            return pd.read_parquet(path if isinstance(path, Path) else io.BytesIO(path.read_bytes()))
        except (pyarrow.ArrowException, OSError) as exc:
            why = str(exc).replace(str(path), name)  # pyarrow quotes the path it read, maybe a temporary one
            raise PipelineError(f"{name}: not a readable Parquet file ({clip(why, 300)})") from None
    text = decode(path, encoding, name_of)
    if fmt == "jsonl":
        return _read_jsonl(name, text)
    csv_options = {
        "sep": "\t" if fmt == "tsv" else ",",
        "dtype": str,
        "keep_default_na": False,  # "NA" or "null" in a review is text, not a missing value
        "index_col": False,
        "quoting": csv.QUOTE_NONE if fmt == "tsv" and tsv_quoting == "none" else csv.QUOTE_MINIMAL,
    }
    try:
        if column_names is None:
            # pandas renames a repeated header name to 'text.1' without a word: read the header as data first
            header = pd.read_csv(io.StringIO(text), header=None, nrows=1, **csv_options)
            header_names = Counter(header.iloc[0].tolist())
            repeated = [column for column, count in header_names.items() if count > 1 and column != ""]  # blank ones become 'Unnamed: n'
            if repeated:
                raise PipelineError(
                    f"{name}: the header names column {listed(repeated, quote=True)} more than once; "
                    "give every column a unique name in the file"
                )
        frame = pd.read_csv(
            io.StringIO(text), header=None if column_names else "infer", names=column_names, **csv_options
        )
    except pd.errors.EmptyDataError:
        raise PipelineError(f"{name}: the file is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        hint = "; check download.column_names" if column_names else ""
        raise PipelineError(f"{name}: cannot parse as {fmt.upper()}: {clip(str(exc).strip(), 300)}{hint}") from None
    return frame


def _read_jsonl(name: str, text: str) -> pd.DataFrame:
    import pandas as pd

    records, replaced, first = [], 0, None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{name}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise PipelineError(f"{name}: line {number} is not a JSON object")
        for key, value in record.items():  # a JSON escape can hold a lone surrogate, which no file or tokenizer takes
            if isinstance(value, str):
                record[key], count = valid_unicode(value)
                replaced, first = replaced + count, first or (number if count else None)
        records.append(record)
    if not records:
        raise PipelineError(f"{name}: the file is empty")
    if replaced:
        warn(f"{name}: replaced {replaced:,} invalid characters (lone surrogates from JSON escapes, the first on line {first}) with U+FFFD")
    frame = pd.DataFrame.from_records(records)
    frame.attrs[INVALID_UNICODE] = replaced
    return frame


def match_splits(available: list[str], names: SplitNames, where: str) -> dict[str, str]:
    """Map our split names to the source's: train is required, validation and test optional."""
    found: dict[str, str] = {}
    if names.train not in available:
        raise PipelineError(
            f"no {clip(repr(names.train))} split in {where} (found: {listed(sorted(available)) or 'nothing'}); "
            "set download.splits.train or give a train file/folder"
        )
    found["train"] = names.train
    if names.test in available:
        found["test"] = names.test
    elif names.test != "test":
        raise PipelineError(f"no {clip(repr(names.test))} split in {where}; fix download.splits.test")
    if names.validation is not None:
        if names.validation not in available:
            raise PipelineError(f"no {clip(repr(names.validation))} split in {where}; fix download.splits.validation")
        found["validation"] = names.validation
    else:
        alias = next((a for a in VALIDATION_ALIASES if a in available), None)
        if alias is not None:
            found["validation"] = alias
    return found


def table_files(folder: Path, name_of: NameOf = str) -> dict[str, Path]:
    """Files in `folder` that we can read, by stem: {'train': .../train.csv, ...}."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and table_format(path) is not None:
            if path.stem in files:
                raise PipelineError(f"{name_of(folder)}: both {clip(files[path.stem].name)} and {clip(path.name)}; keep one")
            files[path.stem] = path
    return files


def tree_splits(folder: Path) -> dict[str, Path]:
    """Sub-folders of `folder` that hold <label>/*.txt folders."""
    return {
        sub.name: sub
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and any(label.is_dir() and any(label.glob("*.txt")) for label in sub.iterdir())
    }


def read_tree(split_dirs: dict[str, Path], encoding: str, name_of: NameOf = str) -> dict[str, pd.DataFrame]:
    """Read <split>/<label>/*.txt; label folders are those present in every split
    (so IMDB's train/unsup, which has no test counterpart, is left out)."""
    import pandas as pd

    label_sets = [
        {label.name for label in folder.iterdir() if label.is_dir() and any(label.glob("*.txt"))}
        for folder in split_dirs.values()
    ]
    labels = sorted(set.intersection(*label_sets))
    if not labels:
        raise PipelineError(
            f"no label folder is present in every split ({listed(name_of(p) for p in split_dirs.values())}); "
            "expected <split>/<label>/*.txt"
        )
    frames = {}
    for split, folder in split_dirs.items():
        texts, names = [], []
        for label in labels:
            for path in sorted((folder / label).glob("*.txt")):
                texts.append(decode(path, encoding, name_of))
                names.append(label)
        frames[split] = pd.DataFrame({"text": texts, "label": names})
    return frames


# --- streaming: texts of one file or stream, record by record (for `predict`) ----------------
# The same formats, decoding, byte-order mark and quoting as read_table above, but one record
# at a time in bounded memory, with the line number of every record for error messages.

STREAM_FIELD_LIMIT = 2**31 - 1  # csv's default limit (131,072 characters) would refuse a long review


def decoded_lines(stream, where: str, encoding: str, on_bad=None):
    """(line number, line with its "\\n") from a binary stream, decoded incrementally. An
    undecodable line raises a PipelineError naming it, or, given `on_bad`, is passed to it
    and skipped. A leading byte-order mark is dropped, as `decode` does."""
    import codecs

    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError:
        raise PipelineError(f"unknown encoding {encoding!r}; pass --encoding NAME (e.g. utf-8, latin-1, cp1252)") from None
    number, pending, first = 0, "", True
    for raw in stream:
        try:
            text = decoder.decode(raw)
        except UnicodeDecodeError as exc:
            message = f"{where}: line {number + 1} is not valid {encoding} ({exc.reason}); pass --encoding with the file's encoding (e.g. latin-1 or cp1252)"
            if on_bad is None:
                raise PipelineError(message) from None
            on_bad(message)
            decoder.reset()
            number += raw.count(b"\n") or 1
            pending = ""
            continue
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        pending += text
        if "\n" in pending:
            *lines, pending = pending.split("\n")
            for line in lines:
                number += 1
                yield number, line + "\n"
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        message = f"{where}: line {number + 1} is not valid {encoding} ({exc.reason}); pass --encoding with the file's encoding"
        if on_bad is None:
            raise PipelineError(message) from None
        on_bad(message)
        pending = ""
    if pending:
        yield number + 1, pending


def stream_records(stream, where: str, fmt: str | None, column: str, encoding: str = "utf-8", on_bad=None):
    """(line number, text) for each record of a binary stream: `column` of a CSV/TSV with a
    header (fmt "csv"/"tsv"), `column` field of JSON Lines ("jsonl"), else one text per line
    (an empty line is an empty text). A bad record raises a PipelineError with its line number,
    or, given `on_bad(message)`, is reported to it and skipped."""

    def bad(message: str) -> None:
        if on_bad is None:
            raise PipelineError(message)
        on_bad(message)

    lines = decoded_lines(stream, where, encoding, on_bad)
    if fmt == "parquet":
        raise PipelineError(f"{where}: Parquet is not streamed; pass CSV, TSV, JSON Lines or one text per line")
    if fmt == "jsonl":
        for number, line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(f"{where}: line {number} is not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                bad(f"{where}: line {number} is not a JSON object")
            elif not isinstance(record.get(column), str):
                bad(f"{where}: line {number} has no string field {column!r}; pass --column NAME")
            else:
                yield number, record[column]
        return
    if fmt in ("csv", "tsv"):
        csv.field_size_limit(STREAM_FIELD_LIMIT)
        numbered = iter(lines)
        current = [0]

        def texts():
            for number, line in numbered:
                current[0] = number
                yield line

        reader = csv.reader(
            texts(), delimiter="\t" if fmt == "tsv" else ",", quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        )
        try:
            header = next(reader, None)
            if header is None:
                raise PipelineError(f"{where}: the file is empty")
            if column not in header:
                raise PipelineError(f"{where} has no column {column!r} (columns: {', '.join(header) or 'none'}); pass --column NAME")
            index, width = header.index(column), len(header)
            while True:
                start = current[0] + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    bad(f"{where}: line {start} cannot be parsed as {fmt.upper()} ({exc})")
                    continue
                if not row:
                    continue  # a blank line, which pandas skips too
                if len(row) != width:
                    bad(f"{where}: line {start} has {len(row)} fields, the header has {width}")
                    continue
                yield start, row[index]
        except csv.Error as exc:
            raise PipelineError(f"{where}: malformed {fmt.upper()} ({exc})") from None
        return
    for number, line in lines:
        yield number, line.removesuffix("\n").removesuffix("\r")
