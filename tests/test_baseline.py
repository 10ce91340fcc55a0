"""The baseline stage: TF-IDF + logistic regression on the same splits as the model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import assert_user_error, needs_shared, invoke, write_params

from pipeline.stages.baseline import C_GRID, as_logits, run_baseline
from pipeline.stages.download import run_download
from pipeline.params import BaselineParams, parse_params


def test_baseline_scores_the_same_test_split(project):
    report = json.loads((project / "reports" / "baseline.json").read_text())
    runtime = json.loads((project / "reports" / "runtime" / "baseline.json").read_text())
    assert set(report) == {"accuracy", "macro_f1", "validation_accuracy", "C", "features"}
    assert all(isinstance(v, (int, float)) for v in report.values())  # a DVC metric: numbers only
    assert report["C"] in C_GRID and report["features"] > 0
    assert runtime["analyzer"] == "word 1-2 grams"
    # the fixture's test labels are 1 in 7 wrong on purpose: a perfect reader scores 6/7
    assert 0.7 <= report["accuracy"] <= 6 / 7 + 1e-9
    assert 0 < report["macro_f1"] <= 1


def test_a_fixed_c_is_used_and_the_stage_can_be_switched_off(project, tmp_path):
    raw = project / "data" / "raw"
    fixed = run_baseline(BaselineParams(C=2.5), "en", raw, tmp_path / "b.json", tmp_path / "r.json")
    assert fixed["C"] == 2.5
    assert run_baseline(BaselineParams(enabled=False), "en", raw, tmp_path / "off.json", tmp_path / "off-r.json") == {}
    assert json.loads((tmp_path / "off.json").read_text()) == {}


def test_switched_off_baseline_shows_on_the_report(project, tmp_path):
    reports = tmp_path / "reports"
    import shutil

    shutil.copytree(project / "reports", reports)
    (reports / "baseline.json").write_text("{}")
    (reports / "runtime" / "baseline.json").write_text("{}")
    result = invoke("report", "--reports", str(reports), "--out", str(tmp_path / "r.html"), cwd=project)
    assert result.returncode == 0, result.stderr
    assert "baseline.enabled: false" in (tmp_path / "r.html").read_text()


def test_unspaced_languages_get_character_ngrams(tmp_path):
    sports = ["球队赢得了比赛", "球员打进关键一球", "足球联赛今晚开赛", "篮球队夺得冠军"]
    money = ["股市今天大幅上涨", "银行提高贷款利率", "公司公布季度利润", "投资者买入股票"]
    rows = [(f"{(sports if i % 2 else money)[i % 4]}{i}", "体育" if i % 2 else "财经") for i in range(200)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "news.csv", index=False)
    params = parse_params({"download": {"source": str(tmp_path / "news.csv")}, "tokenize": {"language": "zh"}})
    run_download(params.download, tmp_path / "raw", tmp_path / "data.json")
    result = run_baseline(params.baseline, "zh", tmp_path / "raw", tmp_path / "b.json")
    assert result["analyzer"] == "char 1-3 grams"  # word n-grams would see one "word" per text
    assert result["accuracy"] == 1.0


def test_cli_errors(tmp_path):
    write_params(tmp_path)
    assert_user_error(invoke("baseline", cwd=tmp_path), "train.parquet not found", "download")
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_ag_news_baseline(tmp_path):
    source = needs_shared("ag_news", "test.csv")
    params = parse_params({"download": {
        "source": str(source), "column_names": ["label", "title", "description"], "text_columns": ["title", "description"],
        "label_names": {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"},
    }})
    run_download(params.download, tmp_path / "raw", tmp_path / "data.json")
    result = run_baseline(params.baseline, "en", tmp_path / "raw", tmp_path / "b.json")
    assert result["accuracy"] >= 0.85  # four news topics: a linear model on word n-grams is strong here


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("analyzer, ngrams", [("word", (1, 2)), ("char", (1, 3))])
def test_tfidf_features_equal_scikit_learns_vectorizer(workers, analyzer, ngrams):
    """The chunked, merged counting gives TfidfVectorizer's matrices exactly: same columns in the
    same order, the same min_df cut, the same weights; for any number of workers."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from pipeline.text.tfidf import tfidf_features

    rng = np.random.default_rng(0)
    words = ["good", "bad", "Film", "plot", "ÉTÉ", "acting", "boring", "loved", "it", "was", "球队", "x"]
    train = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(61)] + ["", "only once here"]
    validation = ["good film", "never seen words", ""]
    test = [" ".join(rng.choice(words, 8)) for _ in range(9)]
    ours, (ours_validation, ours_test), features = tfidf_features(
        analyzer, ngrams, 2, train, [validation, test], workers, min_texts_per_worker=1
    )
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=2, dtype=np.float32)
    expected = vectorizer.fit_transform(train)
    assert features == len(vectorizer.vocabulary_) and "once" not in vectorizer.vocabulary_
    for got, want in ((ours, expected), (ours_validation, vectorizer.transform(validation)), (ours_test, vectorizer.transform(test))):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert (got != want).nnz == 0


def test_tfidf_features_refuse_an_empty_vocabulary():
    from pipeline.text.tfidf import tfidf_features

    with pytest.raises(ValueError, match="empty vocabulary"):
        tfidf_features("word", (1, 2), 2, ["alpha beta", "gamma delta"], [], 2, min_texts_per_worker=1)


def test_tfidf_features_do_not_depend_on_the_start_method():
    """Worker processes started by spawn (fresh interpreters, each with its own hash seed) give
    TfidfVectorizer's matrices too: nothing process-specific crosses into the merge."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from pipeline.text.tfidf import tfidf_features

    train = ["good film", "bad film", "good plot", "bad plot", "film plot", "a plot twist"] * 3
    ours, (ours_test,), features = tfidf_features("word", (1, 2), 2, train, [["good bad film", "plot twist"]], 2,
                                                  min_texts_per_worker=1, start_method="spawn")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32)
    assert (ours != vectorizer.fit_transform(train)).nnz == 0
    assert (ours_test != vectorizer.transform(["good bad film", "plot twist"])).nnz == 0
    assert features == len(vectorizer.vocabulary_)

def test_a_baseline_too_large_for_the_machine_says_so():
    from pipeline.errors import PipelineError
    from pipeline.stages.baseline import check_memory

    check_memory(4, 500_000, BaselineParams())  # AG News-sized: fine
    with pytest.raises(PipelineError, match="20,000 classes and 20,000 features needs about 80 GB.*baseline.enabled: false"):
        check_memory(20_000, 20_000, BaselineParams())


def test_certain_probabilities_give_finite_logits():
    """scikit-learn's probabilities are float32 for float32 features: 1.0 and 0.0 must not become
    infinite logits (their cross-entropy would be NaN)."""
    import numpy as np

    logits = as_logits(np.array([[1.0, 0.0, 0.5]], dtype=np.float32))
    assert np.isfinite(logits).all() and logits[0, 0] > 20 and logits[0, 1] < -20 and logits[0, 2] == 0
