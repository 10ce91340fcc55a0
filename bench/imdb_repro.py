"""Time the whole `dvc repro` on IMDB with default params (issue 11's target: within 3 minutes
on a 2-core CPU), stage by stage.

    python bench/imdb_repro.py [--source ../shared/data/imdb/aclImdb.tar.gz] [--runs 2]

Each run copies the pipeline with the shipped params (only `download.source` set) into a new
temporary git + DVC repo and runs `dvc repro` once, timestamping every line it prints: a stage
lasts from its "Running stage" line to the next one (DVC's hashing and caching of its outputs
included). Prints one JSON line per run, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_project import DVC, IMDB, make_project

TARGET_SECONDS = 180.0


def timed_repro(root: Path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    started = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, started
    with subprocess.Popen([DVC, "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            now = time.perf_counter()
            if match := re.match(r"Running stage '([^']+)'", line):
                if current is not None:
                    stages[current] = round(now - since, 1)
                current, since = match.group(1), now
    total = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"dvc repro failed (exit {process.returncode})")
    if current is not None:
        stages[current] = round(time.perf_counter() - since, 1)
    reports = root / "reports"
    metrics = json.loads((reports / "evaluate.json").read_text())
    baseline = json.loads((reports / "baseline.json").read_text())
    return {"seconds": round(total, 1), "stages": stages, "accuracy": metrics["accuracy"], "baseline_accuracy": baseline["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(IMDB))
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:  # TMPDIR picks the disk
            result = timed_repro(make_project(Path(tmp), args.source))
        results.append(result)
        print(json.dumps(result), flush=True)
    stages = list(results[0]["stages"])
    print("| run | " + " | ".join(stages) + " | whole `dvc repro` | test accuracy | baseline |")
    print("|---" * (len(stages) + 4) + "|")
    for number, result in enumerate(results, 1):
        cells = [f"{result['stages'].get(stage, 0):.1f} s" for stage in stages]
        print(f"| {number} | " + " | ".join(cells) + f" | **{result['seconds']:.1f} s** | {result['accuracy']:.4f} | {result['baseline_accuracy']:.4f} |")
    worst = max(result["seconds"] for result in results)
    print(f"slowest run {worst:.1f} s: {'within' if worst <= TARGET_SECONDS else 'OVER'} the {TARGET_SECONDS:.0f} s target")


if __name__ == "__main__":
    main()
