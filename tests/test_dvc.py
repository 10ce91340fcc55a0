"""Real DVC in a temporary git repo: repro, a no-op repro, and a param change that reruns only what reads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, labelled_rows, write_csv

pytestmark = pytest.mark.slow


def sh(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def ran(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_csv(root / "source" / "train.csv", labelled_rows(80))
    write_csv(root / "source" / "test.csv", labelled_rows(20, offset=500))
    set_param(root, "download", "source", "source")
    set_param(root, "model", "bag", {"ngram": 2, "buckets": 5000, "sparse": True})  # a small model: fast
    set_param(root, "export", "latency_runs", 10)
    set_param(root, "export", "throughput_batches", 1)
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "t@example.com", cwd=root)
    sh("git", "config", "user.name", "test", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)
    return root


def set_param(root: Path, section: str, key: str, value: object) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_noop_and_param_change(project):
    assert ran(sh("dvc", "repro", cwd=project)) == ["download", "evaluate", "export", "tokenize", "train"]
    assert (project / "models" / "train" / "best.pt").is_file() and (project / "models" / "export" / "model.int8.onnx").is_file()
    sh("git", "add", "dvc.lock", cwd=project)
    sh("git", "commit", "-qm", "first run", cwd=project)
    assert ran(sh("dvc", "repro", cwd=project)) == []

    # a train param reruns train and the stages after it, and the metrics change shows in a diff
    assert ran(sh("dvc", "exp", "run", "-S", "train.lr=0.002", cwd=project)) == ["evaluate", "export", "train"]
    diff = sh("dvc", "metrics", "diff", "HEAD", cwd=project)
    assert "reports/metrics.json" in diff and "loss" in diff
    shown = sh("dvc", "metrics", "show", cwd=project)
    assert "accuracy" in shown and "vocab_size" in shown and "best_epoch" in shown and "onnx_int8_accuracy" in shown
    # an export param reruns export only
    assert ran(sh("dvc", "exp", "run", "-S", "export.latency_runs=12", cwd=project)) == ["export"]

    set_param(project, "tokenize", "min_freq", 1)
    assert ran(sh("dvc", "repro", cwd=project)) == ["evaluate", "export", "tokenize", "train"]
    set_param(project, "download", "seed", 7)
    assert ran(sh("dvc", "repro", cwd=project)) == ["download", "evaluate", "export", "tokenize", "train"]


def test_bad_params_in_exp_run_name_the_key(project):
    def failing(*args: str) -> str:
        result = subprocess.run(
            ["dvc", "exp", "run", *args], cwd=project, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
        assert result.returncode != 0
        return result.stdout + result.stderr

    assert "'train.lrr'" in failing("-S", "train.lrr=0.1")  # DVC itself refuses a key params.yaml lacks
    assert "train.lrr: unknown key" in failing("-S", "+train.lrr=0.1")  # added anyway: our validation names it
    sh("git", "checkout", "params.yaml", cwd=project)  # a failed run leaves its params in the workspace
    assert "train.lr: Input should be a valid number (got 'fast')" in failing("-S", "train.lr=fast")
