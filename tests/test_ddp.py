"""Training in several processes (DDP through torchrun) on CPU with gloo, through the CLI as a
user runs it; NCCL on CUDA when the machine has GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_MODEL, TINY_TOKENIZE, write_params
from test_train import processed, same_weights, test_accuracy  # noqa: F401 (processed is a fixture)

from pipeline.data.tokenized import TokenizedSplit
from pipeline.params import parse_params
from pipeline.training.checkpoint import fingerprint, load_checkpoint


def train_cli(root: Path, processed: Path, *extra: str, timeout: int = 240, **train) -> subprocess.CompletedProcess:  # noqa: F811
    """`python -m pipeline train` in `root` with outputs in the default layout under it."""
    write_params(root, tokenize=TINY_TOKENIZE, model={**TINY_MODEL, "arch": "bag"}, train={"device": "cpu", "threads": 1, **train})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--data", str(processed), *extra],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
    )


def validation_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("epoch ")]


# 432 training documents: 14 batches of 32 per epoch, 7 steps with accumulate 2; eval_every 5
# validates mid-epoch (steps 5, 10, 15, 20 and the tail, 21)
DDP = {"devices": 2, "batch_size": 32, "accumulate": 2, "eval_every": 5, "max_epochs": 3, "lr": 0.05, "monitor": "loss", "patience": 10}


def test_two_processes_train_resume_and_write_once(processed, tmp_path):  # noqa: F811
    root = tmp_path / "whole"
    root.mkdir()
    whole = train_cli(root, processed, **DDP)
    assert whole.returncode == 0, whole.stderr
    # rank 0 alone prints: one line per validation and one summary
    assert len(validation_lines(whole.stdout)) == 5, whole.stdout
    assert whole.stdout.count("train: best validation") == 1
    assert [p.name for p in (root / "models" / "train").iterdir()] == ["best.pt"]
    assert not (root / "models" / ".train-resume").exists()
    runtime = json.loads((root / "reports" / "runtime" / "train.json").read_text())
    assert runtime["processes"] == 2 and runtime["device"] == "cpu"
    report = json.loads((root / "reports" / "train.json").read_text())
    assert report["steps"] == 21 and report["train_documents"] == 432  # the global batch: the same steps as one process
    rows = (root / "reports" / "train" / "plots" / "metrics" / "validation" / "loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 5  # written by one process: each validation once
    assert test_accuracy(root / "models" / "train" / "best.pt", processed) >= 0.9

    # killed after step 12 (both processes), it resumes from the validation at step 10, mid-epoch
    cut = tmp_path / "cut"
    cut.mkdir()
    killed = train_cli(cut, processed, "--stop-after-steps", "12", **DDP)
    assert killed.returncode == 1 and "SimulatedKill" in killed.stderr
    assert "training in 2 processes failed" in killed.stderr.strip().splitlines()[-1]  # a bug: the traceback, then one line
    state = load_checkpoint(cut / "models" / ".train-resume" / "last.pt")
    assert state["progress"]["step"] == 10 and state["progress"]["batch"] > 0 and len(state["rng"]) == 2
    resumed = train_cli(cut, processed, **DDP)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and resumed.stdout.count("resuming from") == 1
    plots = lambda r: {  # noqa: E731
        str(p.relative_to(r)): p.read_text() for p in sorted(r.rglob("*.tsv"))
    }
    assert plots(cut / "reports" / "train" / "plots") == plots(root / "reports" / "train" / "plots")  # every validation, bit for bit
    assert same_weights(cut / "models" / "train" / "best.pt", root / "models" / "train" / "best.pt")

    # a resume state belongs to its process count (each process has its own RNG state)
    params = parse_params({"train": {"devices": 2}})
    assert fingerprint(params, processed, 1) != fingerprint(params, processed, 2)


def test_uneven_shards_do_not_hang(processed, tmp_path):  # noqa: F811
    # 432 documents in batches of 431: the second global batch holds one document, so one process
    # has none (it trains on a placeholder with weight 0), and the first splits 216/215
    assert len(TokenizedSplit(processed / "train")) == 432
    result = train_cli(tmp_path, processed, timeout=180, devices=2, batch_size=431, max_epochs=2, lr=0.1, monitor="accuracy")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert report["steps"] == 4 and report["epochs"] == 2


def test_devices_needs_tokenized_data(tmp_path):
    result = train_cli(tmp_path, tmp_path / "nowhere", devices=2)
    assert result.returncode == 1 and "tokenize" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1  # checked once, before any process starts


def test_an_error_in_every_process_is_one_line(processed, tmp_path):  # noqa: F811
    """Each process refuses the params (a transformer shorter than the tokenized documents):
    one line names the first process's error, not one per process plus torchrun's traceback."""
    write_params(tmp_path, model={**TINY_MODEL, "arch": "transformer", "transformer": {**TINY_MODEL["transformer"], "max_positions": 8}},
                 train={"device": "cpu", "threads": 1, "devices": 2})
    result = subprocess.run([sys.executable, "-m", "pipeline", "train", "--data", str(processed)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: training in 2 processes failed; process 0: model.transformer.max_positions: 8 is below tokenize.max_tokens (64): "
        "the model would silently cut longer documents; raise it or lower tokenize.max_tokens"
    ], result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_two_cuda_processes_without_a_gpu_are_refused_before_torchrun(processed, tmp_path):  # noqa: F811
    result = train_cli(tmp_path, processed, devices=2, **{"device": "cuda"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: process 1 on this machine has no GPU (0 visible); set train.devices (or torchrun's --nproc_per_node) "
        "to at most the GPU count, or train.device to cpu"
    ]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_on_two_gpus(processed, tmp_path):  # noqa: F811
    result = train_cli(tmp_path, processed, **{**DDP, "device": "auto", "eval_every": None})
    assert result.returncode == 0, result.stderr
    assert "sparse embedding tables train dense" in result.stdout  # NCCL: no sparse all-reduce
    runtime = json.loads((tmp_path / "reports" / "runtime" / "train.json").read_text())
    assert runtime["processes"] == 2 and runtime["device"] == "cuda:0"
    assert test_accuracy(tmp_path / "models" / "train" / "best.pt", processed) >= 0.9
