"""Real DVC in a temporary git repo: the experiment workflow as a DVC user runs it.

repro and a no-op repro; `dvc exp run -S` reruns exactly the stages that read what changed;
an edit to one stage's code reruns only that stage; exp show, metrics/params diff between
commits, the queue, plots diff; bad -S params are named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, built_once, copy_pipeline, labelled_rows, write_csv

from pipeline.params import Params

pytestmark = pytest.mark.slow

STAGES = ["baseline", "download", "evaluate", "export", "report", "tokenize", "train"]


def dvc_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=dvc_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def ran(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


def new_project(root: Path) -> Path:
    """The pipeline and the default params in a fresh git + DVC repo, with a small CSV source."""
    root.mkdir()
    copy_pipeline(root)
    # the defaults, not the workspace's params.yaml, which holds the user's last experiment
    (root / "params.yaml").write_text(yaml.safe_dump(Params().model_dump(), sort_keys=False))
    write_csv(root / "source" / "train.csv", labelled_rows(80))
    write_csv(root / "source" / "test.csv", labelled_rows(20, offset=500))
    set_param(root, "download", "source", "source")
    set_param(root, "model", "bag", {"ngram": 2, "buckets": 5000, "sparse": True})  # a small model: fast
    set_param(root, "export", "latency_runs", 10)
    set_param(root, "export", "throughput_batches", 1)
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "t@example.com", cwd=root)
    sh("git", "config", "user.name", "test", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return new_project(tmp_path / "project")


@pytest.fixture(scope="session")
def first_run(tmp_path_factory) -> Path:
    """A project after `dvc repro` and a commit of its lock file, made once for the whole session:
    pytest-xdist's workers share it (the first one to get here builds it, under a file lock)."""
    return built_once(tmp_path_factory, "dvc-first-run", lambda folder: reproduce(new_project(folder / "project")))


def reproduce(root: Path) -> None:
    assert ran(sh("dvc", "repro", cwd=root)) == STAGES
    commit_run(root, "first run")


@pytest.fixture
def reproduced(first_run: Path, tmp_path: Path) -> Path:
    """A copy of `first_run` of this test's own (without DVC's per-repo runtime state)."""
    root = tmp_path / "project"
    shutil.copytree(first_run / "project", root, symlinks=True, ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    return root


def stale_after(root: Path, section: str, key: str, value: object) -> list[str]:
    """The stages whose own dependencies `dvc status` finds changed once params.yaml sets
    `section.key` to `value` (params.yaml is put back after)."""
    saved = (root / "params.yaml").read_text()
    try:
        set_param(root, section, key, value)
        status = json.loads(sh("dvc", "status", "--json", cwd=root).splitlines()[-1])
    finally:
        (root / "params.yaml").write_text(saved)
    return sorted(stage for stage, changes in status.items() if any("changed deps" in change for change in changes if isinstance(change, dict)))


def set_param(root: Path, section: str, key: str, value: object) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def commit_run(root: Path, message: str) -> None:
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", message, cwd=root)


def experiments(root: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {"params": ..., "metrics": ...}}."""
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root))
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                if revision.get("name") and data.get("params"):
                    found[revision["name"]] = {
                        "params": data["params"]["params.yaml"]["data"],
                        "metrics": {path: m["data"] for path, m in (data.get("metrics") or {}).items()},
                    }
    return found


def test_repro_experiments_and_diffs(reproduced):
    project = reproduced  # every stage ran (the fixture checks), in another folder: here nothing is stale
    assert (project / "models" / "export" / "model.int8.onnx").is_file() and (project / "reports" / "report.html").is_file()
    # bytecode Python writes beside the modules a stage imports is not a change to the stages' code
    cache = project / "pipeline" / "models" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "bag.cpython-311.pyc").write_bytes(b"bytecode")
    assert ran(sh("dvc", "repro", cwd=project)) == []

    # each stage reads its own params section (and the report, which shows them all): a param makes
    # those stages stale and no other
    assert stale_after(project, "train", "lr", 0.002) == ["report", "train"]
    assert stale_after(project, "export", "latency_runs", 12) == ["export", "report"]
    assert stale_after(project, "tokenize", "min_freq", 2) == ["report", "tokenize"]
    assert stale_after(project, "baseline", "min_df", 3) == ["baseline", "report"]
    # a tokenize and a train param rerun tokenize and every stage after it, not download or the baseline;
    # exp show holds the experiment's params and metrics
    output = sh("dvc", "exp", "run", "-n", "lr-002", "-S", "train.lr=0.002", "-S", "tokenize.min_freq=2", cwd=project)
    assert ran(output) == ["evaluate", "export", "report", "tokenize", "train"]
    shown = experiments(project)["lr-002"]
    assert shown["params"]["train"]["lr"] == 0.002 and shown["params"]["tokenize"]["min_freq"] == 2
    metrics = shown["metrics"]
    assert set(metrics) == {f"reports/metrics/{stage}.json" for stage in ("evaluate", "export", "baseline")}
    assert set(metrics["reports/metrics/evaluate.json"]) == {"accuracy", "macro_f1", "ece"}  # the headline: few figures
    assert 0 <= metrics["reports/metrics/evaluate.json"]["accuracy"] <= 1
    assert set(metrics["reports/metrics/export.json"]) == {"int8_accuracy", "int8_mb"}  # no timings: they are not metrics
    assert 0 <= metrics["reports/metrics/baseline.json"]["baseline_accuracy"] <= 1  # the baseline beside the model
    diff = sh("dvc", "metrics", "diff", "HEAD", "--all", cwd=project)
    assert "reports/metrics/evaluate.json" in diff and "macro_f1" in diff
    assert "latency" not in diff and "seconds" not in diff  # quality only: timings live in reports/runtime
    shown = sh("dvc", "metrics", "show", cwd=project)
    assert "reports/metrics/baseline.json" in shown and "reports/metrics/evaluate.json" in shown  # the baseline beside the model
    assert max(map(len, shown.splitlines())) <= 120, shown  # a terminal's width
    details = sh("dvc", "metrics", "show", "reports/evaluate.json", cwd=project)  # everything evaluate measured, as the docs say
    assert "ece_uncalibrated" in details and "_f1" in details
    timings = sh("dvc", "metrics", "show", "reports/runtime/train.json", cwd=project)
    assert "samples_per_second" in timings

    # two commits: params diff and metrics diff show what changed between them
    commit_run(project, "lr 0.002, min_freq 2")
    params_diff = sh("dvc", "params", "diff", "HEAD~1", "HEAD", cwd=project)
    assert "train.lr" in params_diff and "0.002" in params_diff and "tokenize.min_freq" in params_diff
    metrics_diff = sh("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--all", cwd=project)
    assert "accuracy" in metrics_diff
    data_diff = sh("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--targets", "reports/tokenize.json", cwd=project)
    assert "vocab_size" in data_diff  # a plain output compares as well, named

    # plots diff writes HTML with the training curves and the confusion matrix of both commits
    sh("dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", "plots_out", cwd=project)
    page = (project / "plots_out" / "index.html").read_text()
    for title in ("Loss", "Validation accuracy and macro-F1", "Learning rate", "Confusion matrix (test)"):
        assert title in page, title
    assert '"actual"' in page and '"predicted"' in page and "HEAD~1" in page

    # editing one stage's code reruns that stage only: evaluate's outputs do not change, so nothing after it runs
    with (project / "pipeline" / "stages" / "evaluate.py").open("a") as handle:
        handle.write("\n# an edit\n")
    assert ran(sh("dvc", "repro", cwd=project)) == ["evaluate"]
    with (project / "pipeline" / "stages" / "report.py").open("a") as handle:
        handle.write("\n# an edit\n")
    assert ran(sh("dvc", "repro", cwd=project)) == ["report"]
    # a per-architecture default is the train stage's dependency: editing it makes train stale, not the stages before it
    recipe = project / "pipeline" / "training" / "recipe.py"
    edited = recipe.read_text().replace('"bag": replace(FROM_SCRATCH, lr=0.005)', '"bag": replace(FROM_SCRATCH, lr=0.004)')
    assert edited != recipe.read_text()
    recipe.write_text(edited)
    status = sh("dvc", "status", cwd=project)
    assert "train:" in status and "pipeline/training" in status, status
    assert "download:" not in status and "tokenize:" not in status, status
    # a download param: download reruns, and the stages that read its new splits are stale after it
    set_param(project, "download", "seed", 7)
    assert ran(sh("dvc", "repro", "download", cwd=project)) == ["download"]
    status = sh("dvc", "status", cwd=project)
    assert "tokenize:" in status and "baseline:" in status and "data/raw" in status, status


def test_queue_runs_every_queued_experiment(reproduced):
    project = reproduced
    # report params: each queued experiment reruns one stage, so the queue itself is what is timed
    for examples in (3, 4):
        assert "Queued experiment" in sh("dvc", "exp", "run", "--queue", "-n", f"examples-{examples}", "-S", f"report.examples={examples}", cwd=project)
    sh("dvc", "queue", "start", cwd=project)
    deadline = time.monotonic() + 540
    while time.monotonic() < deadline:
        status = sh("dvc", "queue", "status", cwd=project)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = experiments(project)
    for examples in (3, 4):
        assert shown[f"examples-{examples}"]["params"]["report"]["examples"] == examples
        assert "accuracy" in shown[f"examples-{examples}"]["metrics"]["reports/metrics/evaluate.json"]


def test_bad_params_in_exp_run_name_the_key(project):
    def failing(*args: str) -> str:
        result = subprocess.run(["dvc", "exp", "run", *args], cwd=project, capture_output=True, text=True, timeout=600, env=dvc_env())
        assert result.returncode != 0
        return result.stdout + result.stderr

    assert "'train.lrr'" in failing("-S", "train.lrr=0.1")  # DVC itself refuses a key params.yaml lacks
    assert "train.lrr: unknown key" in failing("-S", "+train.lrr=0.1")  # added anyway: our validation names it
    sh("git", "checkout", "params.yaml", cwd=project)  # a failed run leaves its params in the workspace
    assert "train.lr: Input should be a valid number (got 'fast')" in failing("-S", "train.lr=fast")

    # the recovery docs/experiments.md gives: DVC deletes a stage's outputs before running it; a failed run
    # leaves them deleted and its params in params.yaml, and `git restore` + `dvc checkout` undo both
    sh("git", "restore", "params.yaml", cwd=project)
    sh("dvc", "repro", "download", cwd=project)
    assert "does not exist" in failing("-S", "download.source=no/such/file.csv", "download")
    assert not (project / "data" / "raw").exists() and "no/such/file.csv" in (project / "params.yaml").read_text()
    sh("git", "restore", "params.yaml", cwd=project)
    sh("dvc", "checkout", "download", cwd=project)  # (the whole `dvc checkout` once every stage has run)
    assert (project / "data" / "raw" / "train.parquet").is_file()
    assert "changed" not in sh("dvc", "status", "download", cwd=project)


def test_exp_run_trains_in_two_processes(reproduced):
    """`dvc exp run -S train.devices=2`: the stage starts itself under torchrun (gloo on CPU)."""
    project = reproduced
    set_param(project, "train", "max_epochs", 2)
    set_param(project, "train", "threads", 1)
    commit_run(project, "two epochs")
    output = sh("dvc", "exp", "run", "-n", "ddp", "-S", "train.devices=2", "train", cwd=project)
    assert ran(output) == ["train"]
    assert output.count("train: best validation") == 1  # rank 0 alone reports
    runtime = json.loads((project / "reports" / "runtime" / "train.json").read_text())
    assert runtime["processes"] == 2
    rows = (project / "reports" / "train" / "plots" / "metrics" / "validation" / "accuracy.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2  # one row per epoch, written once
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["devices"] == 2
    report = json.loads((project / "reports" / "train.json").read_text())
    assert 0 <= report["best_validation"] <= 1 and report["epochs"] == 2  # validation accuracy
    assert "ddp" in sh("dvc", "exp", "show", "--csv", cwd=project)
    assert not (project / "models" / ".train-resume").exists()


def test_a_remote_shares_the_runs_and_ci_reruns_only_what_a_branch_changed(reproduced, tmp_path):
    """docs/experiments.md's remote and CI recipe: push to a folder remote; a teammate's clone
    pulls the same outputs; CI's clone runs a branch with `exp run --pull --allow-missing`,
    fetching only what the changed stages read, and writes the diff as Markdown."""
    project = reproduced
    storage = tmp_path / "storage"
    sh("dvc", "remote", "add", "-d", "storage", str(storage), cwd=project)
    commit_run(project, "first run, and a remote")
    main = sh("git", "rev-parse", "--abbrev-ref", "HEAD", cwd=project).strip()
    sh("dvc", "push", "--run-cache", cwd=project)

    teammate = tmp_path / "teammate"
    sh("git", "clone", "-q", str(project), str(teammate), cwd=tmp_path)
    sh("dvc", "pull", cwd=teammate)
    assert "up to date" in sh("dvc", "status", cwd=teammate)
    for output in ("reports/metrics/evaluate.json", "models/export/model.int8.onnx", "reports/report.html"):
        assert (teammate / output).read_bytes() == (project / output).read_bytes(), output

    # a branch changes one baseline param; CI's clone has no data until the run asks for it
    sh("git", "checkout", "-q", "-b", "baseline-c", cwd=teammate)
    set_param(teammate, "baseline", "C", 0.25)
    commit_run(teammate, "baseline C 0.25")
    sh("git", "push", "-q", "origin", "baseline-c", cwd=teammate)
    ci = tmp_path / "ci"
    sh("git", "clone", "-q", "--branch", "baseline-c", str(project), str(ci), cwd=tmp_path)
    assert ran(sh("dvc", "exp", "run", "--pull", "--allow-missing", cwd=ci)) == ["baseline", "report"]
    assert not (ci / "data" / "processed").exists() and not (ci / "models" / "train").exists()  # never pulled
    table = sh("dvc", "metrics", "diff", main, "--md", "--all", cwd=ci)
    assert table.startswith("| Path") and "| reports/metrics/baseline.json | baseline_accuracy |" in table, table
