"""`train` stage: data/processed -> models/train/{best,last}.pt, reports/train.json, DVCLive curves.

One loop for CPU and GPU. Each validation (every epoch, or every `eval_every` steps)
logs to DVCLive, saves the resume state, and decides early stopping.

Outputs: models/train/best.pt holds what inference needs (weights, model config, classes,
tokenizer settings); reports/train.json what the run learned (metrics); reports/runtime/
train.json how it ran (timings, device, memory: not metrics, so `dvc metrics diff` stays
about quality).

Resuming: DVC deletes a stage's outputs before running it, so the resume state (the full
state: optimizer moments too) is written to a folder outside them (models/.train-resume).
A rerun whose params and data match continues from the last validation there, at an
epoch boundary or mid-epoch: the weights, optimizer moments, RNG state, early-stopping
state and logged history are restored, the batch order of every epoch is a function of
(seed, epoch), and no data loader draws from the global RNG, so the finished run is the
same as an uninterrupted one, bit for bit on CPU. On success the lean best checkpoint moves
into the outputs and the resume folder is removed.

Several processes (`train.devices` > 1, or a torchrun launch; see distributed.py) run this
same loop under DistributedDataParallel: every rank builds the same global batch order and
takes its share of each global batch (`train.batch_size` is the global batch), so all ranks
take the same number of steps; validation is sharded and its confusion counts and loss sums
all-reduced, so every rank takes the same early-stopping decision; rank 0 alone logs, saves
the checkpoints and resume state, and writes the outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.batching import TokenizedSplit, length_grouped_batches, read_labels, read_vocab_size
from pipeline.distributed import join, shard
from pipeline.engine import (
    autocast,
    batch_loader,
    load_checkpoint,
    predict_logits,
    resolve_precision,
    save_checkpoint,
    to_device,
)
from pipeline.errors import PipelineError
from pipeline.files import link_or_copy, read_json, staged_dir, write_json
from pipeline.metrics import confusion_matrix, log_loss_sum, metrics_from_counts
from pipeline.models import build_model
from pipeline.optimizers import RowSparseAdam
from pipeline.params import Params, TrainDefaults, TrainParams
from pipeline.system import available_cores


TENSORBOARD = "tensorboard"  # event files' folder inside the DVCLive folder (train.tensorboard)
RESOLVED_KEYS = [field.name for field in fields(TrainDefaults)]  # the train keys whose null means "the arch's default"


class SimulatedKill(RuntimeError):
    """Raised by `stop_after_steps` so tests can interrupt a run at a known step."""


@dataclass
class Tracker:
    """Early stopping on one validation metric."""

    monitor: str
    mode: str
    patience: int
    min_delta: float
    best: float | None = None
    best_step: int = 0
    best_epoch: float = 0.0  # epochs completed at the best validation
    bad_validations: int = 0

    def update(self, value: float, step: int, epoch: int) -> bool:
        """Record a validation; true if it is the best so far."""
        better = self.best is None or (
            value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        )
        if better:
            self.best, self.best_step, self.best_epoch, self.bad_validations = value, step, epoch, 0
        else:
            self.bad_validations += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_validations > 0 and self.bad_validations >= self.patience


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of the current epoch already consumed
    samples: int = 0  # training documents seen
    train_seconds: float = 0.0  # time in training steps (validation excluded)
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per validation

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.train_seconds, 1e-9)


def learning_rate(config: TrainParams, step: int, total_steps: int) -> float:
    """Linear warmup to `lr`, then cosine, linear or no decay to zero at `total_steps`."""
    warmup = int(config.warmup * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress)


def make_optimizers(model: nn.Module, config: TrainParams) -> list[torch.optim.Optimizer]:
    """Sparse Adam for sparse embedding tables (only the rows a batch used move), AdamW for the
    rest, with weight decay on weight matrices and none on biases, norms and embeddings."""
    sparse, decay, no_decay = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.Embedding) and module.sparse:
                sparse.append(param)
            elif param.ndim >= 2 and not isinstance(module, nn.Embedding):
                decay.append(param)
            else:
                no_decay.append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)]
    if sparse:
        optimizers.append(RowSparseAdam(sparse, lr=config.lr))
    return optimizers


def fingerprint(params: Params, processed: Path, world_size: int = 1) -> str:
    """What a resume state belongs to: the model and train params, the number of processes
    (each has its own RNG state) and the tokenized data."""
    digest = hashlib.sha256(json.dumps([params.model.model_dump(), params.train.model_dump(), world_size]).encode())
    for name in ("vocab.json", "labels.json", "text.json", "train/offsets.npy", "train/labels.npy", "validation/labels.npy"):
        digest.update((processed / name).read_bytes())
    digest.update(str((processed / "train" / "ids.npy").stat().st_size).encode())
    return digest.hexdigest()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Live:
    """DVCLive, with dvc.yaml written by hand, and optionally TensorBoard event files beside
    its plots; history is replayed after a resume."""

    def __init__(self, folder: Path, history: list[dict[str, float]], tensorboard: bool = False):
        from dvclive import Live

        class FilesOnly(Live):
            # We use DVCLive for its files alone: dvc.yaml is ours and DVC saves experiments.
            # Its git/DVC integration reads HEAD first and crashes in a repo with no commit yet
            # (dvclive 3.49: scmrepo's SCMError "Empty git repo"), so it is skipped.
            def _init_dvc(self) -> None:
                self._dvc_file = self._init_dvc_file()

        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PipelineError(
                    "train.tensorboard is true but the tensorboard package is missing: pip install tensorboard "
                    "(or pip install -e '.[tensorboard]'), or set train.tensorboard to false"
                ) from None
        self.live = FilesOnly(str(folder), dvcyaml=False, save_dvc_exp=False, report=None)
        if tensorboard:
            events = folder / TENSORBOARD
            shutil.rmtree(events, ignore_errors=True)  # a resumed run replays its history into fresh files
            self.writer = SummaryWriter(str(events))
        for record in history:
            self.log(record)

    def log(self, record: dict[str, float]) -> None:
        self.live.step = int(record["step"])
        for name, value in record.items():
            if name != "step":
                self.live.log_metric(name, value, plot=True)
                if self.writer is not None:
                    self.writer.add_scalar(name, value, int(record["step"]))
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
        if self.writer is not None:
            self.writer.close()


class Console:
    """A progress bar with loss and samples/s on a terminal; plain lines otherwise."""

    def __init__(self, enabled: bool | None):
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)

    def advance(self, batches: int, loss: float, samples_per_second: float) -> None:
        if self.bar is not None:
            self.bar.update(batches)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_second:,.0f}", refresh=False)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)


def _check_data(train: TokenizedSplit, validation: TokenizedSplit, labels: list[str]) -> None:
    if len(train) == 0 or len(validation) == 0:
        raise PipelineError("the train or validation split is empty; check the download stage's output")
    for name, split in (("train", train), ("validation", validation)):
        if split.labels.min() < 0 or split.labels.max() >= len(labels):
            raise PipelineError(f"{name} labels do not match labels.json; rerun the tokenize stage")


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
) -> dict[str, Any]:
    """Train `params.model` on data/processed; returns the report (metrics and runtime together).
    In a process that torchrun started, joins the process group and trains its share (every
    rank returns the same report; rank 0 alone writes). `stop_after_steps` raises SimulatedKill
    after that many steps, on every rank, leaving the resume state as a kill would (tests use it)."""
    params = params.resolved()  # train's nulls: the architecture's defaults
    config = params.train
    world, device = join(config.device)
    with contextlib.closing(world):  # leaves the process group however training ends
        precision = resolve_precision(config.precision, device)
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise PipelineError("this GPU does not support bf16; set train.precision to fp32")
        # processes on one machine share its cores
        torch.set_num_threads(config.threads or max(available_cores() // world.local_size, 1))
        torch.manual_seed(config.seed + world.rank)  # rank 0 draws the initial weights (DDP copies them); dropout differs per rank
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        labels = read_labels(processed)
        train, validation = TokenizedSplit(processed / "train"), TokenizedSplit(processed / "validation")
        _check_data(train, validation, labels)
        vocab_size = read_vocab_size(processed)
        text_settings = read_json(processed / "text.json", "rerun the tokenize stage")
        console = Console(progress if world.main else False)
        say = console.line if world.main else (lambda text: None)

        say(f"train: {params.model.arch}, " + ", ".join(f"{key} {getattr(config, key):g}" for key in RESOLVED_KEYS))
        model = build_model(params.model, vocab_size, len(labels)).to(device)
        if world.backend == "nccl" and _dense_embeddings(model):
            say("train: NCCL cannot all-reduce sparse gradients; the sparse embedding tables train dense (AdamW) in this run")
        optimizers = make_optimizers(model, config)
        mode = config.mode if config.mode != "auto" else ("min" if config.monitor == "loss" else "max")
        tracker = Tracker(config.monitor, mode, config.patience, config.min_delta)
        state = Progress()
        run_id = fingerprint(params, processed, world.size)

        resume_path = resume_dir / "last.pt"
        saved = None  # rank 0 reads the resume state and hands it to the others (other machines may not have the folder)
        if world.main and resume_path.is_file():
            saved = load_checkpoint(resume_path)
            if saved.get("fingerprint") != run_id:
                say(f"train: {resume_path} belongs to other params, data or process count; starting over")
                shutil.rmtree(resume_dir)
                saved = None
        saved = world.broadcast(saved)
        if saved is not None:
            model.load_state_dict(saved["model"])
            for optimizer, optimizer_state in zip(optimizers, saved["optimizers"]):
                optimizer.load_state_dict(optimizer_state)
            tracker = Tracker(**saved["tracker"])
            state = Progress(**saved["progress"])
            _set_rng_state(saved["rng"][world.rank], device)
            say(f"train: resuming from {resume_path} at epoch {state.epoch + 1}, step {state.step}")
            del saved
        elif world.main and hasattr(model, "fit_to_train"):
            # statistics of the train split (bag's n-gram document counts), kept in buffers: a resumed
            # run restored them above, and DDP copies rank 0's buffers to the other ranks
            if line := model.fit_to_train(train):
                say(line)

        step_model = torch.compile(model, dynamic=True) if config.compile else model
        train_model = step_model
        if world.distributed:
            train_model = nn.parallel.DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
        workers = config.workers if config.workers is not None else (4 if device.type == "cuda" else 0)
        batches_per_epoch = math.ceil(len(train) / config.batch_size)
        steps_per_epoch = math.ceil(batches_per_epoch / config.accumulate)
        total_steps = steps_per_epoch * config.max_epochs
        live = _Live(live_dir, state.history, config.tensorboard) if world.main else None
        started = time.perf_counter()
        validation_shard = np.arange(world.rank, len(validation), world.size)

        def inference_state() -> dict[str, Any]:
            return {
                "model_config": params.model.model_dump(),
                **({"encoder_config": model.encoder_config} if hasattr(model, "encoder_config") else {}),
                "vocab_size": vocab_size,
                "labels": labels,
                "text": text_settings,
                "model": model.state_dict(),
            }

        def checkpoint_state(rng: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                **inference_state(),
                "optimizers": [optimizer.state_dict() for optimizer in optimizers],
                "tracker": asdict(tracker),
                "progress": asdict(state),
                "rng": rng,  # one state per rank
                "fingerprint": run_id,
            }

        def validate(train_loss_sum: torch.Tensor, train_batches: int) -> None:
            # each rank scores its shard; the confusion counts and loss sums are summed over the ranks,
            # so every rank computes the same metrics and takes the same early-stopping decision
            logits = predict_logits(step_model, validation, config.batch_size * 4, device, precision, workers, validation_shard)
            actual = validation.labels[validation_shard]
            counts = confusion_matrix(actual, logits.argmax(1), len(labels)) if len(actual) else np.zeros((len(labels),) * 2, np.int64)
            sums = torch.tensor([*counts.ravel(), log_loss_sum(logits, actual)], dtype=torch.float64)
            sums = world.all_reduce(torch.cat([sums.to(device), train_loss_sum.double().reshape(1)])).cpu().numpy()
            counts = sums[: len(labels) ** 2].round().astype(np.int64).reshape(len(labels), len(labels))
            scores = metrics_from_counts(counts, float(sums[-2] / max(len(validation), 1)), labels)
            train_loss = float(sums[-1] / max(train_batches, 1))
            record = {
                "step": state.step,
                "epoch": state.epoch + state.batch / batches_per_epoch,
                "train/loss": train_loss,
                "validation/loss": scores["loss"],
                "validation/accuracy": scores["accuracy"],
                "validation/macro_f1": scores["macro_f1"],
                "lr": learning_rate(config, max(state.step - 1, 0), total_steps),
                "samples_per_second": state.samples_per_second,
            }
            record = world.broadcast(record)  # rank 0's clock: the same samples/s in every rank's history
            state.history.append(record)
            improved = tracker.update(record[f"validation/{config.monitor}"], state.step, record["epoch"])
            rng = world.all_gather(_rng_state(device))
            if not world.main:
                return
            live.log(record)
            say(
                f"epoch {record['epoch']:.2f} step {state.step}: train loss {train_loss:.4f} | validation loss "
                f"{record['validation/loss']:.4f} accuracy {scores['accuracy']:.4f} macro-F1 {scores['macro_f1']:.4f} | "
                f"{record['samples_per_second']:,.0f} samples/s{' | best' if improved else ''}"
            )
            if improved:  # saved first: a kill between the two saves must not leave a best.pt older than last.pt's tracker
                best = {"step": state.step, "epoch": record["epoch"], "monitor": config.monitor, "value": tracker.best}
                save_checkpoint(resume_dir / "best.pt", {**inference_state(), "best": best})
            # the run ends here (the resume folder with it): its last resume state (3x the model's size
            # with Adam's moments) would never be read; a kill before the end resumes from the one before
            if not (tracker.should_stop or state.step >= total_steps):
                save_checkpoint(resume_path, checkpoint_state(rng))

        train_model.train()
        loss_sum, loss_count = torch.zeros((), device=device), 0  # summed on the device: no per-step sync
        while state.epoch < config.max_epochs and not tracker.should_stop:
            # the global batches, the same on every rank; each rank takes its share of each one
            order = length_grouped_batches(train.lengths, config.batch_size, rng=np.random.default_rng([config.seed, state.epoch]))
            shares = [shard(batch, world) for batch in order[state.batch :]]
            sizes = [len(batch) for batch in order[state.batch :]]
            # a share left empty (a last batch smaller than the world) trains on one document with weight 0
            real = [len(share) > 0 for share in shares]
            shares = [share if len(share) else batch[:1] for share, batch in zip(shares, order[state.batch :])]
            console.start_epoch(state.epoch, config.max_epochs, len(order), state.batch)
            loader = batch_loader(train, shares, device, workers)
            tick = time.perf_counter()
            for (ids, lengths, targets), size, counted in zip(loader, sizes, real):
                ids, lengths, targets = to_device((ids, lengths, targets), device)
                state.batch += 1
                end_of_epoch = state.batch == len(order)
                last_micro_step = state.batch % config.accumulate == 0 or end_of_epoch
                # inner accumulation steps keep their gradients local; the last one all-reduces them all
                sync = contextlib.nullcontext() if last_micro_step or not world.distributed else train_model.no_sync()
                with sync:
                    with autocast(device, precision):
                        logits = train_model(ids, lengths)
                    losses = nn.functional.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing, reduction="none")
                    # this rank's part of the global batch's mean loss, times the world size, which DDP's
                    # gradient average divides out: the same gradient as one process taking the whole batch
                    loss = losses.sum() * (world.size / size if counted else 0.0)
                    (loss / config.accumulate).backward()
                state.samples += size
                loss_sum += loss.detach() / world.size
                loss_count += 1
                if not last_micro_step:
                    continue
                _optimizer_step(model, optimizers, config, learning_rate(config, state.step, total_steps))
                state.step += 1
                now = time.perf_counter()
                state.train_seconds, tick = state.train_seconds + now - tick, now
                if console.interactive and state.step % 20 == 0:
                    console.advance(20, loss_sum.item() / loss_count, state.samples_per_second)
                if stop_after_steps is not None and state.step >= stop_after_steps:
                    raise SimulatedKill(f"stopped after {state.step} steps")
                if end_of_epoch:
                    state.epoch, state.batch = state.epoch + 1, 0
                    console.end_epoch()
                if (config.eval_every and state.step % config.eval_every == 0) or (not config.eval_every and end_of_epoch):
                    validate(loss_sum, loss_count)
                    loss_sum, loss_count = torch.zeros((), device=device), 0
                    if tracker.should_stop:
                        break
                    tick = time.perf_counter()
            console.end_epoch()
        if not state.history or state.history[-1]["step"] != state.step:  # eval_every left a tail unvalidated
            validate(loss_sum, loss_count)

        report = {  # what the run learned: numbers that compare across experiments
            "best_validation": tracker.best,
            "best_epoch": tracker.best_epoch,
            "best_step": tracker.best_step,
            "epochs": round(state.epoch + state.batch / batches_per_epoch, 3),
            "steps": state.step,
            "stopped_early": int(tracker.should_stop),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_documents": len(train),
        }
        runtime = {  # how it ran: differs between identical runs or machines, so not a metric
            "arch": params.model.arch,
            "monitor": config.monitor,
            **{key: getattr(config, key) for key in RESOLVED_KEYS},  # as run: train's nulls resolved for the arch
            "wall_seconds": round(time.perf_counter() - started, 2),
            "train_seconds": round(state.train_seconds, 2),
            "samples_per_second": round(state.samples_per_second, 1),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": precision,
            "processes": world.size,
            "threads": torch.get_num_threads(),  # per process
            "peak_memory_mb": round(peak_memory_mb(device), 1),  # rank 0's
        }
        if world.main:
            live.close()
            with staged_dir(out_dir) as staging:
                link_or_copy(resume_dir / "best.pt", staging / "best.pt")
            write_json(report_path, report)
            if runtime_path is not None:
                write_json(runtime_path, runtime)
            shutil.rmtree(resume_dir)
        world.barrier()  # the outputs are complete before any process reports success
        return {**report, **runtime}


def _dense_embeddings(model: nn.Module) -> bool:
    """Turn sparse embedding tables dense (for backends that cannot all-reduce sparse gradients);
    true if there were any."""
    found = False
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.sparse:
            module.sparse, found = False, True
    return found


def _optimizer_step(model: nn.Module, optimizers: list[torch.optim.Optimizer], config: TrainParams, lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if config.clip_norm is not None:
        # sparse embedding gradients are left out: they touch few rows and cannot be clipped in place
        dense = [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
        nn.utils.clip_grad_norm_(dense, config.clip_norm)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
