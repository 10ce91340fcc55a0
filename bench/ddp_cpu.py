"""DDP on CPU: the train stage in 1 and in 2 processes (gloo), on AG News, through real DVC.

    python bench/ddp_cpu.py [--source ../shared/data/ag_news/test.csv] [--set train.max_epochs=5 ...]

Copies the pipeline (default params) into a temporary git repo with AG News's test.csv as the
source (split 80/20 for training and testing), runs `dvc exp run` (train.devices 1, and the
--set overrides) and commits,
then `dvc exp run -S train.devices=2`: the acceptance command. Prints, for each, the train
stage's samples/s (training steps only), wall time, validation and test accuracy; the test
accuracy of the 2-process run must be within 1 point of the 1-process run's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

from scratch_project import DVC, REPO, commit, make_project, run

from pipeline.system import available_cores

AG_NEWS = REPO.parent / "shared/data/ag_news/test.csv"
DOWNLOAD = {
    "column_names": ["label", "title", "description"],
    "text_columns": ["title", "description"],
    "label_names": {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"},
    "test_fraction": 0.2,
}


def summary(root: Path) -> dict:
    runtime = json.loads((root / "reports/runtime/train.json").read_text())
    train = json.loads((root / "reports/train.json").read_text())
    metrics = json.loads((root / "reports/evaluate.json").read_text())
    return {
        "processes": runtime.get("processes", 1),
        "threads_per_process": runtime["threads"],
        "samples_per_second": runtime["samples_per_second"],
        "train_seconds": runtime["train_seconds"],
        "epochs": train["epochs"],
        "best_validation": round(train["best_validation"], 4),
        "test_accuracy": round(metrics["accuracy"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(AG_NEWS))
    parser.add_argument("--set", nargs="*", default=[], help="more -S overrides for both runs")
    args = parser.parse_args()
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {available_cores()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp), args.source, download=DOWNLOAD, export={"latency_runs": 20, "throughput_batches": 2})
        overrides = [flag for item in args.set for flag in ("-S", item)]
        commit(root, "project")  # dvc exp run needs a commit
        run(DVC, "exp", "run", *overrides, cwd=root)
        one = summary(root)
        commit(root, "1 process")
        started = time.perf_counter()
        run(DVC, "exp", "run", "-S", "train.devices=2", *overrides, cwd=root)
        two = summary(root)
        print(f"dvc exp run -S train.devices=2: {time.perf_counter() - started:.0f} s")
        print(json.dumps({"1 process": one, "2 processes": two}, indent=1))
        drop = one["test_accuracy"] - two["test_accuracy"]
        print(f"speed-up {two['samples_per_second'] / one['samples_per_second']:.2f}x; test accuracy 2 - 1 processes: {-drop * 100:+.2f} points")
        if abs(drop) > 0.01:
            raise SystemExit("FAIL: the 2-process accuracy is not within 1 point of the 1-process run")


if __name__ == "__main__":
    main()
