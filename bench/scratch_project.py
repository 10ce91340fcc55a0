"""A throwaway DVC project for the benchmarks: the pipeline, dvc.yaml and the default params
copied into a temporary git repo, with `download.source` (and any other param) set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared/data/imdb/aclImdb.tar.gz"
DVC = str(Path(sys.executable).parent / "dvc")


def run(*args: str, cwd: Path) -> str:
    """Run a command (with this interpreter's environment first on PATH, so that the stages'
    `python -m pipeline` is this one); stop the benchmark with its output if it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def make_project(root: Path, source: str | Path, **sections: dict) -> Path:
    """Copy the pipeline into `root` (a git + DVC repo, one commit), with the shipped params
    except `download.source` and the given section overrides."""
    from pipeline.params import Params

    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    params = Params().model_dump()
    params["download"]["source"] = str(Path(source).resolve())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                    ["git", "config", "user.name", "bench"], [DVC, "init", "-q"]):
        run(*command, cwd=root)
    return root


def commit(root: Path, message: str) -> None:
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-qm", message, cwd=root)
