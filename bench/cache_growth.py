"""How much one experiment adds to DVC's cache, on a real IMDB project.

    python bench/cache_growth.py [--source ../shared/data/imdb/aclImdb.tar.gz] [--set train.lr=0.005]

Copies the pipeline (default params) into a temporary git repo, runs `dvc repro` and
commits, then measures `.dvc/cache` before and after one `dvc exp run -S <param>`. The
target: the growth is at most the experiment's best weights (models/train/best.pt) plus its
export bundle (models/export), i.e. no optimizer state or second copy of the weights is cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from scratch_project import DVC, IMDB, commit, make_project, run


def size(path: Path) -> int:
    """Bytes of a file or of every file under a folder (as `du -sb` counts, without folders)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summary(root: Path) -> dict:
    data = json.loads((root / "reports/data.json").read_text())
    metrics = json.loads((root / "reports/evaluate.json").read_text())
    export = json.loads((root / "reports/export.json").read_text())
    return {
        "rows": {split: data[split]["rows"] for split in ("train", "validation", "test")},
        "duplicates": data.get("duplicates"),
        "accuracy": metrics["accuracy"],
        "int8_accuracy": export["onnx_int8_accuracy"],
        "best_pt_bytes": size(root / "models/train/best.pt"),
        "export_bytes": size(root / "models/export"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(IMDB))
    parser.add_argument("--set", default="train.lr=0.005", help="the experiment's -S override")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp), args.source)
        started = time.perf_counter()
        run(DVC, "repro", cwd=root)
        print(f"dvc repro: {time.perf_counter() - started:.0f} s; {json.dumps(summary(root))}")
        commit(root, "baseline run")
        before = size(root / ".dvc/cache")
        started = time.perf_counter()
        run(DVC, "exp", "run", "-S", args.set, cwd=root)
        after = size(root / ".dvc/cache")
        experiment = summary(root)
        allowed = experiment["best_pt_bytes"] + experiment["export_bytes"]
        print(f"dvc exp run -S {args.set}: {time.perf_counter() - started:.0f} s; {json.dumps(experiment)}")
        print(
            f".dvc/cache: {before / 1e6:,.1f} MB before, {after / 1e6:,.1f} MB after: +{(after - before) / 1e6:,.1f} MB; "
            f"best.pt {experiment['best_pt_bytes'] / 1e6:,.1f} MB + export bundle {experiment['export_bytes'] / 1e6:,.1f} MB "
            f"= {allowed / 1e6:,.1f} MB -> {'within' if after - before <= allowed else 'OVER'} the target"
        )


if __name__ == "__main__":
    main()
