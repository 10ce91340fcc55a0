"""Time a no-op `dvc repro` on a real IMDB project.

    python bench/dvc_noop.py [--source ../shared/data/imdb/aclImdb.tar.gz]

Copies the pipeline (default params) into a temporary git repo, runs `dvc repro` once, then times
five further `dvc repro` calls that must run nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scratch_project import DVC, IMDB, make_project, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(IMDB))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp), args.source)
        run(DVC, "repro", cwd=root)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            out = run(DVC, "repro", cwd=root)
            times.append(time.perf_counter() - started)
            assert "Running stage" not in out, out
        print(f"no-op dvc repro: median {statistics.median(times):.2f} s, max {max(times):.2f} s over 5 runs")


if __name__ == "__main__":
    main()
