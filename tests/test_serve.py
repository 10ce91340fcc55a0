"""`serve` over real HTTP on 127.0.0.1: the CLI's server (create_app on uvicorn) in a
subprocess, real spaCy and ONNX Runtime, the `project` fixture's bundle (conftest)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import REPO, assert_user_error, invoke

from pipeline.inference.bundle import MANIFEST
from test_export import predict, records

LIMITS = ["--max-body-bytes", "20000", "--max-texts", "8", "--max-text-chars", "2000"]


def start_server(bundle: Path, *options: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--bundle", str(bundle), "--port", "0", *options],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    line = process.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, line + process.stderr.read()
    url = f"http://127.0.0.1:{match.group(1)}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the server did not answer /health within 60 s")


@pytest.fixture(scope="module")
def server(project):
    process, url = start_server(project / "models" / "export", "--workers", "0", "--max-wait-ms", "20", *LIMITS)
    yield url
    stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM: uvicorn shuts down gracefully, then re-raises the signal (exit status -15)."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in process.stderr.read()


def test_predict_one_text_and_a_batch(server, project):
    one = httpx.post(f"{server}/predict", json={"text": "a great film, truly wonderful"}, timeout=30)
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    body = one.json()
    assert set(body) == {"label", "score", "probabilities"} and body["label"] == "pos"
    assert body["score"] == max(body["probabilities"].values()) and abs(sum(body["probabilities"].values()) - 1) < 1e-5

    texts = ["a great film, truly wonderful", "", "dreadful mess", "loved it, brilliant acting"]
    batch = httpx.post(f"{server}/predict", json={"texts": texts}, timeout=30).json()["predictions"]
    cli = records(predict(*texts, cwd=project))  # the same answers as `predict`
    assert [p["label"] for p in batch] == [r["label"] for r in cli]
    for served, local in zip(batch, cli):
        assert all(abs(served["probabilities"][k] - local["probabilities"][k]) < 0.02 for k in ("neg", "pos"))
    assert httpx.post(f"{server}/predict", json={"texts": []}, timeout=30).json() == {"predictions": []}


def test_health_and_metadata(server, project):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    meta = httpx.get(f"{server}/metadata").json()
    manifest = json.loads((project / "models" / "export" / MANIFEST).read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["arch"] == "bag" and meta["model"] == "model.int8.onnx"
    assert meta["files_sha256"] == {name: entry["sha256"] for name, entry in manifest["files"].items()}
    assert {"onnxruntime", "spacy", "pipeline"} <= meta["versions"].keys()
    assert meta["limits"]["max_texts"] == 8


def test_concurrent_requests_are_batched(server):
    before = httpx.get(f"{server}/metadata").json()["served"]
    texts = [f"a great film number {i}" for i in range(48)]
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda t: httpx.post(f"{server}/predict", json={"text": t}, timeout=60), texts))
    assert [a.status_code for a in answers] == [200] * 48
    after = httpx.get(f"{server}/metadata").json()["served"]
    assert after["texts"] - before["texts"] == 48
    assert after["batches"] - before["batches"] < 48  # requests shared ONNX Runtime calls


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"text": "unterminated', 400, "not valid JSON"),
        (b"\xff\xfe not utf-8", 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b'{"text": 3}', 422, "text"),
        (b'["a list"]', 422, "texts"),
        (b'{"text": "a", "texts": ["b"]}', 422, "exactly one"),
        (b'{"texts": ["a", 2]}', 422, "texts"),
        (b'{"review": "a"}', 422, "texts"),
        (json.dumps({"texts": ["a"] * 9}).encode(), 413, "at most 8"),
        (json.dumps({"text": "a" * 2001}).encode(), 413, "at most 2,000"),
        (json.dumps({"text": "a" * 30000}).encode(), 413, "over 20,000 bytes"),
    ],
)
def test_bad_requests_get_4xx_and_a_json_error(server, body, status, fragment):
    answer = httpx.post(f"{server}/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == status, answer.text
    assert fragment in json.dumps(answer.json())


def test_bad_http_never_gets_a_500(server):
    host, port = server.removeprefix("http://").split(":")
    answers = []
    for raw in (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n{}",
                b"GARBAGE\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            answers.append(sock.recv(4096).split(b" ", 2)[1])
    assert all(code.startswith(b"4") for code in answers), answers
    assert httpx.get(f"{server}/predict").status_code == 405
    assert httpx.get(f"{server}/nothing").json() == {"error": "Not Found"}
    # a chunked body without Content-Length is cut off at the limit too
    chunks = (b"x" * 5000 for _ in range(10))
    assert httpx.post(f"{server}/predict", content=chunks, timeout=30).status_code == 413


def test_sigterm_lets_in_flight_requests_finish(project):
    # a long batching wait keeps the request in flight when the signal comes
    process, url = start_server(project / "models" / "export", "--workers", "0", "--max-wait-ms", "1500")
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/predict", json={"text": "superb and moving story"}, timeout=60)))
    thread.start()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM) and "Traceback" not in process.stderr.read()
    assert answers and answers[0].status_code == 200 and answers[0].json()["label"] == "pos"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


def test_serve_with_a_tokenizing_process(project):
    process, url = start_server(project / "models" / "export", "--workers", "1")
    try:
        answer = httpx.post(f"{url}/predict", json={"texts": ["dreadful mess", "superb and moving story"]}, timeout=60)
        assert [p["label"] for p in answer.json()["predictions"]] == ["neg", "pos"]
    finally:
        stop(process)


def test_a_bad_bundle_is_one_line(project, tmp_path):
    assert_user_error(invoke("serve", "--bundle", str(tmp_path / "none"), "--port", "0", cwd=tmp_path), "no model bundle")
