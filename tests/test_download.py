"""The download stage: every source kind and layout, and every bad input."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_user_error, labelled_rows, needs_shared, run_cli, write_csv, write_params, write_tree

from pipeline.download import run_download
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


def test_report_counts_duplicates_overlap_and_empty_texts(tmp_path):
    train = labelled_rows(40) + [("a great film, truly wonderful number 0", "pos"), ("   ", "neg")]
    write_csv(tmp_path / "src" / "train.csv", train)
    write_csv(tmp_path / "src" / "test.csv", labelled_rows(10, offset=100) + [labelled_rows(1)[0]])
    report, _ = download(tmp_path, source=str(tmp_path / "src"))
    assert report["train"]["empty_dropped"] == 1
    assert report["train_duplicates"] == 1
    assert report["train_test_overlap"] == 1
    assert report["test"]["words"]["max"] == 7


def test_hf_source_goes_through_datasets(tmp_path):
    """`hf:` with a local folder: the real datasets.load_dataset path, no network."""
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    pd.DataFrame(labelled_rows(60), columns=["text", "label"]).to_parquet(folder / "train.parquet")
    pd.DataFrame(labelled_rows(20, offset=100), columns=["text", "label"]).to_parquet(folder / "test.parquet")
    report, _ = download(tmp_path, source=f"hf:{folder}")
    assert rows(report) == {"train": 54, "validation": 6, "test": 20}


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
    result = run_cli("download", cwd=tmp_path)
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
    fails(tmp_path, "texts in all are empty", "download.text_columns", source=str(path))


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
    path.write_bytes(b"text,label\ngood,pos\nbad \xff\xfe byte,neg\n" + b"fine,pos\nmeh,neg\n" * 10)
    fails(tmp_path, "reviews.csv: line 3", "download.encoding", source=str(path))
    # and the fix works
    write_params(tmp_path, download={"source": str(path), "encoding": "latin-1"})
    assert run_cli("download", cwd=tmp_path).returncode == 0


def test_hf_dataset_that_cannot_be_loaded(tmp_path):
    fails(tmp_path, "could not load Hugging Face dataset", "local file", source=f"hf:{tmp_path / 'no_such_dataset'}")


def test_failure_keeps_no_partial_output_when_outputs_existed(tmp_path):
    """A failed rerun leaves the previous complete output, never a half-written one."""
    path = write_csv(tmp_path / "reviews.csv", labelled_rows(50))
    write_params(tmp_path, download={"source": str(path)})
    assert run_cli("download", cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in (tmp_path / "data" / "raw").iterdir())
    write_params(tmp_path, download={"source": str(path), "label_column": "nope"})
    assert run_cli("download", cwd=tmp_path).returncode == 1
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
    assert report["test"]["rows"] == 25_000
    assert report["train"]["rows"] + report["validation"]["rows"] == 25_000
    assert report["classes"] == ["neg", "pos"]
    assert report["test"]["classes"] == {"neg": 12_500, "pos": 12_500}
