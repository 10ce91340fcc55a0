"""The training loop's steps, for one process of a run (CPU, one GPU, or a rank under DDP):
restore, the batches of every epoch, one training step, validate, save.

`pipeline/stages/train.py` drives them as one short loop. Each validation (every epoch, or
every `eval_every` optimizer steps) logs the curves, saves the resume state and decides early
stopping.

Resuming: DVC deletes a stage's outputs before running it, so the resume state (the full
state: optimizer moments too) is written to a folder outside them (models/.train-resume).
A rerun whose params and data match continues from the last validation there, at an
epoch boundary or mid-epoch: the weights, optimizer moments, RNG state, early-stopping
state and logged history are restored, the batch order of every epoch is a function of
(seed, epoch), and no data loader draws from the global RNG, so the finished run is the
same as an uninterrupted one, bit for bit on CPU.

Several processes (see distributed.py) run this same loop under DistributedDataParallel:
every rank builds the same global batch order and takes its share of each global batch
(`train.batch_size` is the global batch), so all ranks take the same number of steps;
validation is sharded and its confusion counts and loss sums all-reduced, so every rank
takes the same early-stopping decision; rank 0 alone logs, saves the checkpoints and
resume state.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline.data.tokenized import JoinedSplit, TokenizedSplit, length_grouped_batches
from pipeline.errors import PipelineError, warn
from pipeline.metrics import (
    best_threshold_scores,
    class_counts,
    log_loss_sum,
    metrics_from_counts,
    multilabel_metrics_from_tally,
    multilabel_tally,
    multilabel_tally_size,
    threshold_histogram,
)
from pipeline.params import Params
from pipeline.training.checkpoint import inference_state, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.training.device import autocast
from pipeline.training.distributed import World, shard
from pipeline.training.early_stopping import Tracker
from pipeline.training.live import Console, Curves, EpochEstimate
from pipeline.training.loader import batch_loader, predict_logits, to_device
from pipeline.training.optimizers import dense_embeddings, make_optimizers, optimizer_step
from pipeline.training.schedule import learning_rate


JOIN_STREAM = 1  # train.join_texts' partners: a random stream apart from the batch order's

RESUME_FILES = re.compile(r"(best|last)\.pt|\.(best|last)\.pt\..*")  # a resume folder's files, temporary ones included


def remove_resume_dir(folder: Path) -> None:
    """Remove a resume folder, if it holds nothing but a run's resume files and the resume
    folders of candidate runs (model.bag.pooling auto); never a folder of the user's."""
    if _only_resume_files(folder, depth=1):
        shutil.rmtree(folder, ignore_errors=True)


def _only_resume_files(folder: Path, depth: int) -> bool:
    return folder.is_dir() and all(
        RESUME_FILES.fullmatch(entry.name) or (depth > 0 and _only_resume_files(entry, depth - 1)) for entry in folder.iterdir()
    )


def batches_in_step(batch: int, accumulate: int, epoch_batches: int) -> int:
    """How many batches the optimizer step of the epoch's `batch`-th batch (1-based) sums:
    `accumulate`, or what is left of the epoch for its last step. Each batch's loss is divided
    by it, so that every batch weighs the same, the epoch's last ones included."""
    first = (batch - 1) // accumulate * accumulate
    return min(accumulate, epoch_batches - first)


class SimulatedKill(RuntimeError):
    """Raised by `stop_after_steps` so tests can interrupt a run at a known step."""


@dataclass
class Progress:
    """Where the run is; saved in every resume state."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of the current epoch already consumed
    samples: int = 0  # training documents seen
    train_seconds: float = 0.0  # time in training steps (validation excluded)
    plateau_scale: float = 1.0  # schedule plateau: the lr's factor, shrunk after each validation that did not improve
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per validation

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.train_seconds, 1e-9)


@dataclass(frozen=True)
class Setup:
    """What a run works on, fixed from start to end."""

    params: Params  # resolved: no nulls in train
    world: World
    device: torch.device
    precision: str
    labels: list[str]
    train: TokenizedSplit
    validation: TokenizedSplit
    vocab_size: int
    vocab_sha256: str
    text_settings: dict
    resume_dir: Path
    run_id: str  # the fingerprint a resume state must carry
    class_weights: np.ndarray | None = None  # train.class_weights balanced: per class (per label: positive weights)

    @property
    def workers(self) -> int:
        config = self.params.train
        return config.workers if config.workers is not None else (4 if self.device.type == "cuda" else 0)

    @property
    def epoch_texts(self) -> int:
        """Texts per epoch: the train split's, and train.join_texts' joined ones."""
        return len(self.train) + round(self.params.train.join_texts * len(self.train))

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.epoch_texts / self.params.train.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.params.train.accumulate)

    @property
    def total_steps(self) -> int:
        """Optimizer steps up to the epoch cap."""
        return self.steps_per_epoch * self.params.train.max_epochs


def validation_tally(logits: np.ndarray, actual: np.ndarray, classes: int) -> np.ndarray:
    """What one process's validation shard adds to the metrics (sums, so that shards add up):
    per-class counts and the loss sum (multi-label: metrics.multilabel_tally at 0.5, then each
    label's threshold_histogram)."""
    if actual.ndim == 2:
        return np.concatenate([multilabel_tally(logits, actual), threshold_histogram(logits, actual)])
    counts = class_counts(actual, logits.argmax(1) if len(actual) else actual, classes)
    return np.concatenate([counts.ravel().astype(np.float64), [log_loss_sum(logits, actual)]])


def validation_scores(tally: np.ndarray, labels: list[str], multilabel: bool, documents: int) -> dict[str, float]:
    """Multi-label: macro_f1 and micro_f1 with each label at its best threshold (as evaluate
    will tune them), those at 0.5 as macro_f1_at_05 and micro_f1_at_05."""
    if multilabel:
        split = multilabel_tally_size(len(labels))
        at_half = multilabel_metrics_from_tally(tally[:split], labels)
        tuned = best_threshold_scores(tally[split:], len(labels))
        return {**at_half, **tuned, "macro_f1_at_05": at_half["macro_f1"], "micro_f1_at_05": at_half["micro_f1"]}
    counts = tally[:-1].round().astype(np.int64).reshape(3, len(labels))
    return metrics_from_counts(counts, float(tally[-1] / max(documents, 1)), labels)


class Batch(NamedTuple):
    ids: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    size: int  # documents in the global batch (over every rank)
    counted: bool  # false: this rank's share was empty and it trains on one document with weight 0


class Trainer:
    """The model, optimizers and state of one run, with its steps as methods."""

    def __init__(self, setup: Setup, model: nn.Module, console: Console, live_dir: Path, timing_dir: Path | None = None):
        self.setup, self.config, self.world = setup, setup.params.train, setup.world
        self.model, self.console = model, console
        self.say = console.line if self.world.main else (lambda text: None)
        if self.world.backend == "nccl" and dense_embeddings(model):
            self.say("train: NCCL cannot all-reduce sparse gradients; the sparse embedding tables train dense (AdamW) in this run")
        self.optimizers = make_optimizers(model, self.config)
        self.tracker = Tracker.for_params(self.config.monitor, self.config.mode, self.config.patience, self.config.min_delta)
        self.progress = Progress()
        self.live_dir, self.timing_dir = live_dir, timing_dir
        self.curves: Curves | None = None
        self.loss_sum, self.loss_count = torch.zeros((), device=setup.device), 0  # summed on the device: no per-step sync
        self.weights = torch.tensor(setup.class_weights, dtype=torch.float32, device=setup.device) if setup.class_weights is not None else None
        self.epoch_batches, self.epoch_ended, self.tick = 0, False, 0.0
        self.estimate = EpochEstimate(setup.epoch_texts, self.config.max_epochs)

    @property
    def resume_path(self) -> Path:
        return self.setup.resume_dir / "last.pt"

    def restore(self) -> None:
        """Continue from the resume state when it belongs to this run (rank 0 reads it and hands
        it to the others), else start afresh: the train split's statistics (bag's n-gram counts)
        go into the model's buffers, which DDP copies from rank 0. Then wrap for compile and DDP."""
        saved = self.world.broadcast(self.resume_state_of_this_run() if self.world.main else None)
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            for optimizer, optimizer_state in zip(self.optimizers, saved["optimizers"]):
                optimizer.load_state_dict(optimizer_state)
            self.tracker = Tracker(**saved["tracker"])
            self.progress = Progress(**saved["progress"])
            set_rng_state(saved["rng"][self.world.rank], self.setup.device)
            self.say(f"train: resuming from {self.resume_path} at epoch {self.progress.epoch + 1}, step {self.progress.step}")
        elif self.world.main and hasattr(self.model, "fit_to_train"):
            if line := self.model.fit_to_train(self.setup.train):
                self.say(line)
        self.step_model = torch.compile(self.model, dynamic=True) if self.config.compile else self.model
        self.train_model = self.step_model
        if self.world.distributed:
            device = self.setup.device
            self.train_model = nn.parallel.DistributedDataParallel(self.step_model, device_ids=[device.index] if device.type == "cuda" else None)
        if self.world.main:
            self.curves = Curves(self.live_dir, self.progress.history, self.config.tensorboard, self.timing_dir)
        self.train_model.train()

    def resume_state_of_this_run(self) -> dict[str, Any] | None:
        """The resume state if it belongs to this run; one that cannot be used (other params, data
        or process count, or a damaged file) is removed, so no stale state is left behind."""
        resume_dir = self.setup.resume_dir
        if not self.resume_path.is_file():
            remove_resume_dir(resume_dir)  # a kill before the first resume state leaves a best.pt, or leftovers
            return None
        try:
            saved = load_checkpoint(self.resume_path)
        except PipelineError as exc:
            warn(f"{exc}; starting over")
            saved = None
        if saved is not None and saved.get("fingerprint") == self.setup.run_id:
            return saved
        if saved is not None:
            self.say(f"train: {self.resume_path} belongs to other params, data or process count; starting over")
        remove_resume_dir(resume_dir)
        return None

    def batches(self) -> Iterator[Batch]:
        """This rank's share of every remaining global batch, epoch after epoch, until the epoch
        cap or early stopping. The order of an epoch is a function of (seed, epoch) alone."""
        config, progress, world = self.config, self.progress, self.world
        while progress.epoch < config.max_epochs and not self.tracker.should_stop:
            rng = np.random.default_rng([config.seed, progress.epoch])
            train = self.epoch_texts(progress.epoch)
            order = length_grouped_batches(train.lengths, config.batch_size, rng=rng)[progress.batch :]
            self.epoch_batches = progress.batch + len(order)
            shares = [shard(batch, world) for batch in order]
            # a share left empty (a last batch smaller than the world) trains on one document with weight 0
            real = [len(share) > 0 for share in shares]
            shares = [share if len(share) else batch[:1] for share, batch in zip(shares, order)]
            self.console.start_epoch(progress.epoch, config.max_epochs, self.epoch_batches, progress.batch)
            loader = batch_loader(train, shares, self.setup.device, self.setup.workers)
            self.tick = time.perf_counter()
            for (ids, lengths, targets), batch, counted in zip(loader, order, real):
                yield Batch(*to_device((ids, lengths, targets), self.setup.device), len(batch), counted)
                if self.tracker.should_stop:
                    break
            self.console.end_epoch()

    def epoch_texts(self, epoch: int) -> TokenizedSplit | JoinedSplit:
        """The train split as this epoch sees it: with train.join_texts, joined texts added,
        drawn from (seed, epoch) on a generator of their own (0 changes nothing)."""
        share = self.config.join_texts
        if not share:
            return self.setup.train
        rng = np.random.default_rng([self.config.seed, epoch, JOIN_STREAM])
        return JoinedSplit.drawn(self.setup.train, share, rng, int(self.setup.text_settings["max_tokens"]))

    def train_step(self, batch: Batch) -> bool:
        """Forward and backward on one batch; true when it completed an optimizer step (the last
        of `accumulate` batches, or of the epoch)."""
        config, progress, world = self.config, self.progress, self.world
        progress.batch += 1
        self.epoch_ended = progress.batch == self.epoch_batches
        last_micro_step = progress.batch % config.accumulate == 0 or self.epoch_ended
        step_batches = batches_in_step(progress.batch, config.accumulate, self.epoch_batches)
        # inner accumulation steps keep their gradients local; the last one all-reduces them all
        sync = contextlib.nullcontext() if last_micro_step or not world.distributed else self.train_model.no_sync()
        with sync:
            with autocast(self.setup.device, self.setup.precision):
                logits = self.train_model(batch.ids, batch.lengths)
            losses = self.losses(logits.float(), batch.targets)
            # this rank's part of the global batch's mean loss, times the world size, which DDP's
            # gradient average divides out: the same gradient as one process taking the whole batch
            loss = losses.sum() * (world.size / batch.size if batch.counted else 0.0)
            (loss / step_batches).backward()
        progress.samples += batch.size
        self.loss_sum += loss.detach() / world.size
        self.loss_count += 1
        if not last_micro_step:
            return False
        lr = learning_rate(config, progress.step, self.setup.steps_per_epoch, progress.plateau_scale)
        optimizer_step(self.model, self.optimizers, config.clip_norm, lr)
        progress.step += 1
        now = time.perf_counter()
        progress.train_seconds, self.tick = progress.train_seconds + now - self.tick, now
        if (line := self.estimate.update(progress.samples, progress.train_seconds)) is not None:
            self.say(line)
        if self.console.interactive and progress.step % 20 == 0:  # the bar counts batches
            self.console.advance(progress.batch - self.console.shown, self.loss_sum.item() / self.loss_count, progress.samples_per_second)
        if self.epoch_ended:
            progress.epoch, progress.batch = progress.epoch + 1, 0
            self.console.end_epoch()
        return True

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each text's loss: cross-entropy, or for label sets binary cross-entropy averaged over
        the labels; class weights and label smoothing (towards 0.5 for label sets) as configured."""
        smoothing = self.config.label_smoothing
        if self.setup.train.multilabel:
            targets = targets * (1 - smoothing) + smoothing / 2
            return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.weights, reduction="none").mean(1)
        return nn.functional.cross_entropy(logits, targets, weight=self.weights, label_smoothing=smoothing, reduction="none")

    def validation_due(self) -> bool:
        """After this optimizer step: every `eval_every` steps, else at the end of each epoch."""
        every = self.config.eval_every
        return self.progress.step % every == 0 if every else self.epoch_ended

    @property
    def validated_last_step(self) -> bool:
        return bool(self.progress.history) and self.progress.history[-1]["step"] == self.progress.step

    def validate(self) -> bool:
        """Score the validation split (each rank its shard; counts and loss sums all-reduced, so
        every rank computes the same metrics and takes the same early-stopping decision), log it,
        and return whether it is the best so far."""
        setup, config, progress, world = self.setup, self.config, self.progress, self.world
        shard_ids = np.arange(world.rank, len(setup.validation), world.size)
        logits = predict_logits(self.step_model, setup.validation, config.batch_size * 4, setup.device, setup.precision, setup.workers, shard_ids)
        tally = validation_tally(logits, setup.validation.labels[shard_ids], len(setup.labels))
        sums = torch.cat([torch.tensor(tally, dtype=torch.float64, device=setup.device), self.loss_sum.double().reshape(1)])
        sums = world.all_reduce(sums).cpu().numpy()
        scores = validation_scores(sums[:-1], setup.labels, setup.train.multilabel, len(setup.validation))
        record = {
            "step": progress.step,
            "epoch": progress.epoch + progress.batch / setup.batches_per_epoch,
            "train/loss": float(sums[-1] / max(self.loss_count, 1)),
            "validation/loss": scores["loss"],
            "validation/accuracy": scores["accuracy"],
            "validation/macro_f1": scores["macro_f1"],
            **({"validation/micro_f1": scores["micro_f1"]} if setup.train.multilabel else {}),
            "lr": learning_rate(config, max(progress.step - 1, 0), setup.steps_per_epoch, progress.plateau_scale),
            "samples_per_second": progress.samples_per_second,
        }
        record = world.broadcast(record)  # rank 0's clock: the same samples/s in every rank's history
        progress.history.append(record)
        improved = self.tracker.update(record[f"validation/{config.monitor}"], progress.step, record["epoch"])
        if not improved and config.schedule == "plateau":
            progress.plateau_scale *= config.plateau_factor
        if self.curves is not None:
            self.curves.log(record)
        self.say(
            f"epoch {record['epoch']:.2f} step {progress.step}: train loss {record['train/loss']:.4f} | validation loss "
            f"{record['validation/loss']:.4f} accuracy {scores['accuracy']:.4f} macro-F1 {scores['macro_f1']:.4f} | "
            f"{record['samples_per_second']:,.0f} samples/s{' | best' if improved else ''}"
        )
        self.loss_sum, self.loss_count = torch.zeros((), device=setup.device), 0
        return improved

    def save(self, improved: bool) -> None:
        """Rank 0 saves best.pt (when `improved`) and the resume state, with every rank's RNG."""
        rng = self.world.all_gather(rng_state(self.setup.device))
        if self.world.main:
            if improved:  # saved first: a kill between the two saves must not leave a best.pt older than last.pt's tracker
                best = {"step": self.progress.step, "epoch": self.progress.history[-1]["epoch"], "monitor": self.config.monitor, "value": self.tracker.best}
                save_checkpoint(self.setup.resume_dir / "best.pt", {**self.inference_state(), "best": best})
            # the run ends here (the resume folder with it): its last resume state (3x the model's size
            # with Adam's moments) would never be read; a kill before the end resumes from the one before
            if not (self.tracker.should_stop or self.progress.step >= self.setup.total_steps):
                save_checkpoint(self.resume_path, self.resume_state(rng))
        self.tick = time.perf_counter()  # validation and saving are not training time

    def inference_state(self) -> dict[str, Any]:
        setup = self.setup
        return inference_state(self.model, setup.params.model, setup.vocab_size, setup.vocab_sha256, setup.labels, setup.text_settings)

    def resume_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            **self.inference_state(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "tracker": asdict(self.tracker),
            "progress": asdict(self.progress),
            "rng": rng,  # one state per rank
            "fingerprint": self.setup.run_id,
        }
