"""The train stage on real tokenized fixtures (real spaCy), on CPU; one GPU test when CUDA is present."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, TINY_TOKENIZE, assert_user_error, labelled_rows, invoke, write_csv, write_params

from pipeline.data.tokenized import TokenizedSplit
from pipeline.stages.download import run_download
from pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.training.loader import predict_logits
from pipeline.metrics import classification_metrics
from pipeline.params import Params, TrainParams, parse_params
from pipeline.stages.tokenize import run_tokenize
from pipeline.stages.train import SimulatedKill, run_train
from pipeline.training.early_stopping import Tracker
from pipeline.training.live import EpochEstimate
from pipeline.training.schedule import learning_rate



@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A separable two-class dataset, downloaded and tokenized by the real stages."""
    root = tmp_path_factory.mktemp("data")
    write_csv(root / "source" / "train.csv", labelled_rows(480))
    write_csv(root / "source" / "test.csv", labelled_rows(120, offset=5000))
    params = parse_params({"download": {"source": str(root / "source")}, "tokenize": {**TINY_TOKENIZE, "workers": 1, "min_freq": 1}})
    run_download(params.download, root / "raw", root / "data.json")
    run_tokenize(params.tokenize, root / "raw", root / "processed", root / "tokenize.json", progress=False)
    return root / "processed"


def make_params(arch: str = "bag", **train) -> Params:
    return parse_params({"tokenize": TINY_TOKENIZE, "model": {**TINY_MODEL, "arch": arch}, "train": {"max_epochs": 4, "lr": 0.05, "threads": 1, "monitor": "accuracy", **train}})


def train_once(params: Params, processed: Path, out: Path, **kwargs) -> dict:
    return run_train(
        params, processed, out / "models", out / "train.json", out / "live", out / "resume",
        runtime_path=out / "runtime.json", progress=False, timing_dir=out / "runtime", **kwargs,
    )


def test_accuracy(checkpoint: Path, processed: Path, split: str = "test") -> float:
    data = TokenizedSplit(processed / split)
    logits = predict_logits(model_from_checkpoint(load_checkpoint(checkpoint)), data, 64, torch.device("cpu"))
    return classification_metrics(logits, data.labels, ["neg", "pos"])["accuracy"]


test_accuracy.__test__ = False  # a helper, not a test


def learned(out: Path) -> dict[str, str]:
    """Every curve logged (exact decimal text, one row per validation); samples/s, which no two
    runs share, is not among them (it is a timing, in the runtime folder)."""
    plots = out / "live" / "plots" / "metrics"
    return {str(p.relative_to(plots)): p.read_text() for p in sorted(plots.rglob("*.tsv"))}


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("arch", ["bag", "cnn", "lstm", "transformer"])
def test_each_architecture_learns_separable_data(arch, processed, tmp_path):
    report = train_once(make_params(arch, lr=0.005 if arch == "transformer" else 0.05), processed, tmp_path)
    assert report["arch"] == arch and report["device"] == "cpu" and report["precision"] == "fp32"
    assert report["best_validation"] >= 0.9
    assert test_accuracy(tmp_path / "models" / "best.pt", processed) >= 0.9  # chance is 0.5
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["best.pt"]
    assert not (tmp_path / "resume").exists()  # removed once the run completes


def test_report_and_curves(processed, tmp_path):
    report = train_once(make_params(), processed, tmp_path)
    saved = json.loads((tmp_path / "train.json").read_text())
    runtime = json.loads((tmp_path / "runtime.json").read_text())
    assert {**saved, **runtime} == report
    # the metrics file holds numbers that compare across runs; timings, device and strings are runtime
    assert all(isinstance(value, (int, float)) for value in saved.values()), saved
    for key in ("best_validation", "best_epoch", "epochs", "steps", "parameters"):
        assert key in saved, key
    for key in ("wall_seconds", "samples_per_second", "device", "precision", "peak_memory_mb", "arch"):
        assert key in runtime and key not in saved, key
    weights = load_checkpoint(tmp_path / "models" / "best.pt")["model"]
    assert saved["parameters"] == sum(t.numel() for name, t in weights.items() if name != "idf" and t.is_floating_point())  # buffers (bag's usable rows, idf weights) are no parameters
    plots = tmp_path / "live" / "plots" / "metrics"
    for path in [plots / f"{name}.tsv" for name in ("train/loss", "validation/loss", "validation/accuracy", "validation/macro_f1", "lr")] + [
        tmp_path / "runtime" / "samples_per_second.tsv"  # a timing: beside runtime.json, out of the curves that compare across runs
    ]:
        rows = path.read_text().splitlines()
        assert len(rows) == 1 + report["epochs"], path  # header + one row per epoch
    assert not list(plots.rglob("samples_per_second.tsv"))


def test_same_seed_same_metrics_and_weights(processed, tmp_path):
    first = train_once(make_params("cnn"), processed, tmp_path / "a")
    second = train_once(make_params("cnn"), processed, tmp_path / "b")
    assert learned(tmp_path / "a") == learned(tmp_path / "b")
    assert same_weights(tmp_path / "a" / "models" / "best.pt", tmp_path / "b" / "models" / "best.pt")
    assert first["best_validation"] == second["best_validation"]
    train_once(make_params("cnn", seed=1), processed, tmp_path / "c")
    assert learned(tmp_path / "c") != learned(tmp_path / "a")  # the seed matters


@pytest.mark.parametrize(
    ("arch", "eval_every", "workers"),
    [
        ("bag", None, 0),  # killed in epoch 2, resumed from the epoch boundary
        ("lstm", None, 0),
        ("bag", 5, 0),  # killed mid-epoch, resumed from a validation inside the epoch
        ("cnn", 5, 2),  # the same with batches built in loader worker processes
    ],
)
def test_resume_after_a_kill_ends_like_an_uninterrupted_run(arch, eval_every, workers, processed, tmp_path):
    # monitor loss: it keeps falling on this data, so best.pt is the final state and its weights
    # show that the whole trajectory after the kill was the same
    params = make_params(arch, patience=10, monitor="loss", eval_every=eval_every, workers=workers)
    whole = train_once(params, processed, tmp_path / "whole")
    steps_per_epoch = whole["steps"] // 4
    kill_at = steps_per_epoch + 2 if eval_every is None else steps_per_epoch + 6  # in epoch 2, two or three steps after a validation
    last_validation = steps_per_epoch if eval_every is None else (kill_at - 1) // eval_every * eval_every  # the kill comes before step kill_at's validation
    assert eval_every is None or last_validation % steps_per_epoch != 0  # really mid-epoch

    with pytest.raises(SimulatedKill):
        train_once(params, processed, tmp_path / "cut", stop_after_steps=kill_at)
    state = load_checkpoint(tmp_path / "cut" / "resume" / "last.pt")
    assert state["progress"]["step"] == last_validation and state["progress"]["epoch"] == 1
    assert (state["progress"]["batch"] == 0) == (eval_every is None)
    resumed = train_once(params, processed, tmp_path / "cut")

    assert learned(tmp_path / "cut") == learned(tmp_path / "whole")  # every validation, bit for bit
    assert resumed["steps"] == whole["steps"] and resumed["best_step"] == whole["best_step"]
    assert same_weights(tmp_path / "cut" / "models" / "best.pt", tmp_path / "whole" / "models" / "best.pt")
    rows = (tmp_path / "cut" / "live" / "plots" / "metrics" / "validation" / "accuracy.tsv").read_text().splitlines()
    assert len(rows) == 1 + len(learned(tmp_path / "whole")["validation/accuracy.tsv"].splitlines()) - 1  # each validation once


def test_resume_state_of_other_params_is_discarded(processed, tmp_path, capsys):
    with pytest.raises(SimulatedKill):
        train_once(make_params(), processed, tmp_path, stop_after_steps=9)  # after the first validation
    report = train_once(make_params(lr=0.02), processed, tmp_path)
    assert "starting over" in capsys.readouterr().out
    assert report["epochs"] == 4


def test_checkpoint_round_trip(processed, tmp_path):
    report = train_once(make_params("transformer", lr=0.005), processed, tmp_path)
    checkpoint = torch.load(tmp_path / "models" / "best.pt", weights_only=True)  # no pickled code
    assert checkpoint["labels"] == ["neg", "pos"] and checkpoint["model_config"]["arch"] == "transformer"
    assert checkpoint["text"] == json.loads((processed / "text.json").read_text())  # tokenizer settings
    assert checkpoint["best"]["step"] == report["best_step"]
    # what inference needs and nothing else: no optimizer moments, RNG or history
    assert set(checkpoint) == {"format", "pipeline_version", "model_config", "vocab_size", "vocab_sha256", "labels", "text", "model", "best"}
    # the reloaded best model scores exactly what training recorded for it
    assert test_accuracy(tmp_path / "models" / "best.pt", processed, "validation") == report["best_validation"]


def test_early_stopping(processed, tmp_path):
    # validation loss keeps falling, so with mode max no validation after the first improves
    report = train_once(make_params(monitor="loss", mode="max", patience=2, max_epochs=10), processed, tmp_path)
    assert report["stopped_early"] and report["epochs"] == 3 and report["best_epoch"] == 1
    # best.pt kept the first epoch's state while training moved on
    assert load_checkpoint(tmp_path / "models" / "best.pt")["best"]["step"] == report["best_step"]
    assert report["steps"] > report["best_step"]


def test_gradient_accumulation_and_eval_every(processed, tmp_path):
    report = train_once(make_params(batch_size=16, accumulate=2, eval_every=5, max_epochs=1), processed, tmp_path)
    steps = report["steps"]
    assert steps == math.ceil(math.ceil(len(TokenizedSplit(processed / "train")) / 16) / 2)
    rows = (tmp_path / "live" / "plots" / "metrics" / "validation" / "accuracy.tsv").read_text().splitlines()
    assert len(rows) == 1 + steps // 5 + (steps % 5 > 0)  # every 5 steps, and the tail


def test_learning_rate_schedule():
    # 10 steps per epoch, warmup 1 epoch, the cap 10 epochs (100 steps)
    config = TrainParams(lr=1.0, warmup=1.0, schedule="cosine", max_epochs=10)
    assert learning_rate(config, 0, 10) == pytest.approx(0.1)
    assert learning_rate(config, 9, 10) == pytest.approx(1.0)
    assert learning_rate(config, 55, 10) == pytest.approx(0.5)
    assert learning_rate(config, 100, 10) == pytest.approx(0.0)
    linear = TrainParams(lr=1.0, warmup=0.0, schedule="linear", max_epochs=10)
    assert learning_rate(linear, 50, 10) == pytest.approx(0.5)
    assert learning_rate(TrainParams(lr=0.3, warmup=0.0, schedule="constant", max_epochs=10), 99, 10) == 0.3
    # plateau: the run's own validations decide; the cap does not enter
    plateau = TrainParams(lr=0.2, warmup=0.5, schedule="plateau", max_epochs=10)
    assert learning_rate(plateau, 2, 10) == pytest.approx(0.2 * 3 / 5)  # warming up over half an epoch
    assert learning_rate(plateau, 77, 10, plateau_scale=0.25) == pytest.approx(0.05)
    assert learning_rate(plateau, 77, 10) == learning_rate(plateau.model_copy(update={"max_epochs": 60}), 77, 10)


def test_raising_the_epoch_cap_leaves_an_early_stopped_run_unchanged(processed, tmp_path):
    """The shipped schedule (null: plateau for bag) does not read max_epochs; linear decay does."""
    def run(out: str, **train) -> tuple[list, dict]:
        report = train_once(make_params(lr=None, **train), processed, tmp_path / out)
        state = torch.load(tmp_path / out / "models" / "best.pt", weights_only=False)["model"]
        history = (tmp_path / out / "live" / "plots" / "metrics" / "lr.tsv").read_text()
        return [report["epochs"], report["best_epoch"], history], state

    (capped, state30), (longer, state60) = run("cap30", max_epochs=30), run("cap60", max_epochs=60)
    assert capped[0] < 30 and capped == longer  # stopped early, at the same epoch, with the same lr at each step
    assert all(torch.equal(state30[key], state60[key]) for key in state30)
    (linear30, _), (linear60, _) = run("linear30", max_epochs=30, schedule="linear"), run("linear60", max_epochs=60, schedule="linear")
    assert linear30[2] != linear60[2]  # the cap changed the lr of every step: what issue 22 removed from the default


def test_every_batch_weighs_the_same_in_an_accumulated_step():
    from pipeline.training.trainer import batches_in_step

    # 7 batches, 3 per step: steps of 3, 3 and 1 batch; the last one is not a third as heavy
    assert [batches_in_step(b, 3, 7) for b in range(1, 8)] == [3, 3, 3, 3, 3, 3, 1]
    assert [batches_in_step(b, 2, 4) for b in range(1, 5)] == [2, 2, 2, 2]
    assert [batches_in_step(b, 1, 3) for b in range(1, 4)] == [1, 1, 1]


def test_tracker_min_delta():
    tracker = Tracker("accuracy", "max", patience=2, min_delta=0.01)
    assert tracker.update(0.80, 1, 1)
    assert not tracker.update(0.805, 2, 2) and not tracker.should_stop
    assert not tracker.update(0.809, 3, 3) and tracker.should_stop
    assert tracker.best == 0.80 and tracker.best_epoch == 1


def test_cli_errors(processed, tmp_path):
    write_params(tmp_path, train={"batch_size": 0})
    assert_user_error(invoke("train", "--data", str(processed), cwd=tmp_path), "train.batch_size")
    write_params(tmp_path, train={"lr": "fast"})
    assert_user_error(invoke("train", "--data", str(processed), cwd=tmp_path), "train.lr")
    write_params(tmp_path)
    assert_user_error(invoke("train", "--data", str(tmp_path / "nowhere"), cwd=tmp_path), "tokenize")
    if not torch.cuda.is_available():
        write_params(tmp_path, train={"device": "cuda"})
        assert_user_error(invoke("train", "--data", str(processed), cwd=tmp_path), "device 'cuda' is not available")
    assert not (tmp_path / "models").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_cuda_matches_fp32(processed, tmp_path):
    fp32 = train_once(make_params("cnn", precision="fp32", device="cuda"), processed, tmp_path / "fp32")
    bf16 = train_once(make_params("cnn", precision="bf16", device="cuda"), processed, tmp_path / "bf16")
    assert fp32["device"].startswith("cuda") and bf16["precision"] == "bf16"
    assert abs(bf16["best_validation"] - fp32["best_validation"]) <= 0.05
    assert bf16["best_validation"] >= 0.9


def test_trains_in_a_git_repo_without_commits(processed, tmp_path):
    """`git init && dvc init && dvc repro` before any commit is a normal start; DVCLive must cope."""
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    write_params(tmp_path, model={**TINY_MODEL, "arch": "bag"}, train={"max_epochs": 1, "threads": 1})
    result = invoke("train", "--data", str(processed), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reports" / "train" / "plots" / "metrics" / "validation" / "loss.tsv").is_file()


def test_tensorboard_event_files_hold_the_same_curves(processed, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = train_once(make_params(tensorboard=True), processed, tmp_path)
    events = EventAccumulator(str(tmp_path / "live" / "tensorboard"))
    events.Reload()
    logged = events.Scalars("validation/accuracy")
    rows = (tmp_path / "live" / "plots" / "metrics" / "validation" / "accuracy.tsv").read_text().splitlines()[1:]
    assert len(logged) == len(rows) == report["epochs"]  # one point per validation, as in DVCLive
    # DVCLive's columns: step, value
    assert [e.step for e in logged] == [int(row.split("\t")[0]) for row in rows]
    assert [e.value for e in logged] == pytest.approx([float(row.split("\t")[1]) for row in rows])
    assert {"train/loss", "validation/loss", "lr"} <= set(events.Tags()["scalars"])


def test_a_batch_larger_than_the_train_split_is_capped(processed, tmp_path, capsys):  # noqa: F811
    report = train_once(make_params(batch_size=100_000, max_epochs=2), processed, tmp_path)
    assert report["steps"] == 2 and report["batch_size"] == report["train_documents"]  # one batch per epoch, as run
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: train.batch_size 100,000 is more than the {report['train_documents']:,} train documents; "
                        f"batches of {report['train_documents']:,}"]


def test_a_long_epoch_is_announced_from_the_first_steps():
    estimate = EpochEstimate(documents=10_000, epochs=3)
    assert estimate.update(32, 1.0) is None  # the first step warms up: not measured
    lines = [estimate.update(32 * (step + 1), 1.0 + step) for step in range(1, 6)]  # then 32 samples/s
    assert lines[:-1] == [None] * 4  # five steps measured before it speaks
    assert lines[-1].startswith("train: an epoch will take about 5 min (32.0 samples/s over the first 6 steps)")
    assert "up to 3 epochs: about 16 min" in lines[-1]
    assert estimate.update(10_000, 100.0) is None  # said once
    quick = EpochEstimate(documents=10_000, epochs=3)
    assert [quick.update(1000 * step, 0.1 * step) for step in range(10)] == [None] * 10  # an epoch of 1 s is not worth a line


def test_train_prints_the_estimate_when_an_epoch_is_long(processed, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pipeline.training.live.LONG_EPOCH_SECONDS", 0.0)  # every epoch counts as long
    monkeypatch.setattr("pipeline.training.live.ESTIMATE_STEPS", 1)
    monkeypatch.setattr("pipeline.training.live.ESTIMATE_SECONDS", 0.0)
    train_once(make_params(max_epochs=1), processed, tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if "an epoch will take about" in line]
    assert len(lines) == 1 and "up to 1 epoch: about" in lines[0], lines
