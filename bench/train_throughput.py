"""Training samples/s per architecture at IMDB lengths, through the real data path.

    python bench/train_throughput.py --data data/processed [--arch bag cnn lstm transformer]
                                     [--device auto] [--documents 2000] [--epochs 1]

--data is a tokenize stage output (e.g. of an IMDB run). The first --documents training
documents (0: all) are copied to a temporary folder and the real train stage runs on them
with default params except the architecture and device: length-grouped batches, the
loader, the optimizer step, bf16 autocast on CUDA. samples/s is the train stage's own
figure: training steps only, validation excluded.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from pipeline.system import available_cores
from pipeline.params import parse_params
from pipeline.stages.train import run_train


def first_documents(source: Path, target: Path, documents: int) -> None:
    """The first `documents` of one tokenized split (ids, offsets, labels) into `target`, replacing it."""
    offsets = np.load(source / "offsets.npy")[: documents + 1]
    ids = np.load(source / "ids.npy")[: offsets[-1]]
    labels = np.load(source / "labels.npy")[:documents]
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    np.save(target / "offsets.npy", offsets)
    np.save(target / "ids.npy", ids)
    np.save(target / "labels.npy", labels)


def subset(processed: Path, out: Path, documents: int) -> None:
    """The first `documents` of train (all of validation) in the tokenize stage's layout."""
    shutil.copytree(processed, out)
    if documents:
        first_documents(processed / "train", out / "train", documents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--arch", nargs="+", default=["bag", "cnn", "lstm", "transformer"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--documents", type=int, default=2000, help="training documents; 0: all")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    lengths = np.diff(np.load(args.data / "train" / "offsets.npy"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset(args.data, tmp / "processed", args.documents)
        for arch in args.arch:
            params = parse_params({
                "model": {"arch": arch},
                "train": {"device": args.device, "max_epochs": args.epochs, "batch_size": args.batch_size,
                          "compile": args.compile, "patience": 100},
            })
            report = run_train(params, tmp / "processed", tmp / arch, tmp / f"{arch}.json", tmp / f"{arch}-live",
                               tmp / f"{arch}-resume", progress=False)
            results.append({k: report[k] for k in ("arch", "samples_per_second", "device_name", "precision",
                                                    "peak_memory_mb", "parameters", "train_documents")})
    device = results[0]["device_name"] if results else "?"
    print(json.dumps({
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {available_cores()} cores; {device}",
        "torch": torch.__version__,
        "tokens_per_document_mean": round(float(lengths.mean()), 1),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
