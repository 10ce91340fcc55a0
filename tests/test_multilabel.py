"""Multi-label data (issue 24): every label format download reads, a whole run through real DVC
(download -> report, then predict and serve the bundle), class weights, calibration, and the
one-line errors of data that does not fit the task."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import FAST_EXPORT, assert_user_error, built_once, copy_pipeline, invoke, labelled_rows, write_csv, write_params

LABEL_WORDS = {
    "sport": ["goal", "match", "team", "coach", "league", "score"],
    "money": ["bank", "price", "stock", "market", "loan", "fund"],
    "tech": ["chip", "code", "robot", "data", "laptop", "server"],
}
FILLER = ["the", "a", "today", "we", "saw", "very", "and", "news", "people", "city", "new", "old"]


def label_sets(n: int, offset: int = 0) -> list[tuple[str, list[str]]]:
    """Texts whose labels follow from their words: none, one or two of LABEL_WORDS, each text unique."""
    rng = random.Random(offset)
    rows = []
    for i in range(n):
        labels = sorted(rng.sample(sorted(LABEL_WORDS), rng.choice([0, 1, 1, 1, 2])))
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        for label in labels:
            words += rng.sample(LABEL_WORDS[label], 2)
        rng.shuffle(words)
        rows.append((" ".join(words) + f" item{offset + i}", labels))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def raw_labels(root: Path, split: str = "train") -> list[list[str]]:
    frame = pd.read_parquet(root / "data" / "raw" / f"{split}.parquet")
    return [sorted(labels) for labels in frame["label"]]


def download(root: Path, **download) -> dict:
    write_params(root, download={"task": "multilabel", **download})
    result = invoke("download", cwd=root)
    assert result.returncode == 0, result.stderr
    return json.loads((root / "reports" / "data.json").read_text())


# --- the label formats ---------------------------------------------------------------------------
def test_a_list_column_in_json_lines_with_rows_that_have_no_label(tmp_path):
    rows = label_sets(120)
    write_jsonl(tmp_path / "src" / "train.jsonl", [{"text": t, "tags": labels} for t, labels in rows])
    data = download(tmp_path, source=str(tmp_path / "src" / "train.jsonl"), label_column="tags")
    assert data["task"] == "multilabel" and data["classes"] == ["money", "sport", "tech"]
    empty = sum(1 for _, labels in rows if not labels)
    assert empty > 0 and sum(data[split]["no_label"] for split in ("train", "validation", "test")) == empty
    assert 0 < data["train"]["labels_per_text"] < 2
    found = {tuple(labels) for split in ("train", "validation", "test") for labels in raw_labels(tmp_path, split)}
    assert found == {tuple(labels) for _, labels in rows}  # the sets arrive as they were, the empty one included


def test_a_separated_string_column_and_a_parquet_list_column(tmp_path):
    rows = label_sets(120, offset=300)
    write_csv(tmp_path / "csv" / "train.csv", [(t, "|".join(labels)) for t, labels in rows])
    download(tmp_path, source=str(tmp_path / "csv" / "train.csv"), label_separator="|")
    from_csv = sorted(raw_labels(tmp_path) + raw_labels(tmp_path, "validation") + raw_labels(tmp_path, "test"))
    assert from_csv == sorted(labels for _, labels in rows)

    parquet = tmp_path / "pq" / "train.parquet"
    parquet.parent.mkdir()
    pd.DataFrame({"text": [t for t, _ in rows], "label": [labels for _, labels in rows]}).to_parquet(parquet)
    shutil.rmtree(tmp_path / "data")
    download(tmp_path, source=str(parquet))
    assert sorted(raw_labels(tmp_path) + raw_labels(tmp_path, "validation") + raw_labels(tmp_path, "test")) == from_csv


def test_zero_one_columns_name_the_labels(tmp_path):
    rows = label_sets(120, offset=600)
    frame = pd.DataFrame({"text": [t for t, _ in rows], **{name: [int(name in labels) for _, labels in rows] for name in LABEL_WORDS}})
    (tmp_path / "src").mkdir()
    frame.to_csv(tmp_path / "src" / "train.csv", index=False)
    data = download(tmp_path, source=str(tmp_path / "src" / "train.csv"), label_columns=sorted(LABEL_WORDS))
    assert data["classes"] == sorted(LABEL_WORDS)
    assert sorted(raw_labels(tmp_path) + raw_labels(tmp_path, "validation") + raw_labels(tmp_path, "test")) == sorted(labels for _, labels in rows)


@pytest.mark.parametrize("names_from", ["file", "list"])
def test_a_headerless_tsv_of_label_ids_as_goemotions_writes_it(tmp_path, names_from):
    names = sorted(LABEL_WORDS)
    rows = label_sets(150, offset=900)
    lines = [f'"{t}, ""quoted"""\t{",".join(str(names.index(label)) for label in labels)}\tid{i}' for i, (t, labels) in enumerate(rows) if labels]
    source = tmp_path / "goe"
    source.mkdir()
    (source / "train.tsv").write_text("\n".join(lines[:100]) + "\n", encoding="utf-8")
    (source / "test.tsv").write_text("\n".join(lines[100:]) + "\n", encoding="utf-8")
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    data = download(tmp_path, source=str(source), column_names=["text", "labels", "id"], label_column="labels", label_separator=",",
                    label_names="names.txt" if names_from == "file" else names, tsv_quoting="csv")
    assert data["classes"] == names and data["test"]["rows"] == len(lines) - 100
    texts = pd.read_parquet(tmp_path / "data" / "raw" / "test.parquet")["text"].tolist()
    assert all(text.endswith(', "quoted"') for text in texts)  # CSV quoting undone, the tab-free text kept whole


# --- bad input: one line naming the problem ------------------------------------------------------
def test_label_sets_in_a_multiclass_run_and_single_labels_in_a_multilabel_run(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": labels} for t, labels in label_sets(40)])
    write_params(tmp_path, download={"source": str(tmp_path / "train.jsonl")})
    assert_user_error(invoke("download", cwd=tmp_path), "holds lists of labels", "download.task: multilabel")

    write_csv(tmp_path / "single" / "train.csv", labelled_rows(40))
    write_params(tmp_path, download={"source": str(tmp_path / "single" / "train.csv"), "task": "multilabel"})
    assert_user_error(invoke("download", cwd=tmp_path), "download.label_separator")
    assert not (tmp_path / "data" / "raw").exists()


def test_a_separator_that_never_occurs_and_an_unknown_label_id(tmp_path):
    rows = label_sets(60)
    write_csv(tmp_path / "src" / "train.csv", [(t, "|".join(labels)) for t, labels in rows])
    write_params(tmp_path, download={"source": str(tmp_path / "src" / "train.csv"), "task": "multilabel", "label_separator": ";"})
    assert_user_error(invoke("download", cwd=tmp_path), "occurs in no label", "label_separator")

    write_csv(tmp_path / "ids" / "train.csv", [(t, ",".join(["0", "7"] if i % 9 == 0 else ["1"])) for i, (t, _) in enumerate(rows)])
    write_params(tmp_path, download={"source": str(tmp_path / "ids" / "train.csv"), "task": "multilabel", "label_separator": ",",
                                     "label_names": ["a", "b", "c"]})
    assert_user_error(invoke("download", cwd=tmp_path), "'7'", "label_names")
    assert not (tmp_path / "data" / "raw").exists()


# --- a run end to end, through real DVC ----------------------------------------------------------
def dvc(*args: str, cwd: Path) -> str:
    from test_dvc import sh

    return sh("dvc", *args, cwd=cwd)


@pytest.fixture(scope="module")
def multilabel_project(tmp_path_factory) -> Path:
    """The shipped dvc.yaml and defaults with only the task, the source and a small model changed,
    after `dvc repro` (one run, shared by every worker)."""
    return built_once(tmp_path_factory, "multilabel", build_multilabel_project)


def build_multilabel_project(root: Path) -> None:
    from pipeline.params import Params
    from test_dvc import sh

    copy_pipeline(root)
    write_jsonl(root / "source" / "train.jsonl", [{"text": t, "labels": labels} for t, labels in label_sets(600)])
    write_jsonl(root / "source" / "test.jsonl", [{"text": t, "labels": labels} for t, labels in label_sets(150, offset=5000)])
    params = Params().model_dump()
    params["download"].update(source="source", task="multilabel", label_column="labels")
    params["model"]["bag"].update(buckets=5000)
    params["export"].update({**FAST_EXPORT, "threads": 1})
    params["train"].update(threads=1, patience=8)  # tiny data: train on past the first plateau
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (("git", "init", "-q"), ("git", "config", "user.email", "t@example.com"), ("git", "config", "user.name", "test"), ("dvc", "init", "-q")):
        sh(*args, cwd=root)
    dvc("repro", cwd=root)


@pytest.mark.slow
def test_dvc_repro_trains_evaluates_exports_and_reports_label_sets(multilabel_project):
    root = multilabel_project
    metrics = json.loads((root / "reports" / "evaluate.json").read_text())
    baseline = json.loads((root / "reports" / "baseline.json").read_text())
    for scores in (metrics, baseline):
        assert {"macro_f1", "micro_f1", "macro_f1_at_05", "micro_f1_at_05"} <= set(scores)
    assert metrics["macro_f1"] > 0.8 and baseline["macro_f1"] > 0.8  # the words decide the labels: both learn them
    assert {"hamming_loss", "ece", "ece_uncalibrated", "brier", "sport_precision", "sport_recall", "sport_f1", "sport_support"} <= set(metrics)
    calibration = json.loads((root / "reports" / "calibration.json").read_text())
    assert calibration["task"] == "multilabel" and set(calibration["thresholds"]) == set(LABEL_WORDS)
    assert set(calibration["temperature"]) == set(LABEL_WORDS)
    export = json.loads((root / "reports" / "export.json").read_text())
    assert export["onnx_int8_micro_f1_drop"] <= 0.01 and "onnx_int8_accuracy" not in export
    shown = {stage: json.loads((root / "reports" / "metrics" / f"{stage}.json").read_text()) for stage in ("evaluate", "baseline", "export")}
    assert set(shown["evaluate"]) == {"macro_f1", "micro_f1", "ece"}  # the headline `dvc metrics show` lists
    assert shown["baseline"] == {"baseline_macro_f1": baseline["macro_f1"]}
    assert shown["export"] == {"int8_micro_f1": export["onnx_int8_micro_f1"], "int8_mb": export["onnx_int8_mb"]}
    bundled = json.loads((root / "models" / "export" / "calibration.json").read_text())
    assert bundled["thresholds"] == calibration["thresholds"]  # the tuned thresholds travel in the bundle
    page = (root / "reports" / "report.html").read_text()
    for text in ('id="figure-confusion"', "F1 per label", 'id="cardinality"', "threshold", "Reliability (test)", "one-vs-rest"):
        assert text in page, text
    runtime = json.loads((root / "reports" / "runtime" / "train.json").read_text())
    assert runtime["monitor"] == "macro_f1"  # auto, for label sets
    assert "Running stage" not in dvc("repro", cwd=root)  # all cached


@pytest.mark.slow
def test_predict_and_serve_answer_label_sets(multilabel_project):
    from test_serve import start_server, stop

    bundle = multilabel_project / "models" / "export"
    thresholds = json.loads((bundle / "calibration.json").read_text())["thresholds"]
    result = invoke("predict", "--bundle", str(bundle), "goal match team coach bank price stock", "the very old city", cwd=multilabel_project)
    assert result.returncode == 0, result.stderr
    both, none = (json.loads(line) for line in result.stdout.splitlines())
    assert set(both) == {"text", "labels", "scores"} and set(both["labels"]) == {"sport", "money"}
    assert all(both["scores"][label] >= thresholds[label] for label in both["labels"])
    assert none["labels"] == []  # "none of these" is an answer
    everything = invoke("predict", "--bundle", str(bundle), "--all-probabilities", "chip code robot", cwd=multilabel_project)
    record = json.loads(everything.stdout)
    assert record["labels"] == ["tech"] and set(record["probabilities"]) == set(LABEL_WORDS)

    process, url = start_server(bundle, "--workers", "0")
    try:
        body = httpx.post(f"{url}/predict", json={"texts": ["goal match team coach", "the very old city"], "all_probabilities": True}, timeout=30).json()
        first, second = body["predictions"] if "predictions" in body else body
        assert first["labels"] == ["sport"] and second["labels"] == [] and set(first["probabilities"]) == set(LABEL_WORDS)
    finally:
        stop(process)


# --- class weights and calibration ---------------------------------------------------------------
def skewed_project(root: Path, class_weights: str) -> dict:
    """Two classes, 1 in 12 texts of the rare one, whose words are also common in the frequent one."""
    rng = random.Random(7)
    rows = []
    for i in range(1200):
        rare = i % 12 == 0
        words = [rng.choice(FILLER) for _ in range(5)] + [rng.choice(["bank", "price", "stock"] if rare or rng.random() < 0.3 else ["goal", "team"])]
        if rare:
            words.append(rng.choice(["loan", "fund", "market", "team"]))
        rows.append((" ".join(words) + f" item{i}", "rare" if rare else "common"))
    write_csv(root / "source" / "train.csv", rows)
    write_params(root, download={"source": str(root / "source" / "train.csv")}, tokenize={"workers": 1, "min_freq": 1},
                 model={"bag": {"buckets": 5000}}, train={"threads": 1, "class_weights": class_weights, "max_epochs": 6})
    said = {}
    for command in ("download", "tokenize", "train", "evaluate"):
        result = invoke(command, cwd=root)
        assert result.returncode == 0, (command, result.stderr)
        said[command] = result.stdout + result.stderr
    return {"metrics": json.loads((root / "reports" / "evaluate.json").read_text()),
            "runtime": json.loads((root / "reports" / "runtime" / "train.json").read_text()), "train": said["train"]}


def test_balanced_class_weights_raise_the_rare_class_recall(tmp_path):
    plain, balanced = skewed_project(tmp_path / "none", "none"), skewed_project(tmp_path / "balanced", "balanced")
    assert balanced["metrics"]["rare_recall"] > plain["metrics"]["rare_recall"] + 0.05
    weights = balanced["runtime"]["class_weights"]
    assert weights["rare"] > 5 * weights["common"]  # inverse frequency, as printed and saved
    assert "class_weights" not in plain["runtime"]
    assert "train: class weights (balanced): common" in balanced["train"] and "class weights" not in plain["train"]


def test_temperature_keeps_every_argmax_and_lowers_the_calibration_error():
    from pipeline.inference.calibration import Calibration
    from pipeline.metrics import calibration_scores, fit_temperature, probabilities

    rng = np.random.default_rng(0)
    actual = rng.integers(0, 4, 3000)
    signal = rng.normal(size=(3000, 4)) + 1.2 * np.eye(4)[actual]
    overconfident = 8.0 * signal  # what a memorising model outputs: right 70% of the time, sure 99% of the time
    temperature = fit_temperature(overconfident[:1500], actual[:1500])
    assert temperature > 3
    before = calibration_scores(probabilities(overconfident[1500:], False), actual[1500:])
    after = calibration_scores(probabilities(overconfident[1500:], False, temperature), actual[1500:])
    assert after["ece"] < before["ece"] / 3 and after["brier"] < before["brier"]
    calibration = Calibration(False, ["a", "b", "c", "d"], temperature)
    assert (calibration.probabilities(overconfident).argmax(1) == overconfident.argmax(1)).all()

    labels = (rng.random((3000, 3)) < 1 / (1 + np.exp(-signal[:, :3]))).astype(np.uint8)  # label sets: a temperature per label
    per_label = fit_temperature(overconfident[:, :3], labels)
    assert per_label.shape == (3,) and (per_label > 1).all()
    assert (calibration_scores(probabilities(overconfident[:, :3], True, per_label), labels)["ece"]
            < calibration_scores(probabilities(overconfident[:, :3], True), labels)["ece"])


def test_platt_scaling_fixes_labels_whose_probabilities_are_all_too_low():
    from pipeline.metrics import calibration_scores, fit_platt, fit_temperature, probabilities, sigmoid

    rng = np.random.default_rng(2)
    signal = rng.normal(size=(4000, 3))
    labels = (rng.random((4000, 3)) < sigmoid(signal)).astype(np.uint8)
    shy = 3.0 * signal - 4.0  # a model that ranks well but says "no" to everything (BCE on rare labels does this)
    temperature = fit_temperature(shy[:2000], labels[:2000])
    platt_t, bias = fit_platt(shy[:2000], labels[:2000])
    assert np.allclose(platt_t, 3.0, rtol=0.15) and np.allclose(bias, 4.0 / 3.0, atol=0.25)  # it recovers the true map
    test, truth = shy[2000:], labels[2000:]
    ece = {name: calibration_scores(probabilities(test, True, *fit), truth)["ece"]
           for name, fit in (("none", (1.0,)), ("temperature", (temperature,)), ("platt", (platt_t, bias)))}
    assert ece["platt"] < 0.03 < ece["temperature"] < ece["none"]
    order = np.argsort(test[:, 0])
    assert (np.diff(probabilities(test, True, platt_t, bias)[order, 0]) >= 0).all()  # each label's ranking is kept


def test_best_threshold_scores_from_histograms_match_the_exact_tuning():
    from pipeline.metrics import best_threshold_scores, multilabel_metrics, sigmoid, threshold_histogram, tune_thresholds

    rng = np.random.default_rng(1)
    actual = (rng.random((2000, 5)) < [0.02, 0.1, 0.3, 0.5, 0.05]).astype(np.uint8)
    logits = rng.normal(size=actual.shape) + 2.5 * actual - 2
    halves = [threshold_histogram(logits[:1000], actual[:1000]), threshold_histogram(logits[1000:], actual[1000:])]
    binned = best_threshold_scores(halves[0] + halves[1], 5)  # shards add up
    exact = multilabel_metrics(logits, actual, [str(i) for i in range(5)], tune_thresholds(sigmoid(logits), actual))
    assert abs(binned["macro_f1"] - exact["macro_f1"]) < 0.01 and abs(binned["micro_f1"] - exact["micro_f1"]) < 0.01
    at_half = multilabel_metrics(logits, actual, [str(i) for i in range(5)])
    assert binned["macro_f1"] > at_half["macro_f1"]


def test_evaluate_lowers_the_ece_of_the_project_model_and_keeps_its_predictions(project, tmp_path):
    metrics = json.loads((project / "reports" / "evaluate.json").read_text())
    assert metrics["ece"] <= metrics["ece_uncalibrated"]
    calibration = json.loads((project / "reports" / "calibration.json").read_text())
    assert calibration["task"] == "multiclass" and calibration["temperature"] > 0
    # the bundle applies it: probabilities change, the label does not
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["export"]["calibrate"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    plain = tmp_path / "plain"
    result = invoke("export", "--params", str(tmp_path / "params.yaml"), "--out", str(plain), "--report", str(tmp_path / "export.json"),
                    "--runtime", str(tmp_path / "runtime.json"), "--metrics", str(tmp_path / "metrics.json"), cwd=project)
    assert result.returncode == 0, result.stderr
    texts = ["a great film, truly wonderful", "dreadful and boring", "it was fine i guess"]
    calibrated, uncalibrated = (
        [json.loads(line) for line in invoke("predict", "--bundle", str(b), *texts, cwd=project).stdout.splitlines()]
        for b in (project / "models" / "export", plain)
    )
    assert [r["label"] for r in calibrated] == [r["label"] for r in uncalibrated]
    assert set(calibrated[0]) == {"text", "label", "score", "probabilities"}  # the multiclass record, as before
    if abs(calibration["temperature"] - 1) > 0.01:
        assert [r["score"] for r in calibrated] != [r["score"] for r in uncalibrated]


# --- every architecture and DDP train label sets -------------------------------------------------
@pytest.fixture(scope="module")
def label_set_raw(tmp_path_factory) -> Path:
    from pipeline.stages.download import run_download

    root = tmp_path_factory.mktemp("label-sets")
    write_jsonl(root / "source" / "train.jsonl", [{"text": t, "label": labels} for t, labels in label_sets(400, offset=20_000)])
    params = parse_params({"download": {"source": str(root / "source" / "train.jsonl"), "task": "multilabel"}})
    run_download(params.download, root / "raw", root / "data.json")
    return root


def tokenized(root: Path, name: str, params) -> Path:
    from pipeline.stages.tokenize import run_tokenize

    pretrained = params.model.pretrained if params.model.arch == "pretrained" else None
    run_tokenize(params.tokenize, root / "raw", root / name, root / f"{name}.json", progress=False, pretrained=pretrained)
    return root / name


def parse_params(data: dict):
    from pipeline.params import parse_params as parse

    return parse(data)


@pytest.mark.parametrize("arch", ["cnn", "lstm", "transformer", "pretrained"])
def test_every_architecture_trains_one_logit_per_label(label_set_raw, arch, tmp_path):
    from conftest import TINY_MODEL, TINY_TOKENIZE, write_tiny_bert

    from pipeline.data.tokenized import TokenizedSplit
    from pipeline.stages.train import run_train
    from pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint
    from pipeline.training.loader import predict_logits

    model = {**TINY_MODEL, "arch": arch}
    if arch == "pretrained":
        model = {"arch": "pretrained", "dropout": 0.0, "pretrained": {"source": str(write_tiny_bert(tmp_path / "bert"))}}
    params = parse_params({"tokenize": {**TINY_TOKENIZE, "workers": 1, "min_freq": 1}, "model": model,
                           "train": {"threads": 1, "max_epochs": 2, "lr": 0.02 if arch != "pretrained" else 1e-3}})
    shutil.copytree(label_set_raw / "raw", tmp_path / "raw")
    processed = tokenized(tmp_path, "processed", params)  # the pretrained model's own tokenizer, or spaCy
    run_train(params, processed, tmp_path / "models", tmp_path / "train.json", tmp_path / "live", tmp_path / "resume",
              runtime_path=tmp_path / "runtime.json", progress=False)
    test = TokenizedSplit(processed / "test")
    logits = predict_logits(model_from_checkpoint(load_checkpoint(tmp_path / "models" / "best.pt")), test, 64, __import__("torch").device("cpu"))
    assert test.multilabel and logits.shape == (len(test), len(LABEL_WORDS)) and np.isfinite(logits).all()
    runtime = json.loads((tmp_path / "runtime.json").read_text())
    assert runtime["monitor"] == "macro_f1" and set(runtime["class_weights"]) == set(LABEL_WORDS)  # auto, for label sets


def test_bag_pooling_auto_trains_both_poolings_on_label_sets_and_keeps_the_better(label_set_raw, tmp_path):
    from conftest import TINY_MODEL, TINY_TOKENIZE

    from pipeline.stages.train import run_train
    from pipeline.training.checkpoint import load_checkpoint

    def train(pooling: str, name: str) -> tuple[dict, Path]:
        params = parse_params({"tokenize": {**TINY_TOKENIZE, "workers": 1, "min_freq": 1},
                               "model": {**TINY_MODEL, "arch": "bag", "bag": {**TINY_MODEL["bag"], "pooling": pooling}},
                               "train": {"threads": 1, "max_epochs": 3, "lr": 0.02}})
        folder = tmp_path / name
        report = run_train(params, processed, folder / "models", folder / "train.json", folder / "live", folder / "resume", progress=False)
        return report, folder

    processed = tokenized(label_set_raw, "processed-pooling", parse_params({"tokenize": {**TINY_TOKENIZE, "workers": 1, "min_freq": 1}}))
    auto, folder = train("auto", "auto")
    candidates = auto["pooling_candidates"]
    assert set(candidates) == {"mean_max", "mean_label_max"}
    kept = max(candidates, key=lambda name: (candidates[name], name == "mean_max"))  # the first of equals: mean_max
    assert auto["pooling"] == kept and auto["best_validation"] == candidates[kept]
    assert load_checkpoint(folder / "models" / "best.pt")["model_config"]["bag"]["pooling"] == kept
    curve = (folder / "live" / "plots" / "metrics" / "validation" / "macro_f1.tsv").read_text().splitlines()[1:]
    assert max(float(line.split("\t")[1]) for line in curve) == pytest.approx(candidates[kept])  # the kept run's curves
    assert not (folder / "resume").exists()  # both candidates' resume folders are gone
    # each candidate ran as if alone: the same validation score as that pooling set explicitly
    alone, _ = train("mean_label_max", "alone")
    assert alone["best_validation"] == candidates["mean_label_max"] and "pooling_candidates" not in alone


@pytest.mark.slow
def test_two_processes_train_label_sets_as_one(label_set_raw, tmp_path):
    from conftest import TINY_MODEL, TINY_TOKENIZE, run_cli

    train = {"device": "cpu", "threads": 1, "max_epochs": 2, "lr": 0.02, "batch_size": 32}
    bag = {**TINY_MODEL, "arch": "bag", "bag": {**TINY_MODEL["bag"], "pooling": "mean_max"}}  # one pooling: no candidates
    params = parse_params({"tokenize": {**TINY_TOKENIZE, "workers": 1, "min_freq": 1}, "model": bag, "train": train})
    processed = tokenized(label_set_raw, "processed-ddp", params)
    histories = {}
    for devices in (1, 2):
        root = tmp_path / f"devices-{devices}"
        root.mkdir()
        write_params(root, tokenize=TINY_TOKENIZE, model=bag, train={**train, "devices": devices})
        result = run_cli("train", "--data", str(processed), cwd=root)
        assert result.returncode == 0, result.stderr
        histories[devices] = (root / "reports" / "train" / "plots" / "metrics" / "validation" / "macro_f1.tsv").read_text().splitlines()
    # the shards' tallies and threshold histograms add up: two processes score validation as one does
    assert len(histories[2]) == len(histories[1]) == 3
    for one, two in zip(histories[1][1:], histories[2][1:]):
        assert float(two.split("\t")[1]) == pytest.approx(float(one.split("\t")[1]), abs=0.05)  # dropout differs per rank
