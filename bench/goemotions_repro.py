"""GoEmotions (multi-label, 28 labels) through the whole `dvc repro` (issue 24): the default
`bag` model against the one-vs-rest baseline, with thresholds tuned on validation and at 0.5.

    python bench/goemotions_repro.py [--source ../shared/data/goemotions] [--seeds 0 1 2]

Each run copies the pipeline with the shipped params into a new temporary git + DVC repo and
changes only what the data needs: `download.task`, `download.source` and the column settings
of GoEmotions' headerless TSVs (and `train.seed` past the first run). Prints one JSON line per
run, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_project import DVC, REPO, make_project, run

GOEMOTIONS = REPO.parent / "shared/data/goemotions"


def one_run(source: Path, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="goemotions-") as folder:
        root = make_project(
            Path(folder),
            source,
            download={"task": "multilabel", "column_names": ["text", "labels", "id"], "label_column": "labels",
                      "label_separator": ",", "label_names": str((source / "emotions.txt").resolve()), "tsv_quoting": "csv"},
            **({"train": {"seed": seed}} if seed else {}),
        )
        started = time.perf_counter()
        run(DVC, "repro", cwd=root)
        seconds = time.perf_counter() - started
        read = lambda name: json.loads((root / "reports" / name).read_text())  # noqa: E731
        metrics, baseline, export, train = read("evaluate.json"), read("baseline.json"), read("export.json"), read("train.json")
        runtime = read("runtime/train.json")
        keys = ("macro_f1", "micro_f1", "macro_f1_at_05", "micro_f1_at_05")
        return {
            "seed": seed,
            "model": {k: round(metrics[k], 4) for k in (*keys, "accuracy", "hamming_loss", "ece", "ece_uncalibrated")},
            "baseline": {k: round(baseline[k], 4) for k in (*keys, "accuracy")},
            "int8_micro_f1_drop": export["onnx_int8_micro_f1_drop"],
            "best_epoch": train["best_epoch"], "epochs": train["epochs"], "monitor": runtime["monitor"],
            "pooling": train.get("pooling"), "pooling_candidates": train.get("pooling_candidates"),
            "class_weights": "balanced" if "class_weights" in runtime else "none",
            "repro_seconds": round(seconds, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=GOEMOTIONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    if not (args.source / "train.tsv").is_file():
        sys.exit(f"{args.source}: no train.tsv; pass --source <folder with GoEmotions' train/dev/test.tsv and emotions.txt>")
    subprocess.run([DVC, "--version"], check=True, capture_output=True)
    results = []
    for seed in args.seeds:
        results.append(one_run(args.source, seed))
        print(json.dumps(results[-1]), flush=True)
    print("\n| seed | bag macro-F1 tuned / 0.5 | bag micro-F1 tuned / 0.5 | baseline macro-F1 tuned / 0.5 | baseline micro-F1 tuned / 0.5 | ECE before → after | dvc repro |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        m, b = r["model"], r["baseline"]
        print(f"| {r['seed']} | {m['macro_f1']:.4f} / {m['macro_f1_at_05']:.4f} | {m['micro_f1']:.4f} / {m['micro_f1_at_05']:.4f} | "
              f"{b['macro_f1']:.4f} / {b['macro_f1_at_05']:.4f} | {b['micro_f1']:.4f} / {b['micro_f1_at_05']:.4f} | "
              f"{m['ece_uncalibrated']:.4f} → {m['ece']:.4f} | {r['repro_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
