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
    """SIGTERM: the server drains and exits 0, its tokenizing processes stopped cleanly."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr


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
    assert process.wait(timeout=60) == 0 and "Traceback" not in process.stderr.read()
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


# --- abuse: one client must not hurt the others ---------------------------------------------
def test_invalid_unicode_is_replaced_and_poison_hurts_no_one(server):
    """A lone surrogate (a JSON escape no text can hold) is replaced by U+FFFD, as in download
    and predict; among 150 concurrent requests, one in 30 poisoned, every one succeeds."""
    poison = b'{"text": "a great film \\ud800 truly"}'
    answer = httpx.post(f"{server}/predict", content=poison, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["label"] in ("neg", "pos")
    assert httpx.get(f"{server}/metadata").json()["served"]["invalid_unicode_replaced"] >= 1

    def post(i: int) -> int:
        body = poison if i % 30 == 0 else json.dumps({"text": f"dreadful mess number {i}"}).encode()
        return httpx.post(f"{server}/predict", content=body, headers={"content-type": "application/json"}, timeout=60).status_code

    with ThreadPoolExecutor(64) as pool:
        assert list(pool.map(post, range(150))) == [200] * 150


def test_deeply_nested_json_is_a_400_with_a_json_body(server):
    body = b"[" * 100_000 + b"]" * 100_000
    answer = httpx.post(f"{server}/predict", content=body[:19_000] + body[-1000:], headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]


def test_slow_headers_are_cut_off(project):
    process, url = start_server(project / "models" / "export", "--workers", "0", "--header-timeout", "1")
    try:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
            started = time.monotonic()
            assert sock.recv(4096) == b""  # closed by the server
            assert time.monotonic() - started < 5
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the others are served
    finally:
        stop(process)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        todo += children
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_dead_tokenizing_process_is_replaced(project):
    process, url = start_server(project / "models" / "export", "--workers", "1")
    try:
        assert httpx.post(f"{url}/predict", json={"text": "dreadful mess"}, timeout=60).status_code == 200
        workers = [pid for pid in descendants(process.pid) if "forkserver" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                   and any(pid in descendants(parent) for parent in descendants(process.pid) if parent != pid)]
        assert workers, "no tokenizing process found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        answers = [httpx.post(f"{url}/predict", json={"text": "superb and moving story"}, timeout=60) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5 and answers[0].json()["label"] == "pos"
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
    finally:
        stop(process)


@pytest.fixture
def app_client(project, monkeypatch):
    """The app in this process (Starlette's TestClient, lifespan run), with the classifier's
    tokenizing wrapped by `monkeypatch`-able behaviour: texts holding POISON raise ValueError,
    BUG raises KeyError, SLOW sleeps."""
    from starlette.testclient import TestClient

    from pipeline.inference.classifier import Classifier
    from pipeline.inference.serve import Limits, create_app

    tokenize = Classifier.tokenize

    def misbehaving(self, texts):
        if any("POISON" in t for t in texts):
            raise ValueError("a text the tokenizer cannot take")
        if any("BUG" in t for t in texts):
            raise KeyError("a bug")
        if any("SLOW" in t for t in texts):
            time.sleep(1.0)
        return tokenize(self, texts)

    monkeypatch.setattr(Classifier, "tokenize", misbehaving)

    def make(**limits):
        app = create_app(project / "models" / "export", limits=Limits(**{"max_wait_ms": 50, **limits}), workers=0)
        return TestClient(app, raise_server_exceptions=False)

    return make


def test_a_failing_text_fails_only_its_own_request(app_client):
    with app_client() as client, ThreadPoolExecutor(8) as pool:
        texts = ["POISON here" if i == 3 else f"dreadful mess number {i}" for i in range(8)]
        answers = list(pool.map(lambda t: client.post("/predict", json={"text": t}), texts))
    assert [a.status_code for a in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    assert "cannot be classified" in answers[3].json()["error"]


def test_a_bug_is_a_json_500_and_the_server_goes_on(app_client):
    with app_client() as client:
        answer = client.post("/predict", json={"text": "a BUG in our code"})
        assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
        assert "internal error" in answer.json()["error"]
        assert client.post("/predict", json={"text": "dreadful mess"}).status_code == 200


def test_a_full_queue_and_a_late_answer_are_503_with_retry_after(app_client):
    with app_client(max_queue=1, max_batch=1) as client, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: client.post("/predict", json={"text": f"SLOW {i}"}), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 503 in codes, codes
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    with app_client(request_timeout_s=0.3) as client:
        late = client.post("/predict", json={"text": "SLOW"})
        assert late.status_code == 503 and late.headers["retry-after"] == "1" and "no answer within 0.3 s" in late.json()["error"]
