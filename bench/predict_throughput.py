"""`predict --file` throughput (texts/s) on the IMDB test split, as a user runs it.

    python bench/predict_throughput.py --bundle models/export --texts data/raw/test.parquet
                                       [--repeat 3] [--fp32] [--workers N]

--texts is the download stage's test split (an IMDB run: 25,000 reviews). Its texts are
written to a plain text file, one per line, and `python -m pipeline predict BUNDLE --file
FILE --out OUT` runs as a subprocess; the time is the whole command (start-up, checksums,
tokenizing, ONNX Runtime, writing JSON Lines). Target: >= 1,000 texts/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "models/export")
    parser.add_argument("--texts", type=Path, default=REPO / "data/raw/test.parquet")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()

    texts = pd.read_parquet(args.texts, columns=["text"])["text"].fillna("").str.replace(r"[\r\n]+", " ", regex=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "texts.txt", Path(tmp) / "predictions.jsonl"
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pipeline", "predict", str(args.bundle.resolve()), "--file", str(source), "--out", str(out)]
        command += ["--fp32"] if args.fp32 else []
        command += ["--workers", str(args.workers)] if args.workers else []
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, capture_output=True)
            seconds = time.perf_counter() - started
            with out.open(encoding="utf-8") as handle:
                lines = sum(1 for _ in handle)
            assert lines == len(texts), (lines, len(texts))
            runs.append(round(len(texts) / seconds, 1))
    print(json.dumps({
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "texts": len(texts),
        "model": "fp32" if args.fp32 else "int8",
        "texts_per_second_runs": runs,
        "texts_per_second_best": max(runs),
    }, indent=2))


if __name__ == "__main__":
    main()
