"""Torch plumbing shared by train, evaluate and export: devices, precision, batch loading,
batched prediction and the checkpoint format.

A checkpoint is one `torch.save`d dict of tensors and plain Python values, so it loads
with `weights_only=True` (no pickled code runs). Two kinds share the layout's header:

    format, pipeline_version   this layout's version, the package that wrote it
    model_config, vocab_size,  everything `build_model` needs, the class names and the
    labels, text               tokenizer settings (text.json): what inference needs
    encoder_config             (pretrained only) the Hugging Face encoder's config, so that
                               the model is rebuilt without its source folder or the Hub
    model                      the weights (state_dict)

`models/train/best.pt` is that and a small `best` record (step, epoch, monitored value),
nothing more: no optimizer state, so an experiment adds only the weights to DVC's cache.
The resume state (models/.train-resume/last.pt, outside the outputs) adds what continuing
needs: optimizers, tracker, progress (step, epoch, batch in the epoch, samples, training
seconds, logged history), rng and fingerprint (what the run was for: params and data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline import __version__
from pipeline.batching import TokenizedSplit, length_grouped_batches, read_labels, read_test_texts
from pipeline.errors import PipelineError, first_line
from pipeline.files import atomic_file
from pipeline.models import build_model
from pipeline.params import ModelParams

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_FORMAT = 2  # 2: best.pt holds inference state only


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU. An explicit device that is absent is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PipelineError(f"device {name!r} is not available on this machine; set the device param to auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError("device 'mps' is not available on this machine; set the device param to auto or cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA, fp32 elsewhere."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Batches(Dataset):
    """Batch i of a fixed list of index batches, as tensors; built in loader workers when there are any."""

    def __init__(self, split: TokenizedSplit, batches: list[np.ndarray]):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(array) for array in self.split.batch(self.batches[i]))


def batch_loader(split: TokenizedSplit, batches: list[np.ndarray], device: torch.device, workers: int) -> DataLoader:
    """Batches in the given order; padded in `workers` processes and pinned when feeding a GPU."""
    return DataLoader(
        _Batches(split, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        # its own generator: creating a loader must not draw from the global RNG, or a run
        # resumed mid-epoch (one loader fewer) would drop out differently from an uninterrupted one
        generator=torch.Generator(),
        pin_memory=device.type == "cuda",
        prefetch_factor=8 if workers else None,
    )


def to_device(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    # non_blocking: the copy from pinned memory overlaps the previous step's compute
    return tuple(t.to(device, non_blocking=True) for t in tensors)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    split: TokenizedSplit,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    workers: int = 0,
    subset: np.ndarray | None = None,
) -> np.ndarray:
    """float32 logits (documents, classes) in the split's order; with `subset` (document
    indices), of those documents only, in that order (a process's shard)."""
    was_training = model.training
    model.eval()
    subset = np.arange(len(split)) if subset is None else subset
    rows = length_grouped_batches(split.lengths[subset], batch_size)  # positions in subset
    batches = [subset[r] for r in rows]
    logits = np.zeros((len(subset), 0), dtype=np.float32)
    for indices, (ids, lengths, _) in zip(rows, batch_loader(split, batches, device, workers)):
        ids, lengths = to_device((ids, lengths), device)
        with autocast(device, precision):
            out = model(ids, lengths).float().cpu().numpy()
        if logits.shape[1] == 0:
            logits = np.zeros((len(logits), out.shape[1]), dtype=np.float32)
        logits[indices] = out
    model.train(was_training)
    return logits


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written to a temporary file and renamed: a kill mid-save keeps the previous checkpoint.
    No CRC-32 of every record: the rename already guarantees a complete file, and the checksum
    took a third of the time of saving bag's 400 MB resume state at every validation."""
    with atomic_file(path, "wb") as handle, _without_crc32():
        torch.save({"format": CHECKPOINT_FORMAT, "pipeline_version": __version__, **state}, handle)


@contextlib.contextmanager
def _without_crc32() -> Iterator[None]:
    try:
        from torch.utils.serialization import config
    except ImportError:  # torch before 2.7 has no such setting
        yield
        return
    previous, config.save.compute_crc32 = config.save.compute_crc32, False
    try:
        yield
    finally:
        config.save.compute_crc32 = previous


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the train stage first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise PipelineError(f"{path} is not a readable checkpoint ({first_line(exc)}); rerun the train stage") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise PipelineError(f"{path} is not a checkpoint of this pipeline (format {CHECKPOINT_FORMAT}); rerun the train stage")
    return checkpoint


class ScoringInputs(NamedTuple):
    checkpoint: dict[str, Any]
    labels: list[str]
    test: TokenizedSplit
    texts: pd.Series  # the raw test texts, in the tokenized split's order


def load_scoring_inputs(checkpoint_path: Path, processed: Path, raw_test: Path) -> ScoringInputs:
    """What evaluate and export score: the checkpoint, checked against the tokenized test split
    (same classes, not empty) and the raw texts it came from."""
    checkpoint = load_checkpoint(checkpoint_path)
    labels = read_labels(processed)
    if list(checkpoint["labels"]) != labels:
        raise PipelineError(f"{checkpoint_path} was trained on other classes than {processed}/labels.json; rerun the train stage")
    test = TokenizedSplit(processed / "test")
    if len(test) == 0:
        raise PipelineError(f"{processed}/test is empty; check the download stage's output")
    return ScoringInputs(checkpoint, labels, test, read_test_texts(raw_test, len(test)))


def model_from_checkpoint(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """The trained model on CPU, in eval mode."""
    config = ModelParams.model_validate(checkpoint["model_config"])
    # a pretrained model is rebuilt from the encoder config it stored, not from its source
    model = build_model(config, checkpoint["vocab_size"], len(checkpoint["labels"]), checkpoint.get("encoder_config"))
    model.load_state_dict(checkpoint["model"])
    return model.eval()
