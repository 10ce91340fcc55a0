"""The evaluate stage, and the pipeline so far (download -> tokenize -> train -> evaluate) on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_user_error, labelled_rows, needs_shared, invoke, write_csv, write_params

from pipeline.stages.evaluate import run_evaluate
from pipeline.params import parse_params

# noisy enough that the model makes mistakes: some "pos" rows carry negative words
SETTINGS = {
    "model": {"embed_dim": 16, "bag": {"buckets": 5000}},
    "train": {"max_epochs": 3, "lr": 0.05, "threads": 1},
    "evaluate": {"errors": 5, "error_chars": 25},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """download -> tokenize -> train by the real stages, in the default layout."""
    root = tmp_path_factory.mktemp("project")
    rows = labelled_rows(400)
    flipped = [(text, "pos" if label == "neg" else "neg") if i % 7 == 0 else (text, label) for i, (text, label) in enumerate(labelled_rows(140, offset=9000))]
    write_csv(root / "source" / "train.csv", rows)
    write_csv(root / "source" / "test.csv", flipped)
    write_params(root, download={"source": str(root / "source")}, tokenize={"workers": 1, "min_freq": 1}, **SETTINGS)
    for command in ("download", "tokenize", "train"):
        result = invoke(command, cwd=root)
        assert result.returncode == 0, result.stderr
    return root


def test_metrics_confusion_and_errors(project):
    result = invoke("evaluate", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    metrics = json.loads((project / "reports" / "evaluate.json").read_text())
    assert list(metrics)[:4] == ["accuracy", "macro_f1", "loss", "documents"]
    for name in ("neg", "pos"):
        assert {f"{name}_precision", f"{name}_recall", f"{name}_f1"} <= metrics.keys()
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # flat: one number per key
    # the DVC metric is the headline alone, the same numbers: what `dvc metrics show` lists
    headline = json.loads((project / "reports" / "metrics" / "evaluate.json").read_text())
    assert headline == {key: metrics[key] for key in ("accuracy", "macro_f1", "ece")}

    confusion = pd.read_csv(project / "reports" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == metrics["documents"] == 140
    assert set(confusion["actual"]) == {"neg", "pos"}
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(metrics["accuracy"])
    # every 7th test row has the wrong label on purpose, so the model cannot be right on those
    assert 0.75 <= metrics["accuracy"] <= 1 - 1 / 7 + 0.01

    errors = pd.read_csv(project / "reports" / "errors.csv")
    assert list(errors.columns) == ["text", "actual", "predicted", "confidence"]
    assert len(errors) == 5  # evaluate.errors
    assert (errors["actual"] != errors["predicted"]).all()
    assert errors["confidence"].is_monotonic_decreasing and (errors["confidence"] >= 0.5).all()
    assert errors["text"].str.len().max() <= 25  # evaluate.error_chars


def test_run_evaluate_matches_the_cli(project, tmp_path):
    assert invoke("evaluate", cwd=project).returncode == 0
    params = parse_params({**SETTINGS, "download": {"source": "x"}})
    metrics = run_evaluate(
        params, project / "models/train/best.pt", project / "data/processed", project / "data/raw",
        tmp_path / "m.json", tmp_path / "c.csv", tmp_path / "e.csv",
    )
    assert metrics == json.loads((project / "reports" / "evaluate.json").read_text())


def test_missing_or_damaged_checkpoint(project, tmp_path):
    assert_user_error(invoke("evaluate", "--checkpoint", str(tmp_path / "none.pt"), cwd=project), "none.pt not found", "train")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert_user_error(invoke("evaluate", "--checkpoint", str(tmp_path / "bad.pt"), cwd=project), "bad.pt", "rerun the train stage")
    assert_user_error(invoke("evaluate", "--raw", str(tmp_path), cwd=project), "test.parquet", "download")


def test_ag_news_pipeline_reaches_a_real_accuracy(tmp_path):
    """The whole pipeline, by its CLI with default model, train and export params, on AG News."""
    source = needs_shared("ag_news", "test.csv")
    write_params(
        tmp_path,
        download={
            "source": str(source),
            "column_names": ["label", "title", "description"],
            "text_columns": ["title", "description"],
            "label_names": {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"},
        },
    )
    for command in ("download", "tokenize", "train", "evaluate", "export"):
        result = invoke(command, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
    metrics = json.loads((tmp_path / "reports" / "evaluate.json").read_text())
    assert metrics["documents"] == 1520  # test_fraction 0.2 of 7,600
    assert metrics["accuracy"] >= 0.85, metrics  # chance is 0.25
    assert metrics["macro_f1"] >= 0.85
    assert {"World_f1", "Sports_f1", "Business_f1", "Sci/Tech_f1"} <= metrics.keys()
    export = json.loads((tmp_path / "reports" / "export.json").read_text())
    assert export["torch_fp32_accuracy"] == metrics["accuracy"]
    assert export["onnx_fp32_checked_documents"] == 500  # export.parity_documents of the 1,520
    assert abs(export["onnx_int8_accuracy"] - export["torch_fp32_accuracy"]) <= 0.005  # int8 stays close
    assert export["onnx_int8_bytes"] <= 0.3 * export["onnx_fp32_bytes"]


def test_a_checkpoint_of_other_tokenized_data_is_refused(project, tmp_path):
    """The same raw data tokenized with another vocabulary: evaluate and export refuse the checkpoint
    (it would score other ids, a number that means nothing), naming both sizes."""
    from pipeline.stages.tokenize import run_tokenize

    params = parse_params({"tokenize": {"workers": 1, "min_freq": 3}})
    run_tokenize(params.tokenize, project / "data" / "raw", tmp_path / "processed", tmp_path / "t.json", progress=False)
    for command in ("evaluate", "export"):
        result = invoke(command, "--data", str(tmp_path / "processed"), "--out" if command == "export" else "--metrics",
                        str(tmp_path / f"{command}.out"), cwd=project)
        assert_user_error(result, "best.pt was trained on another vocabulary than", "this data has", "rerun the train stage")
        assert not (tmp_path / f"{command}.out").exists()
