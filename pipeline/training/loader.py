"""Batches of a tokenized split as tensors, and the one loop that scores a split (validation,
evaluate, export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.tokenized import TokenizedSplit, length_grouped_batches
from pipeline.files import read_json, write_json
from pipeline.training.device import autocast


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


SAVED_LOGITS_LIMIT = 16_000_000  # floats (64 MB): past this, evaluate does not keep the test logits and export scores again
TEST_LOGITS, TEST_LOGITS_INFO = "test_logits.npy", "test_logits.json"


def save_test_logits(folder: Path, logits: np.ndarray, device: torch.device) -> None:
    """evaluate's PyTorch test logits, for export's gate: the same computation on a CPU, so
    export need not score the split with PyTorch again (none past the size limit). .npy and
    JSON, which carry no clock (np.savez's zip entries would)."""
    kept = logits.size <= SAVED_LOGITS_LIMIT
    np.save(folder / TEST_LOGITS, (logits if kept else np.zeros((0, 0))).astype(np.float32))
    write_json(folder / TEST_LOGITS_INFO, {"device": device.type, "documents": int(logits.shape[0]), "classes": int(logits.shape[1]), "kept": kept})


def reusable_test_logits(folder: Path | None, documents: int, classes: int) -> np.ndarray | None:
    """The test logits evaluate saved, when they were computed on a CPU and fit this split."""
    if folder is None or not (folder / TEST_LOGITS_INFO).is_file():
        return None
    info = read_json(folder / TEST_LOGITS_INFO, "rerun the evaluate stage")
    if info.get("device") != "cpu" or not info.get("kept"):
        return None
    logits = np.load(folder / TEST_LOGITS)
    return logits if logits.shape == (documents, classes) else None
