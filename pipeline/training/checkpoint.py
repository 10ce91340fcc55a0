"""The checkpoint format, and loading a checkpoint against the data it is scored on.

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
import hashlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pipeline import __version__
from pipeline.data.raw import read_texts
from pipeline.data.tokenized import TokenizedSplit, read_labels, read_vocab_size
from pipeline.errors import PipelineError, first_line
from pipeline.files import atomic_file, read_json, sha256_of
from pipeline.models import build_model
from pipeline.params import ModelParams, Params

CHECKPOINT_FORMAT = 2  # 2: best.pt holds inference state only
# what torch.load raises for a damaged or foreign file (a truncated zip, garbage, a pickle of code)
UNREADABLE = (OSError, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError)


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
    except UNREADABLE as exc:
        raise PipelineError(f"{path} is not a readable checkpoint ({first_line(exc)}); rerun the train stage") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise PipelineError(f"{path} is not a checkpoint of this pipeline (format {CHECKPOINT_FORMAT}); rerun the train stage")
    return checkpoint


def inference_state(model: torch.nn.Module, config: ModelParams, vocab_size: int, vocab_sha256: str, labels: list[str], text: dict) -> dict[str, Any]:
    """What best.pt holds besides its `best` record: what inference needs to rebuild the model,
    and the vocabulary's checksum, so that it is never scored against other tokenized data."""
    return {
        "model_config": config.model_dump(),
        **({"encoder_config": model.encoder_config} if hasattr(model, "encoder_config") else {}),
        "vocab_size": vocab_size,
        "vocab_sha256": vocab_sha256,
        "labels": labels,
        "text": text,
        "model": model.state_dict(),
    }


def model_from_checkpoint(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """The trained model on CPU, in eval mode."""
    config = ModelParams.model_validate(checkpoint["model_config"])
    # a pretrained model is rebuilt from the encoder config it stored, not from its source
    model = build_model(config, checkpoint["vocab_size"], len(checkpoint["labels"]), checkpoint.get("encoder_config"))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def fingerprint(params: Params, processed: Path, world_size: int = 1) -> str:
    """What a resume state belongs to: the model and train params, the number of processes
    (each has its own RNG state) and the tokenized data."""
    digest = hashlib.sha256(json.dumps([params.model.model_dump(), params.train.model_dump(), world_size]).encode())
    for name in ("vocab.json", "labels.json", "text.json", "train/offsets.npy", "train/labels.npy", "validation/labels.npy"):
        digest.update((processed / name).read_bytes())
    digest.update(str((processed / "train" / "ids.npy").stat().st_size).encode())
    return digest.hexdigest()


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_same_data(checkpoint: dict[str, Any], checkpoint_path: Path, processed: Path) -> None:
    """The checkpoint was trained on this tokenized data: the same vocabulary (size and checksum)
    and tokenizer settings. Scoring it on other ids would give a number that means nothing."""
    vocab_size = read_vocab_size(processed)
    trained_on = checkpoint.get("vocab_sha256")
    if checkpoint["vocab_size"] != vocab_size or (trained_on is not None and trained_on != sha256_of(processed / "vocab.json")):
        raise PipelineError(
            f"{checkpoint_path} was trained on another vocabulary than {processed} ({checkpoint['vocab_size']:,} tokens, "
            f"this data has {vocab_size:,}{'' if checkpoint['vocab_size'] != vocab_size else ', other tokens'}); rerun the train stage (dvc repro)"
        )
    text = read_json(processed / "text.json", "rerun the tokenize stage")
    if checkpoint["text"] != text:
        raise PipelineError(f"{checkpoint_path} was trained on text tokenized with other settings than {processed}/text.json; rerun the train stage (dvc repro)")


class ScoringInputs(NamedTuple):
    checkpoint: dict[str, Any]
    labels: list[str]
    test: TokenizedSplit
    texts: list[str]  # the raw test texts, in the tokenized split's order


def load_scoring_inputs(checkpoint_path: Path, processed: Path, raw_dir: Path) -> ScoringInputs:
    """What evaluate and export score: the checkpoint, checked against the tokenized test split
    (same classes, not empty) and the raw texts it came from."""
    checkpoint = load_checkpoint(checkpoint_path)
    labels = read_labels(processed)
    if list(checkpoint["labels"]) != labels:
        raise PipelineError(f"{checkpoint_path} was trained on other classes than {processed}/labels.json; rerun the train stage")
    check_same_data(checkpoint, checkpoint_path, processed)
    test = TokenizedSplit(processed / "test")
    if len(test) == 0:
        raise PipelineError(f"{processed}/test is empty; check the download stage's output")
    return ScoringInputs(checkpoint, labels, test, read_texts(raw_dir, "test", len(test)))
