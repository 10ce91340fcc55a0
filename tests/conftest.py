"""Shared fixtures: params files, small datasets, a real HTTP server on 127.0.0.1, the CLI."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def needs_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (a user's clone has no ../shared)")
    return path


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name`, made by `build(folder)` once per test session for all of pytest-xdist's
    workers: the first to get here builds it under a file lock, the others wait and reuse it.
    Tests read it and write elsewhere (two workers may read it at once)."""
    basetemp = tmp_path_factory.getbasetemp()
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp  # the session's folder, above the workers'
    root, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            build(root)
            done.touch()
    return root


def copy_pipeline(root: Path) -> None:
    """The pipeline's code and its DVC files (not its params) into `root`, as a user's clone holds them."""
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)


def write_params(folder: Path, **sections: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` as a user would, in `cwd` (with `env` added to the environment)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def invoke(*args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """The CLI command run in this process by Typer's CliRunner, in `cwd`: the same exit code and
    output as `run_cli` without an interpreter start (2-4 s less). Error paths are tested this
    way; a bug still raises (no exception is swallowed), so a traceback cannot pass for a message."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), input=input, env=env, catch_exceptions=False)
    finally:
        os.chdir(previous)
        if sys.modules.get("torch", False) is None:  # the tokenize command blocks torch (pipeline/text/torchless.py): not for the next test
            del sys.modules["torch"]
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """One line on stderr that names the problem, exit 1, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# labelled_rows uses POSITIVE[0], [2] and NEGATIVE[1], [3] only (i % 2 picks the pool, i % 4 the phrase): a test
# that expects the fixture model to label a text right uses one of those; the others are unseen phrases
POSITIVE = ["a great film, truly wonderful", "loved it, brilliant acting", "superb and moving story", "excellent fun"]
NEGATIVE = ["a dull film, truly awful", "hated it, terrible acting", "boring and lifeless story", "dreadful mess"]


def labelled_rows(n: int, offset: int = 0) -> list[tuple[str, str]]:
    """n rows, alternating pos/neg, each text unique."""
    rows = []
    for i in range(offset, offset + n):
        pool, label = (POSITIVE, "pos") if i % 2 == 0 else (NEGATIVE, "neg")
        rows.append((f"{pool[i % len(pool)]} number {i}", label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] | None = ("text", "label"), sep: str = ",") -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=sep)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_tree(root: Path, splits: dict[str, int], extra_labels: dict[str, str] | None = None) -> Path:
    """<split>/<label>/<i>.txt files; extra_labels adds a label folder to one split only."""
    for split, n in splits.items():
        for i, (text, label) in enumerate(labelled_rows(n, offset=1000 if split == "test" else 0)):
            path = root / split / label / f"{i:05d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for split, label in (extra_labels or {}).items():
        path = root / split / label / "0.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("unlabelled review", encoding="utf-8")
    return root


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /truncated/<file> promises the whole file but sends half of it;
    /nolength/<file> sends it whole without Content-Length (the body ends when the connection
    closes, as in HTTP/1.0); /nolength-cut/<file> does the same but stops in the middle of a row."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        for prefix in ("/nolength/", "/nolength-cut/"):
            if self.path.startswith(prefix):
                data = (Path(self.directory) / self.path.removeprefix(prefix)).read_bytes()
                if prefix == "/nolength-cut/":
                    data = data[: data.index(b"\n", len(data) // 2) - 3]  # a few bytes short of a row's end
                self.send_response(200)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                self.close_connection = True
                return
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def http_server(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = lambda *a, **kw: _Handler(*a, directory=str(www), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def write_tiny_bert(folder: Path, max_positions: int = 128) -> Path:
    """A tiny BERT (random weights) with a WordPiece tokenizer over the fixture texts' words, saved
    as a Hugging Face model folder (config.json, model.safetensors, tokenizer.json): a real
    `model.pretrained.source` that needs no download."""
    import re

    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in POSITIVE + NEGATIVE for w in re.findall(r"\w+|[^\w\s]", text.lower())} | {"number", "<", ">", "/", "br"})
    pieces = [str(d) for d in range(10)] + [f"##{d}" for d in range(10)] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens = specials + words + pieces + [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in words]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(specials)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=max_positions)
    BertModel(config).save_pretrained(str(folder))
    return folder


# small models so that every architecture trains in seconds
TINY_MODEL = {
    "embed_dim": 16,
    "bag": {"buckets": 5000},
    "cnn": {"filters": 8, "widths": [2, 3]},
    "lstm": {"hidden": 16},
    "transformer": {"layers": 1, "heads": 2, "ff_dim": 32, "max_positions": 64},
}
# what a transformer with TINY_MODEL's max_positions needs (every test text is far shorter)
TINY_TOKENIZE = {"max_tokens": 64}
# quick measurements, and every weight quantized so that the int8 paths run even in tiny models
FAST_EXPORT = {"latency_runs": 10, "latency_warmup": 2, "throughput_batches": 2, "int8_min_weights": 0}


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """A tiny two-class project run through download -> ... -> export by the CLI, in the default
    layout. Shared by every worker: tests may read it and write elsewhere, not change it."""
    return built_once(tmp_path_factory, "project", build_project)


def build_project(root: Path) -> None:
    write_csv(root / "source" / "train.csv", labelled_rows(400))
    # every 7th test label is wrong on purpose, so that there are mistakes to report
    test = [(text, {"pos": "neg", "neg": "pos"}[label] if i % 7 == 0 else label) for i, (text, label) in enumerate(labelled_rows(140, offset=9000))]
    write_csv(root / "source" / "test.csv", test)
    write_params(
        root,
        download={"source": str(root / "source")},
        tokenize={"workers": 1, "min_freq": 1},
        model=TINY_MODEL,
        train={"max_epochs": 3, "lr": 0.05, "threads": 1},
        export={**FAST_EXPORT, "threads": 1},
    )
    for command in ("download", "tokenize", "train", "evaluate", "export", "baseline"):
        result = run_cli(command, cwd=root)
        assert result.returncode == 0, (command, result.stderr)
