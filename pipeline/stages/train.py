"""`train` stage: data/processed -> models/train/best.pt, reports/train.json, the curves.

One loop for CPU, one GPU and DDP (its steps: pipeline/training/trainer.py). Outputs:
models/train/best.pt holds what inference needs (weights, model config, classes, tokenizer
settings); reports/train.json what the run learned (metrics); reports/runtime/train.json how
it ran (timings, device, memory: not metrics, so `dvc metrics diff` stays about quality).
On success the best checkpoint moves into the outputs and the resume folder is removed.

With `train.devices` > 1 (or a multi-node rendezvous in the environment) the command runs
itself in that many processes under torchrun (`run_train_processes`); each of them runs
`run_train`, which joins the process group.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.tokenized import TokenizedSplit, read_labels, read_vocab_size
from pipeline.errors import PipelineError, warn
from pipeline.files import read_json, sha256_of, stage_outputs
from pipeline.models import build_model, check_fits
from pipeline.models.bag import AUTO_POOLING, AUTO_POOLINGS_FOR_LABEL_SETS
from pipeline.params import Params
from pipeline.system import available_cores
from pipeline.training.checkpoint import fingerprint
from pipeline.training.device import peak_memory_mb, resolve_device, resolve_precision
from pipeline.training.distributed import MULTI_NODE_ENV, World, join, launch
from pipeline.training.live import Console, Curves
from pipeline.training.recipe import RESOLVED_KEYS, resolved
from pipeline.training.trainer import Setup, SimulatedKill, Trainer, remove_resume_dir

__all__ = ["SimulatedKill", "run_train", "run_train_processes"]


def run_train(
    params: Params,
    processed: Path,
    out_dir: Path,
    report_path: Path,
    live_dir: Path,
    resume_dir: Path,
    runtime_path: Path | None = None,
    progress: bool | None = None,
    stop_after_steps: int | None = None,
    timing_dir: Path | None = None,
) -> dict[str, Any]:
    """Train `params.model` on data/processed; returns the report (metrics and runtime together).
    In a process that torchrun started, joins the process group and trains its share (every
    rank returns the same report; rank 0 alone writes). `stop_after_steps` raises SimulatedKill
    after that many steps, on every rank, leaving the resume state as a kill would (tests use it).
    `timing_dir` gets the samples/s curve (a timing, not a result: kept out of `live_dir`)."""
    params = resolved(params)  # train's nulls: the architecture's defaults
    world, device = join(params.train.device)
    with contextlib.closing(world):  # leaves the process group however training ends
        started = time.perf_counter()
        setup = prepare(params, processed, world, device, resume_dir)
        console = Console(progress if world.main else False)
        if world.main:
            console.line(f"train: {params.model.arch}, " + ", ".join(f"{key} {_shown(getattr(setup.params.train, key))}" for key in RESOLVED_KEYS))
            if params.model.arch == "pretrained" and device.type == "cpu":
                console.line("train: fine-tuning a pretrained transformer on the CPU is slow (often hours); a GPU is the place for it "
                             "(train.device auto uses CUDA when present: docs/gpu.md)")
            if setup.class_weights is not None:
                shown = ", ".join(f"{name} {weight:.3g}" for name, weight in zip(setup.labels[:10], setup.class_weights))
                console.line(f"train: class weights (balanced{', positive weight per label' if setup.train.multilabel else ''}): {shown}"
                             + (f", ... ({len(setup.labels)} in all)" if len(setup.labels) > 10 else ""))
        candidates = pooling_candidates(setup, processed)
        say = console.line if world.main else (lambda text: None)
        trainers = []
        for number, candidate in enumerate(candidates, 1):
            if len(candidates) > 1:
                say(f"train: model.bag.pooling auto, for label sets: {candidate.params.model.bag.pooling} ({number} of "
                    f"{len(candidates)}); the one better on validation {candidate.params.train.monitor} is kept")
                torch.manual_seed(setup.params.train.seed + world.rank)  # each candidate as if it ran alone
            model = build_model(candidate.params.model, setup.vocab_size, len(setup.labels)).to(device)
            trainers.append(train_one(Trainer(candidate, model, console, live_dir, timing_dir), stop_after_steps))
        kept = best_run(trainers)
        if len(trainers) > 1:
            say(f"train: kept model.bag.pooling {kept.setup.params.model.bag.pooling} (validation {kept.config.monitor}: "
                + ", ".join(f"{run.setup.params.model.bag.pooling} {run.tracker.best:.4f}" for run in trainers) + ")")
        return finish(kept, trainers, time.perf_counter() - started, out_dir, report_path, runtime_path)


def train_one(trainer: Trainer, stop_after_steps: int | None) -> Trainer:
    """The training loop: restore, then train and validate until early stopping or the epoch cap."""
    trainer.restore()
    for batch in trainer.batches():
        if not trainer.train_step(batch):
            continue  # gradients accumulate until the optimizer steps
        if stop_after_steps is not None and trainer.progress.step >= stop_after_steps:
            raise SimulatedKill(f"stopped after {trainer.progress.step} steps")
        if trainer.validation_due():
            trainer.save(trainer.validate())
    if not trainer.validated_last_step:  # eval_every left a tail unvalidated
        trainer.save(trainer.validate())
    return trainer


def pooling_candidates(setup: Setup, processed: Path) -> list[Setup]:
    """The runs to train: one, or for `bag` with pooling auto on label sets, one per pooling, each
    with its own resume folder (the better one on validation is kept: BENCHMARKS.md, "Multi-label").
    auto is mean_max for single-label data."""
    model = setup.params.model
    if model.arch != "bag" or model.bag.pooling != "auto":
        return [setup]
    choices = AUTO_POOLINGS_FOR_LABEL_SETS if setup.train.multilabel else (AUTO_POOLING,)
    runs = []
    for pooling in choices:
        params = setup.params.model_copy(update={"model": model.model_copy(update={"bag": model.bag.model_copy(update={"pooling": pooling})})})
        resume_dir = setup.resume_dir / pooling if len(choices) > 1 else setup.resume_dir
        runs.append(replace(setup, params=params, resume_dir=resume_dir, run_id=fingerprint(params, processed, setup.world.size)))
    return runs


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def prepare(params: Params, processed: Path, world: World, device: torch.device, resume_dir: Path) -> Setup:
    """Threads, seed and numerics for this process; the tokenized data, checked."""
    config = params.train
    precision = resolve_precision(config.precision, device)
    # processes on one machine share its cores
    torch.set_num_threads(config.threads or max(available_cores() // world.local_size, 1))
    torch.manual_seed(config.seed + world.rank)  # rank 0 draws the initial weights (DDP copies them); dropout differs per rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    labels = read_labels(processed)
    train, validation = TokenizedSplit(processed / "train"), TokenizedSplit(processed / "validation")
    if len(train) == 0 or len(validation) == 0:
        raise PipelineError("the train or validation split is empty; check the download stage's output")
    check_labels(train, validation, labels)
    text_settings = read_json(processed / "text.json", "rerun the tokenize stage")
    check_fits(params.model, int(text_settings["max_tokens"]))
    updates = {"monitor": ("macro_f1" if train.multilabel else "accuracy") if config.monitor == "auto" else config.monitor,
               "class_weights": ("balanced" if train.multilabel else "none") if config.class_weights == "auto" else config.class_weights}
    if config.batch_size > len(train):
        if world.main:
            warn(f"train.batch_size {config.batch_size:,} is more than the {len(train):,} train documents; batches of {len(train):,}")
        updates["batch_size"] = len(train)
    params = params.model_copy(update={"train": config.model_copy(update=updates)})
    weights = class_weights(train, len(labels)) if updates["class_weights"] == "balanced" else None
    return Setup(
        params, world, device, precision, labels, train, validation, read_vocab_size(processed), sha256_of(processed / "vocab.json"),
        text_settings, resume_dir, fingerprint(params, processed, world.size), weights,
    )


def check_labels(train: TokenizedSplit, validation: TokenizedSplit, labels: list[str]) -> None:
    for name, split in (("train", train), ("validation", validation)):
        if split.multilabel != train.multilabel or (split.multilabel and split.labels.shape[1] != len(labels)):
            raise PipelineError(f"{name} labels do not match labels.json; rerun the tokenize stage")
        if not split.multilabel and (split.labels.min() < 0 or split.labels.max() >= len(labels)):
            raise PipelineError(f"{name} labels do not match labels.json; rerun the tokenize stage")


def class_weights(train: TokenizedSplit, classes: int) -> np.ndarray:
    """train.class_weights balanced: each class's weight in the loss, N / (classes x its count)
    (scikit-learn's "balanced"); for multi-label data each label's positive weight, its negatives
    over its positives, so that a rare label's few positives weigh as much as its many negatives."""
    if train.multilabel:
        positives = train.labels.sum(0).astype(np.float64)
        return (len(train) - positives) / np.maximum(positives, 1)
    counts = np.bincount(train.labels, minlength=classes).astype(np.float64)
    return len(train) / (classes * np.maximum(counts, 1))


def finish(trainer: Trainer, trainers: list[Trainer], wall_seconds: float, out_dir: Path, report_path: Path, runtime_path: Path | None) -> dict[str, Any]:
    """Rank 0 moves `trainer`'s best.pt into the outputs (of several candidate `trainers`, the
    one best on validation; its curves replace the others'), writes the reports and removes the
    resume state; every rank returns the same report, once the outputs are complete."""
    setup, progress, tracker = trainer.setup, trainer.progress, trainer.tracker
    config, device = setup.params.train, setup.device
    report = {  # what the run learned: numbers that compare across experiments
        "best_validation": tracker.best,
        "best_epoch": tracker.best_epoch,
        "best_step": tracker.best_step,
        "epochs": round(progress.epoch + progress.batch / setup.batches_per_epoch, 3),
        "steps": progress.step,
        "stopped_early": int(tracker.should_stop),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_documents": len(setup.train),
    }
    if len(trainers) > 1:  # model.bag.pooling auto: what each candidate reached on validation, and the one kept
        report["pooling"] = setup.params.model.bag.pooling
        report["pooling_candidates"] = {run.setup.params.model.bag.pooling: run.tracker.best for run in trainers}
    runtime = {  # how it ran: differs between identical runs or machines, so not a metric
        "arch": setup.params.model.arch,
        "task": "multilabel" if setup.train.multilabel else "multiclass",
        "monitor": config.monitor,
        **({"class_weights": dict(zip(setup.labels, np.round(setup.class_weights, 6).tolist()))} if setup.class_weights is not None else {}),
        **{key: getattr(config, key) for key in RESOLVED_KEYS},  # as run: train's nulls resolved for the arch
        "wall_seconds": round(wall_seconds, 2),
        "train_seconds": round(sum(run.progress.train_seconds for run in trainers), 2),  # every candidate's
        "samples_per_second": round(progress.samples_per_second, 1),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": setup.precision,
        "processes": setup.world.size,
        "threads": torch.get_num_threads(),  # per process
        "peak_memory_mb": round(peak_memory_mb(device), 1),  # rank 0's
    }
    if setup.world.main:
        for run in trainers:
            run.curves.close()
        if trainer is not trainers[-1]:  # the curves on disk are the last candidate's
            Curves(trainer.live_dir, progress.history, config.tensorboard, trainer.timing_dir).close()
        with stage_outputs() as outputs:
            outputs.link(setup.resume_dir / "best.pt", outputs.folder(out_dir) / "best.pt")
            outputs.json(report_path, report)
            if runtime_path is not None:
                outputs.json(runtime_path, runtime)
        remove_resume_dir(setup.resume_dir.parent if len(trainers) > 1 else setup.resume_dir)  # with the candidates' folders
    setup.world.barrier()  # the outputs are complete before any process reports success
    return {**report, **runtime}


def best_run(trainers: list[Trainer]) -> Trainer:
    """The run whose best validation is the best (the first of equals)."""
    best = trainers[0]
    for run in trainers[1:]:
        if run.tracker.better(run.tracker.best, best.tracker.best):
            best = run
    return best


def run_train_processes(
    params: Params, params_path: Path, processed: Path, out_dir: Path, report_path: Path, live_dir: Path,
    resume_dir: Path, runtime_path: Path, timing_dir: Path, stop_after_steps: int | None = None,
) -> None:
    """Run the train command in `train.devices` processes under torchrun and wait for them. What
    would fail in every process fails here first, once; a process's own error is reported in one
    line (a bug in full), and rank 0's warnings are passed on."""
    devices = params.train.devices
    read_labels(processed)  # a missing tokenize output is one error here, not one per process
    if not any(name in os.environ for name in MULTI_NODE_ENV):  # this machine runs every process
        resolve_device(params.train.device, local_rank=devices - 1)
    argv = ["train", "--params", str(params_path), "--data", str(processed), "--out", str(out_dir), "--report", str(report_path)]
    argv += ["--live", str(live_dir), "--resume-dir", str(resume_dir), "--runtime", str(runtime_path), "--timings", str(timing_dir)]
    if stop_after_steps is not None:
        argv += ["--stop-after-steps", str(stop_after_steps)]
    launched = launch(devices, argv)
    if launched.code == 130:
        raise KeyboardInterrupt
    for line in launched.stderr.get(0, "").splitlines():
        if line.startswith("warning: ") and not launched.code:
            print(line, file=sys.stderr)
    if not launched.code:
        return
    if (first := launched.first_error()) is not None:
        rank, message = first
        raise PipelineError(f"training in {devices} processes failed; process {rank}: {message}")
    for rank, text in sorted(launched.stderr.items()):  # a bug: its traceback, as a single process would show it
        if "Traceback" in text:
            print(f"process {rank}:\n{text}", file=sys.stderr, end="")
            break
    raise PipelineError(f"training in {devices} processes failed (torchrun exit code {launched.code}); the traceback above is the first process's")
