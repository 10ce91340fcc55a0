"""The download stage: every source kind and layout, and every bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_user_error, labelled_rows, needs_shared, invoke, run_cli, write_csv, write_params, write_tree

from pipeline.stages.download import run_download
from pipeline.errors import PipelineError
from pipeline.params import DownloadParams


def download(tmp_path: Path, **params) -> tuple[dict, dict[str, pd.DataFrame]]:
    report = run_download(DownloadParams(**params), tmp_path / "raw", tmp_path / "data.json")
    frames = {split: pd.read_parquet(tmp_path / "raw" / f"{split}.parquet") for split in ("train", "validation", "test")}
    assert json.loads((tmp_path / "data.json").read_text()) == report
    return report, frames


def rows(report: dict) -> dict[str, int]:
    return {split: report[split]["rows"] for split in ("train", "validation", "test")}


def test_folder_of_train_and_test_csv_needs_only_the_source(tmp_path):
    write_csv(tmp_path / "src" / "train.csv", labelled_rows(100))
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(40, offset=500))
    report, frames = download(tmp_path, source=str(tmp_path / "src"))
    assert rows(report) == {"train": 90, "validation": 10, "test": 40}
    assert report["classes"] == ["neg", "pos"]
    assert report["validation"]["classes"] == {"neg": 5, "pos": 5}  # stratified
    assert list(frames["train"].columns) == ["text", "label"]
    assert frames["train"]["text"].map(type).eq(str).all()
    # nothing lost or duplicated between train and validation
    carved = pd.concat([frames["train"], frames["validation"]])["text"]
    assert sorted(carved) == sorted(t for t, _ in labelled_rows(100))


def test_validation_file_is_used_when_present(tmp_path):
    write_csv(tmp_path / "src" / "train.csv", labelled_rows(50))
    write_csv(tmp_path / "src" / "dev.csv", labelled_rows(8, offset=300))
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(10, offset=500))
    report, _ = download(tmp_path, source=str(tmp_path / "src"))
    assert rows(report) == {"train": 50, "validation": 8, "test": 10}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_single_file_is_split_three_ways(tmp_path, fmt):
    frame = pd.DataFrame(labelled_rows(200), columns=["text", "label"])
    path = tmp_path / f"all.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    report, frames = download(tmp_path, source=str(path), test_fraction=0.2, validation_fraction=0.25)
    assert rows(report) == {"train": 120, "validation": 40, "test": 40}
    assert sorted(pd.concat(frames.values())["text"]) == sorted(frame["text"])


def test_headerless_csv_with_joined_columns_and_label_names(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("".join(f'"{1 + i % 4}","Title {i}","Body {i}"\n' for i in range(80)), encoding="utf-8")
    report, frames = download(
        tmp_path,
        source=str(path),
        column_names=["label", "title", "description"],
        text_columns=["title", "description"],
        label_names={1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"},
    )
    assert report["classes"] == ["Business", "Sci/Tech", "Sports", "World"]
    row = pd.concat(frames.values()).set_index("text").loc["Title 5 Body 5"]
    assert row["label"] == "Sports"


def test_tree_layout_ignores_labels_missing_from_a_split(tmp_path):
    write_tree(tmp_path / "imdbish", {"train": 30, "test": 20}, extra_labels={"train": "unsup"})
    report, _ = download(tmp_path, source=str(tmp_path / "imdbish"))
    assert report["classes"] == ["neg", "pos"]
    assert report["train"]["rows"] + report["validation"]["rows"] == 30
    assert report["test"]["rows"] == 20


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archives_are_extracted(tmp_path, kind):
    write_tree(tmp_path / "src" / "reviews", {"train": 30, "test": 20})
    archive = tmp_path / f"reviews.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted((tmp_path / "src").rglob("*.txt")):
                zf.write(path, path.relative_to(tmp_path / "src"))
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "src" / "reviews", arcname="reviews")
    report, _ = download(tmp_path, source=str(archive))
    assert report["test"]["rows"] == 20


def test_max_rows_takes_a_stratified_seeded_sample(tmp_path):
    write_csv(tmp_path / "src" / "train.csv", labelled_rows(300))
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(100, offset=1000))
    report, frames = download(tmp_path, source=str(tmp_path / "src"), max_rows=20)
    assert rows(report) == {"train": 20, "validation": 20, "test": 20}
    assert report["train"]["classes"] == {"neg": 10, "pos": 10}
    _, again = download(tmp_path / "again", source=str(tmp_path / "src"), max_rows=20)
    assert frames["train"].equals(again["train"])
    _, other = download(tmp_path / "other", source=str(tmp_path / "src"), max_rows=20, seed=7)
    assert not frames["train"].equals(other["train"])


def test_report_counts_duplicates_overlap_and_empty_texts_when_dedup_is_off(tmp_path):
    train = labelled_rows(40) + [("a great film, truly wonderful number 0", "pos"), ("   ", "neg")]
    write_csv(tmp_path / "src" / "train.csv", train)
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(10, offset=100) + [labelled_rows(1)[0]])
    report, frames = download(tmp_path, source=str(tmp_path / "src"), dedup=False)
    assert report["train"]["empty_dropped"] == 1
    assert report["train_duplicates"] == 1
    assert report["train_test_overlap"] == 1
    assert report["test"]["words"]["max"] == 7
    assert rows(report)["test"] == 11  # found, not dropped
    assert report["duplicates"] == {
        "dropped": False, "train_within": 1, "validation_within": 0, "test_within": 0,
        "train_in_test": 1, "validation_in_test": 0, "train_in_validation": 0, "conflicting_labels": 0,
    }  # fmt: skip


def test_dedup_judges_normalized_text_within_and_across_splits(tmp_path):
    unique = labelled_rows(40)
    train = unique + [
        ("Great film<br />truly", "pos"), ("great   FILM truly", "pos"),  # repeat within train, once normalized
        ("seen in test", "neg"), ("seen in validation", "pos"),
        ("said both ways", "pos"),  # test says neg: a conflicting label
    ]
    validation = labelled_rows(8, offset=300) + [("Seen in <i>validation</i>", "pos"), ("SEEN IN TEST", "neg")]
    test = labelled_rows(10, offset=500) + [("seen in test", "neg"), (" seen  in test ", "neg"), ("Said both ways", "neg")]
    write_csv(tmp_path / "src" / "train.csv", train)
    write_csv(tmp_path / "src" / "dev.csv", validation)
    write_csv(tmp_path / "src" / "test.csv", test)
    report, frames = download(tmp_path, source=str(tmp_path / "src"))
    assert report["duplicates"] == {
        "dropped": True, "train_within": 1, "validation_within": 0, "test_within": 1,
        "train_in_test": 2, "validation_in_test": 1, "train_in_validation": 1, "conflicting_labels": 1,
    }  # fmt: skip
    assert rows(report) == {"train": 41, "validation": 9, "test": 12}
    assert report["train_duplicates"] == report["train_test_overlap"] == 0
    assert "Great film<br />truly" in set(frames["train"]["text"])  # the first occurrence stays
    assert "seen in test" in set(frames["test"]["text"])
    keys = {split: set(frame["text"].str.lower().str.split().str.join(" ")) for split, frame in frames.items()}
    assert not keys["train"] & keys["test"] and not keys["validation"] & keys["test"] and not keys["train"] & keys["validation"]


def test_single_file_is_deduplicated_before_it_is_split(tmp_path):
    texts = labelled_rows(100)
    path = write_csv(tmp_path / "all.csv", texts + [(text.upper(), label) for text, label in texts])
    report, frames = download(tmp_path, source=str(path))
    assert sum(rows(report).values()) == 100
    assert report["duplicates"]["train_within"] == 100
    assert report["train_duplicates"] == report["train_test_overlap"] == 0
    everything = pd.concat(frames.values())["text"].str.lower()
    assert not everything.duplicated().any()  # no duplicate straddles the carved splits


def test_dedup_at_imdb_size(tmp_path):
    from pipeline.data.dedup import deduplicate

    words = [f"word{i}" for i in range(500)]
    # 50,000 reviews of 100 words; the last 5,000 (in test) repeat the first 5,000 (in train)
    texts = pd.Series([" ".join(words[(k * 7) % 400 : (k * 7) % 400 + 100]) + f" <br />{k}" for k in (i % 45_000 for i in range(50_000))])
    frames = {"train": pd.DataFrame({"text": texts[:25_000], "label": "pos"}), "test": pd.DataFrame({"text": texts[25_000:].reset_index(drop=True), "label": "neg"})}
    _, counts = deduplicate(frames, drop=True)  # vectorized: ~1 s here (tests are not timed)
    assert counts["train_in_test"] == 5_000 and counts["test_within"] == 0


def test_provenance_of_local_file_folder_and_url(tmp_path, http_server):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(50))
    report, _ = download(tmp_path / "file", source=str(path))
    assert report["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["source_revision"] is None

    write_csv(tmp_path / "src" / "train.csv", labelled_rows(50))
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(10, offset=100))
    first, _ = download(tmp_path / "folder1", source=str(tmp_path / "src"))
    (tmp_path / "src" / ".DS_Store").write_bytes(b"junk")  # hidden files are not data
    again, _ = download(tmp_path / "folder2", source=str(tmp_path / "src"))
    assert first["source_sha256"] == again["source_sha256"] and len(first["source_sha256"]) == 64
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(11, offset=100))
    changed, _ = download(tmp_path / "folder3", source=str(tmp_path / "src"))
    assert changed["source_sha256"] != first["source_sha256"]

    base, www = http_server
    data = write_csv(www / "reviews.csv", labelled_rows(50)).read_bytes()
    fetched, _ = download(tmp_path / "url", source=f"{base}/reviews.csv")
    assert fetched["source_sha256"] == hashlib.sha256(data).hexdigest()


def test_hf_source_goes_through_datasets(tmp_path):
    """`hf:` with a local folder: the real datasets.load_dataset path, no network."""
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    pd.DataFrame(labelled_rows(60), columns=["text", "label"]).to_parquet(folder / "train.parquet")
    pd.DataFrame(labelled_rows(20, offset=100), columns=["text", "label"]).to_parquet(folder / "test.parquet")
    report, _ = download(tmp_path, source=f"hf:{folder}")
    assert rows(report) == {"train": 54, "validation": 6, "test": 20}
    # a local folder has no commit: its files' hash records what was read
    assert report["source_revision"] is None and len(report["source_sha256"]) == 64


def test_hf_class_labels_become_names(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    folder = tmp_path / "hub_copy"
    for split, n, offset in (("train", 40, 0), ("test", 10, 100)):
        texts, labels = zip(*labelled_rows(n, offset))
        ids = [1 if label == "pos" else 0 for label in labels]
        datasets.Dataset.from_dict({"text": list(texts), "label": ids}, features=features).to_parquet(str(folder / f"{split}.parquet"))
    report, _ = download(tmp_path, source=f"hf:{folder}")
    assert report["classes"] == ["neg", "pos"]


def test_http_download_with_checksum(tmp_path, http_server):
    base, www = http_server
    data = write_csv(www / "reviews.csv", labelled_rows(50)).read_bytes()
    report, _ = download(tmp_path, source=f"{base}/reviews.csv", sha256=hashlib.sha256(data).hexdigest())
    assert sum(rows(report).values()) == 50


def test_http_download_without_content_length_warns_with_the_checksum_to_pin(tmp_path, http_server):
    base, www = http_server
    data = write_csv(www / "reviews.csv", labelled_rows(50)).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    write_params(tmp_path, download={"source": f"{base}/nolength/reviews.csv"})
    result = invoke("download", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warning: {base}/nolength/reviews.csv sent no Content-Length and download.sha256 is not set: "
        f"a cut transfer cannot be detected; pin it with download.sha256: {digest}"
    ]
    assert result.stdout.startswith("download: ")
    # pinned, it is quiet
    write_params(tmp_path, download={"source": f"{base}/nolength/reviews.csv", "sha256": digest})
    result = invoke("download", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_http_download_without_content_length_cut_mid_row(tmp_path, http_server):
    base, www = http_server
    write_csv(www / "reviews.csv", labelled_rows(500))
    fails(tmp_path, "probably cut short", "no Content-Length", "download.sha256: ", source=f"{base}/nolength-cut/reviews.csv")


def test_http_archive(tmp_path, http_server):
    base, www = http_server
    write_tree(tmp_path / "src" / "reviews", {"train": 30, "test": 20})
    with tarfile.open(www / "reviews.tgz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "reviews", arcname="reviews")
    report, _ = download(tmp_path, source=f"{base}/reviews.tgz")
    assert report["test"]["rows"] == 20


# --- bad input: one line, exit 1, no traceback, nothing in data/raw ----------------------------


def fails(tmp_path: Path, *fragments: str, **download_params) -> None:
    write_params(tmp_path, download=download_params)
    result = invoke("download", cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / "reports" / "data.json").exists()
    leftovers = list((tmp_path / "data").glob(".*")) if (tmp_path / "data").exists() else []
    assert leftovers == []


def test_missing_source(tmp_path):
    fails(tmp_path, "does not exist", "local file", source=str(tmp_path / "nope.csv"))


def test_http_404(tmp_path, http_server):
    base, _ = http_server
    fails(tmp_path, "HTTP 404", "local path", source=f"{base}/missing.csv")


def test_http_truncated_body(tmp_path, http_server):
    base, www = http_server
    write_csv(www / "reviews.csv", labelled_rows(500))
    fails(tmp_path, "cut short", source=f"{base}/truncated/reviews.csv")


def test_http_unreachable(tmp_path):
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fails(tmp_path, "could not reach", "local path", source=f"http://127.0.0.1:{port}/data.csv")


def test_http_checksum_mismatch(tmp_path, http_server):
    base, www = http_server
    write_csv(www / "reviews.csv", labelled_rows(50))
    fails(tmp_path, "checksum mismatch", "download.sha256", source=f"{base}/reviews.csv", sha256="0" * 64)


def test_local_checksum_mismatch(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(50))
    fails(tmp_path, "checksum mismatch", source=str(path), sha256="a" * 64)


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return archive


def test_archive_entry_escaping_the_folder(tmp_path):
    member = tarfile.TarInfo("../escaped.txt")
    member.size = 4
    fails(tmp_path, "outside the target folder", source=str(_tar_with(tmp_path, member, b"evil")))
    assert not (tmp_path / "escaped.txt").exists()


def test_archive_with_a_link(tmp_path):
    member = tarfile.TarInfo("train/pos/link.txt")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fails(tmp_path, "is a link", source=str(_tar_with(tmp_path, member)))


def test_zip_entry_escaping_the_folder(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped.txt", "evil")
    fails(tmp_path, "outside the target folder", source=str(archive))


def test_corrupt_archive(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 definitely not a tarball")
    fails(tmp_path, "corrupt", source=str(archive))


def test_unknown_format(tmp_path):
    path = tmp_path / "reviews.xlsx"
    path.write_bytes(b"PK")
    fails(tmp_path, "unknown format", ".xlsx", source=str(path))


def test_folder_without_a_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    fails(tmp_path, "no train.* file", source=str(tmp_path / "empty"))


def test_missing_text_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(20), header=("review", "label"))
    fails(tmp_path, "no column 'text'", "columns: review, label", source=str(path))


def test_missing_label_column(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(20))
    fails(tmp_path, "no column 'sentiment'", source=str(path), label_column="sentiment")


def test_all_texts_empty(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", [("", "pos"), (" ", "neg")] * 10)
    fails(tmp_path, "all 20 texts in", "reviews.csv are empty", "download.text_columns", source=str(path))


def test_a_header_without_rows_is_named(tmp_path):
    (tmp_path / "reviews.csv").write_text("text,label\n", encoding="utf-8")
    fails(tmp_path, "reviews.csv has no rows (a header alone?)", source=str(tmp_path / "reviews.csv"))


def test_fewer_than_two_classes(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", [(f"text {i}", "pos") for i in range(20)])
    fails(tmp_path, "at least two", source=str(path))


def test_test_labels_unknown_to_train(tmp_path):
    write_csv(tmp_path / "src" / "train.csv", labelled_rows(20))
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(4) + [("so-so", "meh")])
    fails(tmp_path, "train does not have", "'meh'", source=str(tmp_path / "src"))


def test_missing_labels(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(20) + [("no label here", "")])
    fails(tmp_path, "have no label", "row 21", source=str(path))


def test_label_without_a_name(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", [(f"t {i}", str(i % 3)) for i in range(30)])
    fails(tmp_path, "no entry in download.label_names", "'2'", source=str(path), label_names={0: "a", 1: "b"})


def test_undecodable_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = b"".join(b"fine %d,pos\nmeh %d,neg\n" % (i, i) for i in range(10))  # distinct: repeats would be de-duplicated
    path.write_bytes(b"text,label\ngood,pos\nbad \xff\xfe byte,neg\n" + rows)
    fails(tmp_path, "reviews.csv: line 3", "download.encoding", source=str(path))
    # and the fix works
    write_params(tmp_path, download={"source": str(path), "encoding": "latin-1"})
    assert invoke("download", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("fmt", "value", "kind"), [("jsonl", 5, "int"), ("jsonl", 2.5, "float"), ("jsonl", {"a": 1}, "dict"), ("parquet", ["a", "b"], "list")]
)
def test_text_column_holding_numbers_lists_or_dicts(tmp_path, fmt, value, kind):
    records = [{"text": text, "label": label} for text, label in labelled_rows(20)]
    records[6]["text"] = value
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts = pa.array([r["text"] if isinstance(r["text"], list) else [r["text"]] for r in records], pa.list_(pa.string()))
        pq.write_table(pa.table({"text": texts, "label": [r["label"] for r in records]}), path)
        kind, row = "list", 1  # every row is a list here
    fails(tmp_path, f"{path}: text column 'text' holds {kind} values", f"row {row if fmt == 'parquet' else 7}", source=str(path))


def test_hf_text_column_of_integers(tmp_path):
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    pd.DataFrame({"text": range(30), "label": ["a", "b"] * 15}).to_parquet(folder / "train.parquet")
    fails(tmp_path, "split 'train': text column 'text' holds int values", "row 1", source=f"hf:{folder}")


def test_duplicate_column_names_in_header(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label,text\n" + "".join(f"t{i},{'ab'[i % 2]},u{i}\n" for i in range(20)), encoding="utf-8")
    fails(tmp_path, f"{path}: the header names column 'text' more than once", source=str(path))


def test_duplicate_names_in_column_names(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(20), header=None)
    fails(tmp_path, "download.column_names: names 'text' more than once", source=str(path), column_names=["text", "text"])


def test_error_lines_stay_short_when_the_data_is_huge(tmp_path):
    path = tmp_path / "junk.csv"
    path.write_text(",".join(f"column_{i}_{'x' * 50}" for i in range(40_000)) + "\n" + ",".join("1" * 40_000) + "\n")
    write_params(tmp_path, download={"source": str(path)})
    result = invoke("download", cwd=tmp_path)
    assert_user_error(result, "no column 'text'", "…and 39990 more")
    assert len(result.stderr) < 1100


def test_any_error_line_is_capped(capsys):
    import typer

    from pipeline.cli import reported_errors

    with pytest.raises(typer.Exit), reported_errors():
        raise PipelineError("x" * 5000)
    line = capsys.readouterr().err.strip()
    assert len(line) == len("error: ") + 1000 and line.endswith("x…")


def test_revision_is_only_for_hub_datasets(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(20))
    fails(tmp_path, "download.revision: applies to hf: sources only", source=str(path), revision="main")
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    pd.DataFrame(labelled_rows(20), columns=["text", "label"]).to_parquet(folder / "train.parquet")
    fails(tmp_path, "is a local folder", source=f"hf:{folder}", revision="v1.0")


def _tar_of(tmp_path: Path, files: dict[str, bytes]) -> Path:
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return archive


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"train.csv": b"text,label\nbad \xff byte,pos\n", "test.csv": b"text,label\nok,pos\n"}, "archive.tar.gz:train.csv: line 2"),
        ({"train.csv": b'text,label\n"never closed,pos\n', "test.csv": b"text,label\nok,pos\n"}, "archive.tar.gz:train.csv: cannot parse"),
        ({"reviews/train/pos/1.txt": b"\xff", "reviews/train/neg/1.txt": b"x", "reviews/test/pos/1.txt": b"y"}, "archive.tar.gz:reviews/train/pos/1.txt: line 1"),
        ({"data/train.jsonl": b'{"text": 3, "label": "a"}\n', "data/test.jsonl": b'{"text": "x", "label": "a"}\n'}, "archive.tar.gz:data/train.jsonl: text column"),
    ],
)
def test_errors_inside_an_archive_name_the_member_not_a_temporary_path(tmp_path, files, fragment):
    archive = _tar_of(tmp_path, files)
    write_params(tmp_path, download={"source": str(archive)})
    result = invoke("download", cwd=tmp_path)
    assert_user_error(result, f"{archive}:", fragment)
    assert ".tmp" not in result.stderr and "/tmp/" not in result.stderr.replace(str(tmp_path), "")


def test_errors_in_a_downloaded_file_name_the_url(tmp_path, http_server):
    base, www = http_server
    (www / "reviews.csv").write_bytes(b"text,label\nbad \xff byte,pos\n")
    fails(tmp_path, f"{base}/reviews.csv: line 2", source=f"{base}/reviews.csv")


def test_hf_dataset_that_cannot_be_loaded(tmp_path):
    fails(tmp_path, "could not load Hugging Face dataset", "local file", source=f"hf:{tmp_path / 'no_such_dataset'}")


def test_failure_keeps_no_partial_output_when_outputs_existed(tmp_path):
    """A failed rerun leaves the previous complete output, never a half-written one."""
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(50))
    write_params(tmp_path, download={"source": str(path)})
    assert invoke("download", cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in (tmp_path / "data" / "raw").iterdir())
    write_params(tmp_path, download={"source": str(path), "label_column": "nope"})
    assert invoke("download", cwd=tmp_path).returncode == 1
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == before == [
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]


def test_stage_function_raises_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        run_download(DownloadParams(source=str(tmp_path / "nope")), tmp_path / "raw", tmp_path / "r.json")


# --- the real data -------------------------------------------------------------------------


def test_ag_news_headerless_csv_reads_as_four_named_classes(tmp_path):
    source = needs_shared("ag_news", "test.csv")
    names = (source.parent / "classes.txt").read_text().split()
    report, frames = download(
        tmp_path,
        source=str(source),
        column_names=["label", "title", "description"],
        text_columns=["title", "description"],
        label_names={i + 1: name for i, name in enumerate(names)},
    )
    assert report["classes"] == sorted(["World", "Sports", "Business", "Sci/Tech"])
    assert sum(rows(report).values()) == 7600
    assert report["test"]["classes"] == {name: 380 for name in report["classes"]}


@pytest.mark.slow
def test_imdb_archive(tmp_path):
    source = needs_shared("imdb", "aclImdb.tar.gz")
    report, frames = download(tmp_path, source=str(source))
    assert report["source_sha256"] == "38aa739c37a8b04652f1dfc17cb0f63864e2b65140b6d0629012d4be8085b624"  # SOURCE.md
    # 25,000 reviews per split as distributed; some repeat, within a split and between train and test
    duplicates = report["duplicates"]
    assert (duplicates["train_within"], duplicates["test_within"], duplicates["train_in_test"]) == (98, 201, 123)
    assert report["test"]["rows"] == 25_000 - 201
    assert report["train"]["rows"] + report["validation"]["rows"] == 25_000 - 98 - 123
    assert report["classes"] == ["neg", "pos"]
    assert report["train_duplicates"] == report["train_test_overlap"] == 0


# --- no leftovers: temporary folders of killed runs are swept by the next run ----------------


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped): what a killed run leaves in a name."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_download_sweeps_temporary_folders_of_killed_runs_only(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(50))
    data = tmp_path / "data"
    dead = dead_pid()
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = [data / f".raw.download.{dead}.k1l2_3x.tmp", data / f".raw.{dead}.ab_cd12.tmp", data / f".raw.{dead}.zz9.old"]
        kept = [data / f".raw.download.{live.pid}.k1l2_3x.tmp", data / f".raw.{live.pid}.ab_cd12.tmp"]
        for folder in stale + kept:
            (folder / "aclImdb").mkdir(parents=True)
            (folder / "aclImdb" / "half.txt").write_text("half-written")
        unrelated = data / ".raw.notes"
        unrelated.write_text("not ours")
        write_params(tmp_path, download={"source": str(path)})
        result = invoke("download", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in data.iterdir()) == sorted([".raw.notes", "raw", *(p.name for p in kept)])
    finally:
        live.kill()
        live.wait()


def test_staged_outputs_and_atomic_file_sweep_their_own_stale_siblings(tmp_path):
    from pipeline.files import atomic_file, stage_outputs

    dead = dead_pid()
    (tmp_path / f".model.{dead}.q8w7e6r5.tmp").mkdir()
    (tmp_path / f".model.{dead}.q8w7e6r5.tmp" / "weights.bin").write_bytes(b"\0" * 10)
    (tmp_path / f".model.{os.getpid()}.q8w7e6r5.tmp").mkdir()  # this very process: alive
    (tmp_path / f".other.{dead}.q8w7e6r5.tmp").mkdir()  # another output's: not ours to judge
    (tmp_path / f".report.json.{dead}.abc123.tmp").write_text("{")
    with stage_outputs() as outputs:
        (outputs.folder(tmp_path / "model") / "weights.bin").write_bytes(b"1")
    with atomic_file(tmp_path / "report.json") as handle:
        handle.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model", "report.json", f".model.{os.getpid()}.q8w7e6r5.tmp", f".other.{dead}.q8w7e6r5.tmp"]
    )
    (tmp_path / f".model.{os.getpid()}.q8w7e6r5.tmp").rmdir()


def test_download_works_beside_the_output_not_in_the_system_temp_folder(tmp_path):
    """An archive is fetched and extracted next to --out: nothing is created in TMPDIR
    (creating and removing an entry would change the folder's modification time)."""
    write_tree(tmp_path / "src" / "reviews", {"train": 30, "test": 20})
    archive = tmp_path / "reviews.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "reviews", arcname="reviews")
    write_params(tmp_path, download={"source": str(archive)})
    system_temp = tmp_path / "system_temp"
    system_temp.mkdir()
    os.utime(system_temp, ns=(10**18, 10**18))
    result = run_cli("download", cwd=tmp_path, env={"TMPDIR": str(system_temp)})
    assert result.returncode == 0, result.stderr
    assert system_temp.stat().st_mtime_ns == 10**18
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


# --- strictness: what would otherwise pass silently ------------------------------------------
def test_labels_of_mixed_json_types_are_named(tmp_path):
    lines = ['{"text": "one", "label": 1}', '{"text": "two", "label": "1"}', '{"text": "three", "label": true}'] * 5
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fails(tmp_path, "train.jsonl: label column 'label' mixes text and number and boolean values", "all strings, or all numbers",
          source=str(tmp_path / "train.jsonl"))


def test_integral_numbers_are_one_label(tmp_path):
    """2 and 2.0 in JSON Lines are one label, "2" (JSON has one number type)."""
    lines = [f'{{"text": "text number {i}", "label": {[1, 2.0, 2, 1.0][i % 4]}}}' for i in range(40)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report, _ = download(tmp_path, source=str(tmp_path / "train.jsonl"))
    assert report["classes"] == ["1", "2"]


def test_a_label_list_in_a_multiclass_run_is_named(tmp_path):
    lines = [f'{{"text": "text number {i}", "label": ["a", "b"]}}' for i in range(10)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fails(tmp_path, "holds lists of labels (first at row 1", "set download.task: multilabel", source=str(tmp_path / "train.jsonl"))


def test_lone_surrogates_are_replaced_and_counted(tmp_path, capsys):
    """The one rule for text that is not valid Unicode: U+FFFD, counted (download, predict, serve alike)."""
    lines = [json.dumps({"text": f"{text}", "label": label}) for text, label in labelled_rows(40)]
    lines[3] = '{"text": "broken \\ud83d emoji", "label": "neg"}'
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report, frames = download(tmp_path, source=str(tmp_path / "train.jsonl"))
    everything = pd.concat(frames.values())
    assert "broken \ufffd emoji" in everything["text"].tolist()
    assert sum(report[split]["invalid_unicode_replaced"] for split in ("train", "validation", "test")) == 1
    assert "replaced 1 invalid characters" in capsys.readouterr().err


def test_max_rows_too_few_for_the_classes_says_so(tmp_path):
    rows_ = [(f"text number {i}", f"class{i % 6}") for i in range(120)]
    write_csv(tmp_path / "train.csv", rows_)
    fails(tmp_path, "download.max_rows keeps 3 rows per split, too few for", "raise it", source=str(tmp_path / "train.csv"), max_rows=3)


def test_an_archive_over_the_unpacked_limit_is_refused(tmp_path):
    import tarfile

    write_csv(tmp_path / "src" / "reviews" / "train.csv", labelled_rows(400))
    with tarfile.open(tmp_path / "reviews.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "reviews", arcname="reviews")
    fails(tmp_path, "reviews.tar.gz: its members unpack to more than download.max_unpacked_bytes (1,000 bytes",
          "raise download.max_unpacked_bytes", source=str(tmp_path / "reviews.tar.gz"), max_unpacked_bytes=1000)
