"""Tokenize throughput on IMDB (50,000 reviews), per core.

    python bench/tokenize_throughput.py [--source ../shared/data/imdb/aclImdb.tar.gz] [--workers N]

Runs the real download stage once into a temporary folder, then the real tokenize
stage with default params, and prints tokens/s in all and per worker.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from pipeline.stages.download import run_download
from pipeline.params import DownloadParams, TokenizeParams
from pipeline.system import available_cores
from pipeline.stages.tokenize import run_tokenize

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/imdb/aclImdb.tar.gz"))
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_download(DownloadParams(source=args.source), tmp / "raw", tmp / "data.json")
        runs = [
            run_tokenize(TokenizeParams(workers=args.workers), tmp / "raw", tmp / f"out{i}", tmp / f"r{i}.json", progress=False)
            for i in range(args.repeat)
        ]
    best = max(runs, key=lambda r: r["tokens_per_second"])
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {available_cores()} cores",
        "documents": best["documents"],
        "tokens": best["tokens"],
        "workers": args.workers,
        "stage_seconds": best["seconds"],
        "tokens_per_second": best["tokens_per_second"],
        "tokens_per_second_per_core": round(best["tokens_per_second"] / args.workers),
        "all_runs_tokens_per_second": [r["tokens_per_second"] for r in runs],
    }, indent=2))


if __name__ == "__main__":
    main()
