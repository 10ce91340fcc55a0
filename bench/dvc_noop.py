"""Time a no-op `dvc repro` on a real IMDB project.

    python bench/dvc_noop.py [--source ../shared/data/imdb/aclImdb.tar.gz]

Copies the pipeline into a temporary git repo, runs `dvc repro` once, then times
five further `dvc repro` calls that must run nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/imdb/aclImdb.tar.gz"))
    args = parser.parse_args()
    dvc = str(Path(sys.executable).parent / "dvc")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", "params.yaml", ".gitignore"):
            shutil.copy(REPO / name, root / name)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["download"]["source"] = str(Path(args.source).resolve())
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro"]):
            run(*cmd, cwd=root)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            out = run(dvc, "repro", cwd=root)
            times.append(time.perf_counter() - started)
            assert "Running stage" not in out, out
        print(f"no-op dvc repro: median {statistics.median(times):.2f} s, max {max(times):.2f} s over 5 runs")


if __name__ == "__main__":
    main()
