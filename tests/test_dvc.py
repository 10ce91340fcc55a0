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
    assert ran(sh("dvc", "repro", cwd=project)) == ["download", "tokenize"]
    assert (project / "data" / "processed" / "train" / "ids.npy").is_file()
    assert ran(sh("dvc", "repro", cwd=project)) == []
    set_param(project, "tokenize", "min_freq", 1)
    assert ran(sh("dvc", "repro", cwd=project)) == ["tokenize"]
    assert "vocab_size" in sh("dvc", "metrics", "show", cwd=project)
    set_param(project, "download", "seed", 7)
    assert ran(sh("dvc", "repro", cwd=project)) == ["download", "tokenize"]
