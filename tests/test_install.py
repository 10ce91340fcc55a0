"""The light install: `pip install <project>` without extras runs `predict` and `serve` with
no torch, DVC or training stack in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO


@pytest.mark.slow
def test_light_install_predicts_without_torch(project, tmp_path):
    source = tmp_path / "source"  # a copy, so that building the package writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
                             env=env, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"light install: {time.monotonic() - started:.0f} s")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    missing = run("-c", "import importlib.util as u; print([m for m in ('torch', 'dvc', 'onnx', 'sklearn', 'pyarrow', 'pandas') if u.find_spec(m)])")
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr
    assert run("-c", "import torch").returncode != 0

    # two phrases of the fixture's training data (conftest.labelled_rows): the tiny model knows them
    result = run("-m", "pipeline", "predict", "--bundle", str(project / "models" / "export"), "superb and moving story", "dreadful mess")
    assert result.returncode == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == ["pos", "neg"]
    (tmp_path / "reviews.csv").write_text("id,review\n1,superb and moving story\n2,dreadful mess\n", encoding="utf-8")
    from_file = run("-m", "pipeline", "predict", "--bundle", str(project / "models" / "export"), "--file", "reviews.csv", "--column", "review")
    assert from_file.returncode == 0, from_file.stderr  # files are read without pandas
    assert [json.loads(line)["label"] for line in from_file.stdout.splitlines()] == ["pos", "neg"]
    served = run("-c", "import pathlib, pipeline.text.torchless; from pipeline.inference.serve import create_app; "
                       f"create_app(pathlib.Path({str(project / 'models' / 'export')!r})); print('ok')")
    assert served.stdout.strip() == "ok", served.stderr
