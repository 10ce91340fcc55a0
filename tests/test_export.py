"""The export stage and `predict`: real ONNX export, real ONNX Runtime, real spaCy; CPU.

`project` (conftest) is a tiny project run through every stage by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import FAST_EXPORT, REPO, TINY_MODEL, assert_user_error, labelled_rows, invoke, write_csv

from pipeline.files import sha256_of
from pipeline.inference.bundle import MANIFEST, Bundle, onnx_session, run_session
from pipeline.stages.export import edge_inputs, run_export
from pipeline.params import parse_params
from pipeline.stages.train import run_train



def predict(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The predict command, run in this process (test_predict_stream.py runs it as a process)."""
    return invoke("predict", *args, cwd=cwd, input=stdin)


def records(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_bundle_and_report(project):
    report_keys = {"torch_fp32_accuracy", "onnx_int8_accuracy", "onnx_fp32_max_abs_diff", "onnx_fp32_checked_documents", "onnx_fp32_bytes", "onnx_int8_bytes"}
    runtime_keys = {
        "latency_ms_batch1_torch_fp32", "latency_ms_batch1_onnx_fp32", "latency_ms_batch1_onnx_int8",
        "throughput_batch64_onnx_int8", "int8_speedup_batch1", "opset", "threads", "seconds",
    }
    report = json.loads((project / "reports" / "export.json").read_text())
    runtime = json.loads((project / "reports" / "runtime" / "export.json").read_text())
    assert report_keys <= report.keys() and runtime_keys <= runtime.keys()
    assert not runtime.keys() & report.keys()  # timings stay out of the metrics, which DVC diffs
    assert all(isinstance(v, (int, float)) for v in report.values())  # flat numbers: DVC metrics
    assert all(runtime[k] > 0 for k in runtime_keys)
    assert report["onnx_fp32_max_abs_diff"] <= 1e-4
    # PyTorch's test logits are the evaluate stage's (computed on this CPU), not a second pass
    metrics = json.loads((project / "reports" / "evaluate.json").read_text())
    assert report["torch_fp32_accuracy"] == metrics["accuracy"] and runtime["torch_test_logits"] == "evaluate"
    assert abs(report["onnx_int8_accuracy"] - report["torch_fp32_accuracy"]) <= 0.05
    assert report["documents"] == 140 and report["tokenizer_checked_documents"] == 140
    assert report["onnx_fp32_checked_documents"] == 140  # fewer than export.parity_documents: all of them

    bundle = project / "models" / "export"
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["arch"] == "bag" and manifest["opset"] == 18
    assert {"torch", "onnx", "onnxruntime", "spacy"} <= manifest["versions"].keys()
    assert manifest["params"]["text"] == {"language": "en", "lowercase": True, "strip_html": True, "max_tokens": 1000, "truncation": "head", "tokenizer": "spacy"}
    for name, entry in manifest["files"].items():
        assert sha256_of(bundle / name) == entry["sha256"] and (bundle / name).stat().st_size == entry["bytes"]
    assert report["onnx_fp32_bytes"] == manifest["files"]["model.onnx"]["bytes"]

    graph = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    assert graph.opset_import[0].version == 18
    ids = graph.graph.input[0].type.tensor_type.shape.dim
    assert ids[0].dim_param and ids[1].dim_param  # dynamic batch and time axes
    assert {"DequantizeLinear", "MatMulInteger"} <= {n.op_type for n in onnx.load(str(bundle / "model.int8.onnx")).graph.node}


@pytest.mark.parametrize("arch", ["bag", "bag:mean_label_max", "cnn", "lstm", "transformer"])
def test_every_architecture_exports_with_parity(project, arch, tmp_path):
    processed, raw = project / "data" / "processed", project / "data" / "raw"
    arch, _, pooling = arch.partition(":")
    # the project's data keeps up to 1000 tokens: the tiny transformer needs that many positions
    model = {**TINY_MODEL, "arch": arch, "transformer": {**TINY_MODEL["transformer"], "max_positions": 1000}}
    if pooling:
        model["bag"] = {**TINY_MODEL["bag"], "pooling": pooling}
    params = parse_params({"model": model, "train": {"max_epochs": 1, "lr": 0.02, "threads": 1}, "export": FAST_EXPORT})
    run_train(params, processed, tmp_path / "models", tmp_path / "train.json", tmp_path / "live", tmp_path / "resume", progress=False)
    report = run_export(params, tmp_path / "models" / "best.pt", processed, raw, tmp_path / "export", tmp_path / "export.json")
    assert report["onnx_fp32_max_abs_diff"] <= 1e-4, report
    assert report["onnx_fp32_checked_documents"] == 140 and report["torch_test_logits"] == "export"  # no evaluate here
    assert abs(report["onnx_int8_accuracy"] - report["torch_fp32_accuracy"]) <= 0.1
    quantized = set(json.loads((tmp_path / "export" / MANIFEST).read_text())["int8_quantized_ops"])
    assert quantized >= {"DynamicQuantizeLSTM"} if arch == "lstm" else quantized >= {"DequantizeLinear"}

    # the empty text and a one-token text run through the exported graph, and agree with PyTorch
    from pipeline.data.tokenized import TokenizedSplit

    session = onnx_session(tmp_path / "export" / "model.onnx")
    ids, lengths = edge_inputs(TokenizedSplit(processed / "test"))
    assert lengths.tolist()[:2] == [0, 1]
    logits = run_session(session, ids, lengths)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()


def test_predict_from_arguments_and_stdin(project):
    out = records(predict("a great film, truly wonderful", "", "dreadful mess", cwd=project))
    assert [r["text"] for r in out] == ["a great film, truly wonderful", "", "dreadful mess"]
    assert out[0]["label"] == "pos" and out[2]["label"] == "neg"
    for r in out:  # the empty text gets a prediction like any other
        assert set(r) == {"text", "label", "score", "probabilities"}
        assert set(r["probabilities"]) == {"neg", "pos"}
        assert r["score"] == max(r["probabilities"].values()) and abs(sum(r["probabilities"].values()) - 1) < 1e-5

    piped = records(predict(cwd=project, stdin="a great film, truly wonderful\n\ndreadful mess\n"))
    assert [(r["text"], r["label"]) for r in piped] == [(r["text"], r["label"]) for r in out]
    # the bundle as the first argument, and the fp32 model
    explicit = records(predict(str(project / "models" / "export"), "--fp32", "dreadful mess", cwd=project.parent))
    assert explicit[0]["label"] == "neg" and explicit[0]["text"] == "dreadful mess"


def test_predict_files_agree_with_the_export_stage(project, tmp_path):
    """predict on the raw test texts reproduces the export stage's int8 accuracy."""
    test = pd.read_parquet(project / "data" / "raw" / "test.parquet")
    test.to_csv(tmp_path / "test.csv", index=False)
    test.rename(columns={"text": "review"}).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    (tmp_path / "test.txt").write_text("\n".join(test["text"]) + "\n", encoding="utf-8")

    report = json.loads((project / "reports" / "export.json").read_text())
    for args in (["--file", str(tmp_path / "test.csv")], ["--file", str(tmp_path / "test.jsonl"), "--column", "review"],
                 ["--file", str(tmp_path / "test.txt")]):
        out = records(predict(*args, cwd=project))
        assert [r["text"] for r in out] == test["text"].tolist()
        accuracy = np.mean([r["label"] == label for r, label in zip(out, test["label"])])
        assert abs(accuracy - report["onnx_int8_accuracy"]) <= 1 / len(test), args

    written = predict("--file", str(tmp_path / "test.csv"), "--out", str(tmp_path / "out.jsonl"), cwd=project)
    assert written.returncode == 0 and "140 texts" in written.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 140


def test_predict_in_worker_processes_keeps_the_order(project, tmp_path):
    texts = [text for text, _ in labelled_rows(1300, offset=20000)]  # more than two chunks
    (tmp_path / "many.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    pooled = records(predict("--file", str(tmp_path / "many.txt"), "--workers", "2", cwd=project))
    single = records(predict("--file", str(tmp_path / "many.txt"), "--workers", "1", cwd=project))
    assert [r["text"] for r in pooled] == texts
    assert pooled == single


def predict_watching_imports(*args: str, cwd: Path, modules: tuple[str, ...] = ("torch",)) -> tuple[list[str], list[str]]:
    """`predict` run by the CLI in a fresh interpreter: its output lines, and which of `modules` it imported."""
    code = (
        "import json, sys\n"
        "from pipeline.cli import app\n"
        "try:\n"
        f"    app(['predict', *{list(args)!r}])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"print(json.dumps(sorted(m for m in {list(modules)!r} if sys.modules.get(m) is not None)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *lines, imported = result.stdout.splitlines()
    return lines, json.loads(imported)


def test_predict_does_not_import_torch(project):
    lines, imported = predict_watching_imports("a great film", cwd=project)
    assert '"label"' in lines[0] and imported == []


@pytest.fixture
def bundle_copy(project, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(project / "models" / "export", tmp_path / "bundle"))


def test_corrupt_bundles_are_named(project, bundle_copy, tmp_path):
    assert_user_error(predict(str(tmp_path / "nothing"), "text", cwd=tmp_path), "no model bundle", "export")  # not a folder: a text
    assert_user_error(predict("text", cwd=tmp_path), "models/export", "no model bundle")

    model = bundle_copy / "model.int8.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    assert_user_error(predict(str(bundle_copy), "text", cwd=tmp_path), "model.int8.onnx", "checksum")
    assert records(predict(str(bundle_copy), "--fp32", "text", cwd=tmp_path))  # only the files used are checked

    # damaged, with a manifest that agrees: ONNX Runtime's refusal becomes one clear line
    model.write_bytes(b"not an onnx model")
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"]["model.int8.onnx"] = {"bytes": model.stat().st_size, "sha256": sha256_of(model)}
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    assert_user_error(predict(str(bundle_copy), "text", cwd=tmp_path), "model.int8.onnx", "ONNX Runtime cannot load it")

    (bundle_copy / MANIFEST).write_text("{not json")
    assert_user_error(predict(str(bundle_copy), "text", cwd=tmp_path), "manifest.json", "not readable JSON")
    (bundle_copy / MANIFEST).unlink()
    assert_user_error(predict(str(bundle_copy), "text", cwd=tmp_path), "manifest.json", "missing")


def test_predict_input_errors(project, tmp_path):
    assert_user_error(predict("--file", str(tmp_path / "none.txt"), cwd=project), "none.txt", "no such file")
    write_csv(tmp_path / "t.csv", [("x", "y")], header=("body", "label"))
    assert_user_error(predict("--file", str(tmp_path / "t.csv"), cwd=project), "no column 'text'", "body", "--column")
    (tmp_path / "t.jsonl").write_text('{"text": "fine"}\n[1, 2]\n')
    assert_user_error(predict("--file", str(tmp_path / "t.jsonl"), cwd=project), "t.jsonl: line 2", "not a JSON object")
    (tmp_path / "latin.txt").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    assert_user_error(predict("--file", str(tmp_path / "latin.txt"), cwd=project), "latin.txt: line 2", "utf-8", "--encoding")
    latin = records(predict("--file", str(tmp_path / "latin.txt"), "--encoding", "latin-1", cwd=project))
    assert [r["text"] for r in latin] == ["fine", "café"]
    assert_user_error(predict("--file", str(tmp_path / "t.csv"), "a text", cwd=project), "not both")


def test_export_errors_leave_the_previous_bundle(project, tmp_path):
    before = sha256_of(project / "models" / "export" / "manifest.json")
    assert_user_error(invoke("export", "--checkpoint", str(tmp_path / "none.pt"), cwd=project), "none.pt not found")
    assert_user_error(invoke("export", "--raw", str(tmp_path), cwd=project), "test.parquet")
    assert sha256_of(project / "models" / "export" / "manifest.json") == before
    assert Bundle.load(project / "models" / "export").labels == ["neg", "pos"]


def _negated_output(source: Path, target: Path) -> Path:
    """A deliberately broken graph: the model's logits, negated (every argmax flips)."""
    graph = onnx.load(str(source))
    name = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [f"{name}_raw" if out == name else out for out in node.output]
    graph.graph.node.append(onnx.helper.make_node("Neg", [f"{name}_raw"], [name]))
    onnx.save(graph, str(target))
    return target


def _scaled_table(source: Path, target: Path, factor: float) -> Path:
    """A deliberately broken graph: the largest float weight (the embedding table) scaled."""
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    floats = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    table = max(floats, key=lambda t: int(np.prod(t.dims)))
    table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table) * np.float32(factor), table.name))
    onnx.save(graph, str(target))
    return target


def test_the_export_gate_fails_on_broken_graphs(project, tmp_path):
    from pipeline.training.checkpoint import load_scoring_inputs, model_from_checkpoint
    from pipeline.errors import PipelineError
    from pipeline.stages.export import check_gate

    bundle = project / "models" / "export"
    checkpoint, _, test, _ = load_scoring_inputs(project / "models" / "train" / "best.pt", project / "data" / "processed",
                                                 project / "data" / "raw")
    model = model_from_checkpoint(checkpoint)
    config = parse_params({"export": FAST_EXPORT}).export
    fp32, int8 = onnx_session(bundle / "model.onnx"), onnx_session(bundle / "model.int8.onnx")
    passed = check_gate(model, test, fp32, int8, config)  # the real bundle passes
    assert passed["fp32_diff"] <= config.max_abs_diff

    scaled = onnx_session(_scaled_table(bundle / "model.onnx", tmp_path / "scaled.onnx", 1.5))
    with pytest.raises(PipelineError, match=r"ONNX fp32 logits differ from PyTorch's by up to .*export.max_abs_diff 0.001"):
        check_gate(model, test, scaled, int8, config)
    negated = onnx_session(_negated_output(bundle / "model.onnx", tmp_path / "negated.onnx"))
    loose = parse_params({"export": {**FAST_EXPORT, "max_abs_diff": 1e6}}).export
    with pytest.raises(PipelineError, match=r"ONNX fp32 predicts another class than PyTorch for \d+ inputs"):
        check_gate(model, test, negated, int8, loose)  # within the tolerance, but the classes differ
    with pytest.raises(PipelineError, match=r"int8 test accuracy .* points below PyTorch's .*export.max_int8_drop 0.01"):
        check_gate(model, test, fp32, negated, config)  # a broken int8 graph
    check_gate(model, test, fp32, negated, parse_params({"export": {**FAST_EXPORT, "max_int8_drop": 1}}).export)


def test_the_export_stage_is_gated_and_replaces_nothing(project, tmp_path):
    import shutil

    import yaml

    diff = json.loads((project / "reports" / "export.json").read_text())["onnx_fp32_max_abs_diff"]
    assert diff > 0  # fp32 rounding differs between the engines, so a tolerance below it must fail the stage
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["export"]["max_abs_diff"] = diff / 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = Path(shutil.copytree(project / "models" / "export", tmp_path / "export"))
    before = {p.name: sha256_of(p) for p in out.iterdir()}
    result = invoke("export", "--params", str(tmp_path / "params.yaml"), "--out", str(out), "--report", str(tmp_path / "r.json"),
                     "--runtime", str(tmp_path / "rt.json"), "--metrics", str(tmp_path / "m.json"), cwd=project)
    assert_user_error(result, "export gate", "export.max_abs_diff", "not replaced")
    assert {p.name: sha256_of(p) for p in out.iterdir()} == before
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob(".export.*"))


def test_the_bundle_records_its_tokenizer(project, bundle_copy, tmp_path):
    import spacy

    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    record = manifest["tokenizer"]
    assert record["spacy"] == spacy.__version__ and "https://example.com" in record["probe"] and len(record["probe_ids"]) > 50
    assert len(set(record["probe_ids"]) - {1}) > 20  # vocabulary words in the probe: the ids say something

    manifest["tokenizer"]["spacy"] = "3.7.0"  # exported under another version, same ids: a warning
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    result = predict("--bundle", str(bundle_copy), "great fun", cwd=tmp_path)
    assert records(result) and "warning:" in result.stderr and "spaCy 3.7.0" in result.stderr

    manifest["tokenizer"]["probe_ids"][5] += 1  # the installed spaCy would give other ids: refused
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    assert_user_error(predict("--bundle", str(bundle_copy), "great fun", cwd=tmp_path), "tokenizes text differently", "spacy==3.7.0")


def test_two_folders_give_byte_identical_checkpoints_and_bundles(project, tmp_path):
    """The same run in two places (other absolute paths): best.pt and every bundle file are the
    same bytes, so DVC sees no change where there is none and no build path ships in a bundle."""
    import shutil

    digests = []
    for root in (tmp_path / "a", tmp_path / "elsewhere" / "b"):
        root.mkdir(parents=True)
        shutil.copy(project / "params.yaml", root / "params.yaml")
        shutil.copytree(project / "data", root / "data")
        for command in ("train", "evaluate", "export"):
            assert invoke(command, cwd=root).returncode == 0
        files = [root / "models" / "train" / "best.pt", root / "reports" / "calibration.json", *sorted((root / "models" / "export").iterdir())]
        digests.append({path.relative_to(root).as_posix(): sha256_of(path) for path in files})
        assert all(str(tmp_path).encode() not in path.read_bytes() for path in files)
    assert digests[0] == digests[1]


def test_the_parity_sample_is_seeded_and_the_speed_measurement_keeps_to_its_budget():
    import time

    import numpy as np

    from pipeline.stages.export import parity_sample, time_blocks

    assert np.array_equal(parity_sample(140, 1000, 0), np.arange(140))  # a small split: every document
    sample = parity_sample(24_799, 1000, 0)
    assert len(sample) == len(set(sample)) == 1000 and np.array_equal(sample, np.sort(sample))
    assert np.array_equal(sample, parity_sample(24_799, 1000, 0)) and not np.array_equal(sample, parity_sample(24_799, 1000, 1))

    def slow(ids, lengths):
        time.sleep(0.005)

    inputs = [(None, None)] * 100
    rng = np.random.default_rng(0)
    everything = time_blocks({"a": slow, "b": slow}, inputs, 0, 10, rng)
    assert [len(times) for times in everything.values()] == [100, 100]
    capped = time_blocks({"a": slow, "b": slow}, inputs, 0, 10, rng, budget_seconds=0.15)
    assert all(10 <= len(times) < 100 and len(times) % 10 == 0 for times in capped.values()), capped  # whole rounds, fewer of them


def test_evaluate_logits_stand_in_for_pytorch_only_when_computed_on_a_cpu(tmp_path):
    import numpy as np
    import torch

    from pipeline.training.loader import reusable_test_logits, save_test_logits

    logits = np.arange(12, dtype=np.float32).reshape(6, 2)
    for name, device in (("cpu", "cpu"), ("cuda", "cuda")):
        (tmp_path / name).mkdir()
        save_test_logits(tmp_path / name, logits, torch.device(device))
    assert np.array_equal(reusable_test_logits(tmp_path / "cpu", 6, 2), logits)
    assert reusable_test_logits(tmp_path / "cuda", 6, 2) is None  # another computation: export scores again
    assert reusable_test_logits(tmp_path / "cpu", 7, 2) is None and reusable_test_logits(tmp_path / "none", 6, 2) is None
