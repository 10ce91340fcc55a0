"""`predict` streams: output as input arrives, bad lines after the good ones, the download
stage's formats (BOM, long fields, encodings), and a bundle that is named, never guessed.
Real spaCy and ONNX Runtime on the `project` fixture's bundle (conftest)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, assert_user_error
from test_export import predict, records


def test_output_appears_while_input_is_still_arriving(project):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "predict", "--workers", "1"],
        cwd=project, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        process.stdin.write(b"a great film, truly wonderful\ndreadful mess\n")
        process.stdin.flush()  # and keep stdin open: more input may come
        deadline = time.monotonic() + 60
        ready: list = []
        while not ready and time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
        assert ready, process.stderr.read().decode() if process.poll() is not None else "no output while stdin was open"
        first = json.loads(process.stdout.readline())
        assert first["text"] == "a great film, truly wonderful" and first["label"] == "pos"
        assert process.poll() is None  # still running: it did not wait for the end of the input
        process.stdin.write(b"excellent fun\n")
        process.stdin.close()
        rest = [json.loads(line) for line in process.stdout.read().splitlines()]
        assert process.wait(timeout=60) == 0
        assert [r["text"] for r in rest] == ["dreadful mess", "excellent fun"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def write_jsonl(path: Path, good_before: int, good_after: int) -> Path:
    lines = [json.dumps({"text": f"a great film number {i}"}) for i in range(good_before)]
    lines.append('{"text": "broken')
    lines += [json.dumps({"text": f"a dull film number {i}"}) for i in range(good_after)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_bad_line_comes_after_everything_before_it(project, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", 1200, 300)  # the bad line is in the third chunk
    result = predict("--file", str(source), cwd=project)
    assert_user_error(result, "in.jsonl: line 1201", "not valid JSON")
    written = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in written] == [f"a great film number {i}" for i in range(1200)]

    # --out: the file is written whole or not at all
    assert_user_error(predict("--file", str(source), "--out", str(tmp_path / "out.jsonl"), cwd=project), "line 1201")
    assert not (tmp_path / "out.jsonl").exists()

    skipped = predict("--file", str(source), "--skip-bad", cwd=project)
    out = records(skipped)
    assert len(out) == 1500 and out[1200]["text"] == "a dull film number 0"
    assert "skipped 1 bad lines" in skipped.stderr and "line 1201" in skipped.stderr


def test_files_are_read_like_the_download_stage(project, tmp_path):
    long_text = "a great film " * 20000  # 260,000 characters: over csv's default field limit
    (tmp_path / "bom.csv").write_bytes(("\ufefftext,label\n" f'"{long_text}",pos\n' '"dreadful, a mess",neg\n').encode("utf-8"))
    out = records(predict("--file", str(tmp_path / "bom.csv"), "--full-text", cwd=project))
    assert [r["text"] for r in out] == [long_text, "dreadful, a mess"]
    cut = records(predict("--file", str(tmp_path / "bom.csv"), cwd=project))  # by default a line echoes 1,000 characters
    assert cut[0]["text"] == long_text[:999] + "…" and cut[1]["text"] == "dreadful, a mess"
    assert [r["probabilities"] for r in cut] == [r["probabilities"] for r in out]  # the model read the whole text

    (tmp_path / "t.tsv").write_text("id\tbody\n1\tsuperb and moving story\n2\tdreadful mess\n", encoding="utf-8")
    out = records(predict("--file", str(tmp_path / "t.tsv"), "--column", "body", cwd=project))
    assert [(r["text"], r["label"]) for r in out] == [("superb and moving story", "pos"), ("dreadful mess", "neg")]

    (tmp_path / "short.csv").write_text("text,label\nfine,pos\nno label\n", encoding="utf-8")
    assert_user_error(predict("--file", str(tmp_path / "short.csv"), cwd=project), "short.csv: line 3", "1 fields", "header has 2")

    (tmp_path / "cp.txt").write_bytes("très bien\n".encode("cp1252"))
    assert [r["text"] for r in records(predict("--file", str(tmp_path / "cp.txt"), "--encoding", "cp1252", cwd=project))] == ["très bien"]
    assert_user_error(predict("--file", str(tmp_path / "cp.txt"), "--encoding", "klingon", cwd=project), "klingon", "--encoding")
    piped = records(_stdin_bytes(project, "très bien\n".encode("cp1252")))
    assert piped[0]["text"] == "très bien"


def _stdin_bytes(project: Path, data: bytes) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--encoding", "cp1252"], cwd=project, env=env,
                            input=data, capture_output=True, timeout=300)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_the_bundle_is_named_not_guessed(project, tmp_path):
    assert_user_error(predict("models/exprot", "great fun", cwd=project), "models/exprot", "no model bundle", "--bundle")
    out = records(predict("", "dreadful mess", cwd=project))  # an empty first text is a text
    assert [r["text"] for r in out] == ["", "dreadful mess"]
    bundle = str(project / "models" / "export")
    out = records(predict("--bundle", bundle, "models/exprot", "a/b", cwd=tmp_path))  # with --bundle every argument is a text
    assert [r["text"] for r in out] == ["models/exprot", "a/b"]
    (tmp_path / "reviews.txt").write_text("fine\n", encoding="utf-8")
    assert_user_error(predict("--bundle", bundle, "--file", str(tmp_path / "nothing.txt"), cwd=tmp_path), "nothing.txt", "no such file")
    assert_user_error(predict("./reviews.txt", cwd=tmp_path), "reviews.txt is a file", "--file")
    assert_user_error(predict("--bundle", str(tmp_path), "fine", cwd=tmp_path), "manifest.json")


def test_invalid_unicode_is_replaced_in_files_and_arguments(project, tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "fine"}\n{"text": "broken \\ud83d emoji"}\n', encoding="utf-8")
    result = predict("--file", str(tmp_path / "t.jsonl"), cwd=project)
    assert [r["text"] for r in records(result)] == ["fine", "broken \ufffd emoji"]
    assert "replaced 1 invalid characters (lone surrogates) with U+FFFD" in result.stderr
    # bytes that are not UTF-8 on the command line reach Python as lone surrogates
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable.encode(), b"-m", b"pipeline", b"predict", b"caf\xe9 au lait"]
    raw = subprocess.run(argv, cwd=project, env=env, capture_output=True, timeout=300)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["text"] == "caf\ufffd au lait"
