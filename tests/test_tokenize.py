"""The tokenize stage: vocabulary rules, stored ids, determinism, bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import spacy
from conftest import assert_user_error, labelled_rows, invoke, write_csv, write_params

from pipeline.stages.download import run_download
from pipeline.params import DownloadParams, TokenizeParams
from pipeline.stages.tokenize import run_tokenize


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_csv(src / "train.csv", labelled_rows(60) + [("Rare <br />TOKEN here, with HTML!", "pos")])
    write_csv(src / "validation.csv", labelled_rows(10, offset=100) + [("unseenword appears", "neg")])
    write_csv(src / "test.csv", labelled_rows(10, offset=200) + [("", "pos"), ("x", "neg")])
    run_download(DownloadParams(source=str(src)), tmp_path / "raw", tmp_path / "data.json")
    return tmp_path / "raw"


def tokenize(tmp_path: Path, raw: Path, name: str = "processed", arch: str = "bag", **params) -> tuple[dict, Path]:
    out = tmp_path / name
    report = run_tokenize(TokenizeParams(**params), raw, out, tmp_path / f"{name}.json", progress=False, arch=arch)
    return report, out


def load_split(out: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    ids = np.load(out / split / "ids.npy", mmap_mode="r")
    offsets = np.load(out / split / "offsets.npy")
    labels = np.load(out / split / "labels.npy")
    assert ids.dtype == np.int32 and offsets[-1] == len(ids) and len(offsets) == len(labels) + 1
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(labels))], labels


def vocab_of(out: Path) -> list[list]:
    return json.loads((out / "vocab.json").read_text())["tokens"]


def test_ids_decode_to_spacy_tokens(tmp_path, raw):
    import pandas as pd

    report, out = tokenize(tmp_path, raw, min_freq=1, workers=1)
    tokens = [t for t, _ in vocab_of(out)]
    assert tokens[:2] == ["<pad>", "<unk>"]
    docs, labels = load_split(out, "train")
    frame = pd.read_parquet(raw / "train.parquet")
    nlp = spacy.blank("en")
    for i in range(len(frame)):
        text = frame["text"][i].replace("<br />", " ")
        expected = [t.lower_ for t in nlp.tokenizer(text)]
        assert [tokens[j] for j in docs[i]] == expected
    classes = json.loads((out / "labels.json").read_text())
    assert classes == ["neg", "pos"]
    assert [classes[j] for j in labels] == frame["label"].tolist()
    assert report["vocab_size"] == len(tokens)


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_long_texts_keep_the_head_or_the_head_and_the_tail(tmp_path, raw, truncation):
    import pandas as pd

    report, out = tokenize(tmp_path, raw, min_freq=1, workers=1, max_tokens=5, truncation=truncation)
    tokens = [t for t, _ in vocab_of(out)]
    docs, _ = load_split(out, "train")
    frame = pd.read_parquet(raw / "train.parquet")
    nlp = spacy.blank("en")
    for i in range(len(frame)):
        full = [t.lower_ for t in nlp.tokenizer(frame["text"][i].replace("<br />", " "))]
        head, tail = (1, 4) if truncation == "head_tail" else (5, 0)  # head_tail: a quarter of 5 from the start, the rest from the end
        expected = full if len(full) <= 5 else full[:head] + full[len(full) - tail :]
        assert [tokens[j] for j in docs[i]] == expected
    assert report["truncated_share"] > 0.5


def test_vocab_is_train_only_ordered_and_counted(tmp_path, raw):
    _, out = tokenize(tmp_path, raw, min_freq=1, workers=1)
    vocab = vocab_of(out)
    words = [t for t, _ in vocab]
    assert "unseenword" not in words  # validation-only token
    counts = [c for _, c in vocab[2:]]
    assert counts == sorted(counts, reverse=True)
    for (t1, c1), (t2, c2) in zip(vocab[2:], vocab[3:]):
        assert c1 > c2 or t1 < t2  # ties in string order
    assert dict(vocab)["number"] == 61 - 1  # every train row but the HTML one


def test_a_null_min_freq_is_the_architectures(tmp_path, raw):
    """bag keeps every train token; the dense-embedding architectures turn tokens of one count into <unk>."""
    bag, bag_out = tokenize(tmp_path, raw, name="bag", workers=1)
    cnn, cnn_out = tokenize(tmp_path, raw, name="cnn", arch="cnn", workers=1)
    assert "rare" in {t for t, _ in vocab_of(bag_out)} and "rare" not in {t for t, _ in vocab_of(cnn_out)}
    assert bag["vocab_size"] == tokenize(tmp_path, raw, name="one", min_freq=1, workers=1)[0]["vocab_size"] > cnn["vocab_size"]
    assert cnn["vocab_size"] == tokenize(tmp_path, raw, name="two", min_freq=2, workers=1)[0]["vocab_size"]
    # an explicit value is every architecture's
    assert tokenize(tmp_path, raw, name="c1", arch="cnn", min_freq=1, workers=1)[0]["vocab_size"] == bag["vocab_size"]


def test_min_freq_max_vocab_and_oov(tmp_path, raw):
    report, out = tokenize(tmp_path, raw, min_freq=2, workers=1)
    words = {t for t, _ in vocab_of(out)}
    assert "rare" not in words and "number" in words
    assert report["oov_rate_validation"] > 0
    _, small = tokenize(tmp_path, raw, name="small", min_freq=1, max_vocab=5, workers=1)
    assert len(vocab_of(small)) == 5
    docs, _ = load_split(small, "train")
    assert max(int(d.max()) for d in docs if len(d)) == 4


def test_truncation_lowercase_and_html(tmp_path, raw):
    report, out = tokenize(tmp_path, raw, min_freq=1, max_tokens=3, lowercase=False, strip_html=False, workers=1)
    docs, _ = load_split(out, "train")
    assert max(len(d) for d in docs) == 3
    assert report["truncated_share"] > 0.9
    words = {t for t, _ in vocab_of(out)}
    assert "Rare" in words and "rare" not in words
    _, full = tokenize(tmp_path, raw, name="full", min_freq=1, strip_html=False, workers=1)
    assert "br" in {t for t, _ in vocab_of(full)}


def test_empty_text_gives_an_empty_document(tmp_path, raw):
    import pandas as pd

    _, out = tokenize(tmp_path, raw, workers=1)
    docs, _ = load_split(out, "test")
    texts = pd.read_parquet(raw / "test.parquet")["text"].tolist()
    assert len(docs) == len(texts) == 11  # download drops the empty text; "x" stays
    assert min(len(d) for d in docs) == 1


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_byte_identical_outputs_whatever_the_workers_and_batches(tmp_path, raw):
    _, one = tokenize(tmp_path, raw, name="one", workers=1, batch_size=7)
    _, two = tokenize(tmp_path, raw, name="two", workers=2, batch_size=3)
    _, again = tokenize(tmp_path, raw, name="again", workers=2, batch_size=3)
    assert digest(one) == digest(two) == digest(again)
    assert set(digest(one)) == {
        "labels.json", "text.json", "vocab.json",
        *(f"{s}/{f}.npy" for s in ("train", "validation", "test") for f in ("ids", "offsets", "labels")),
    }


def test_text_settings_are_saved_for_inference(tmp_path, raw):
    _, out = tokenize(tmp_path, raw, max_tokens=77, lowercase=False, workers=1)
    assert json.loads((out / "text.json").read_text()) == {
        "language": "en", "lowercase": False, "strip_html": True, "max_tokens": 77, "truncation": "head", "tokenizer": "spacy",
    }
    _, out = tokenize(tmp_path, raw, name="default", truncation="head_tail", workers=1)
    assert json.loads((out / "text.json").read_text())["max_tokens"] == 1000  # null: spaCy's default
    assert json.loads((out / "text.json").read_text())["truncation"] == "head_tail"


def test_missing_raw_data_is_a_clear_error(tmp_path):
    write_params(tmp_path, tokenize={"min_freq": 1})
    result = invoke("tokenize", cwd=tmp_path)
    assert_user_error(result, "data/raw/train.parquet not found", "download")
    assert not (tmp_path / "data" / "processed").exists()


def test_the_tokenize_command_takes_a_null_min_freq_from_model_arch(tmp_path, raw):
    for arch, has_rare in (("bag", True), ("cnn", False)):
        write_params(tmp_path, tokenize={"workers": 1}, model={"arch": arch})
        out = tmp_path / arch
        assert invoke("tokenize", "--raw", str(raw), "--out", str(out), "--report", str(tmp_path / f"{arch}.json"), cwd=tmp_path).returncode == 0
        assert ("rare" in {t for t, _ in vocab_of(out)}) == has_rare, arch


@pytest.mark.parametrize("language", ["xx-nope", "klingon"])
def test_unknown_language(tmp_path, raw, language):
    write_params(tmp_path, tokenize={"language": language})
    result = invoke("tokenize", "--raw", str(raw), cwd=tmp_path)
    assert_user_error(result, "tokenize.language", f"spaCy has no language {language!r}")
    assert not (tmp_path / "data" / "processed").exists()


def test_a_language_whose_package_is_missing_names_the_install_command(tmp_path, raw):
    if importlib.util.find_spec("sudachipy") is not None:
        pytest.skip("SudachiPy is installed here, so Japanese works")
    write_params(tmp_path, tokenize={"language": "ja"})
    result = invoke("tokenize", "--raw", str(raw), cwd=tmp_path)
    assert_user_error(result, "tokenize.language", "'ja'", "needs the module 'sudachipy'", "pip install sudachipy sudachidict_core")
    assert "no language" not in result.stderr
    assert not (tmp_path / "data" / "processed").exists()


def test_an_empty_vocabulary_is_an_error_and_writes_nothing(tmp_path):
    write_csv(tmp_path / "source" / "train.csv", labelled_rows(40))
    write_csv(tmp_path / "source" / "test.csv", labelled_rows(10, offset=500))
    write_params(tmp_path, download={"source": str(tmp_path / "source")}, tokenize={"workers": 1, "min_freq": 1_000})
    assert invoke("download", cwd=tmp_path).returncode == 0
    result = invoke("tokenize", cwd=tmp_path)
    assert_user_error(result, "tokenize.min_freq", "no train token occurs 1,000 times or more", "(the most frequent, 'number', occurs 36)", "lower tokenize.min_freq")
    assert not (tmp_path / "data" / "processed").exists()
    assert not (tmp_path / "reports" / "tokenize.json").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["raw"]  # no staging folder left behind


def test_raw_split_without_text_column(tmp_path, raw):
    import pandas as pd

    pd.DataFrame({"body": ["a"], "label": ["pos"]}).to_parquet(raw / "validation.parquet")
    write_params(tmp_path, tokenize={})
    result = invoke("tokenize", "--raw", str(raw), cwd=tmp_path)
    assert_user_error(result, "validation.parquet", "text and label")
