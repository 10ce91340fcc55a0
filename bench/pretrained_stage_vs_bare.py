"""The train stage against a bare training loop, in one run: samples/s of `model.arch: pretrained`
through `run_train` and of the plainest loop of the same shape on the same batches.

    python bench/pretrained_stage_vs_bare.py --data <project>/data/processed [--documents 320] [--rounds 2] [--compile]

--data is a tokenize stage output of a pretrained project (its tokenizer's ids; e.g. the folder
that `python bench/pretrained_imdb.py --keep DIR` leaves in DIR/data/processed). The first
--documents training documents are used, in the stage's own first-epoch batch order
(length-grouped, seeded), so both loops see the same padded batches.

- stage: `run_train` with the fine-tuning defaults, one epoch, its own samples/s figure (training
  steps only; the one validation at the end, on 32 documents, is not counted);
- bare: the batches padded beforehand and held in memory, `AutoModel` + a linear head on the
  masked mean, cross-entropy, `AdamW.step()`: no loader, no clipping, no schedule, no bookkeeping.
  Every step is timed, as the stage's are.

The two alternate for --rounds rounds (bare, stage, bare, stage, ...), so drift in the machine's
speed falls on both. --compile adds both again under `torch.compile` (the stage's `train.compile`).
Prints one JSON line per run, then the ratio stage / bare.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrained_imdb import minilm_folder
from train_throughput import first_documents, subset

VALIDATION_DOCUMENTS = 32


def stage_params(source: Path, compile_model: bool, threads: int):
    from pipeline.params import parse_params

    return parse_params({
        "model": {"arch": "pretrained", "pretrained": {"source": str(source)}},
        "train": {"max_epochs": 1, "patience": 100, "compile": compile_model, "threads": threads},
    })


def first_epoch_batches(lengths: np.ndarray, config) -> list[np.ndarray]:
    """The index batches of the stage's first epoch (the same function of seed and data)."""
    from pipeline.data.tokenized import length_grouped_batches

    return length_grouped_batches(lengths, config.batch_size, rng=np.random.default_rng([config.seed, 0]))


def bare_rate(processed: Path, params, source: Path, compile_model: bool) -> dict:
    import transformers
    from pipeline.data.tokenized import TokenizedSplit
    from pipeline.training.recipe import resolved

    config = resolved(params).train
    split = TokenizedSplit(processed / "train")
    batches = []
    for indices in first_epoch_batches(split.lengths, config):
        ids, lengths, labels = (torch.from_numpy(array) for array in split.batch(indices))
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        batches.append((ids, mask, labels))
    torch.manual_seed(config.seed)
    encoder = transformers.AutoModel.from_pretrained(str(source))
    head = nn.Linear(encoder.config.hidden_size, int(split.labels.max()) + 1)
    model = nn.ModuleDict({"encoder": encoder, "head": head}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def loss_of(ids, mask, labels):
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return nn.functional.cross_entropy(head(pooled), labels)

    step = torch.compile(loss_of, dynamic=True) if compile_model else loss_of
    samples, started = 0, time.perf_counter()
    for ids, mask, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        step(ids, mask, labels).backward()
        optimizer.step()
        samples += len(labels)
    seconds = time.perf_counter() - started
    return {"loop": "bare", "compile": compile_model, "samples_per_second": round(samples / seconds, 2), "seconds": round(seconds, 1)}


def stage_rate(processed: Path, params, work: Path, name: str) -> dict:
    from pipeline.stages.train import run_train

    report = run_train(params, processed, work / name, work / f"{name}.json", work / f"{name}-live", work / f"{name}-resume", progress=False)
    return {"loop": "stage", "compile": params.train.compile, "samples_per_second": round(report["samples_per_second"], 2),
            "precision": report["precision"], "train_documents": report["train_documents"]}


def main() -> None:
    from pipeline.system import available_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a pretrained project's data/processed")
    parser.add_argument("--documents", type=int, default=320, help="training documents (320: 10 steps of 32)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--compile", action="store_true", help="also both under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = minilm_folder()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processed = work / "processed"
        subset(args.data, processed, args.documents)
        # a small validation split: the stage validates once, at the end of its epoch, outside its samples/s
        first_documents(args.data / "validation", processed / "validation", VALIDATION_DOCUMENTS)
        lengths = np.diff(np.load(processed / "train" / "offsets.npy"))
        for compile_model in (False, True) if args.compile else (False,):
            params = stage_params(source, compile_model, args.threads)
            for round_ in range(args.rounds):
                for result in (bare_rate(processed, params, source, compile_model),
                               stage_rate(processed, params, work, f"stage-{compile_model}-{round_}")):
                    print(json.dumps(result), flush=True)
                    results.append(result)
    print(json.dumps({"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
                      "torch": torch.__version__, "documents": args.documents, "tokens_per_document_mean": round(float(lengths.mean()), 1)}))
    for compile_model in sorted({r["compile"] for r in results}):
        rate = {loop: np.mean([r["samples_per_second"] for r in results if r["loop"] == loop and r["compile"] == compile_model])
                for loop in ("bare", "stage")}
        print(f"compile {compile_model}: bare {rate['bare']:.2f}, stage {rate['stage']:.2f} samples/s; "
              f"stage / bare = {rate['stage'] / rate['bare']:.1%}")


if __name__ == "__main__":
    main()
