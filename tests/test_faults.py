"""The machine's faults, as a user meets them: a full disk (a small tmpfs), a read-only folder
(a tmpfs remounted read-only), no permission (another user), Ctrl-C. Every one gives one line
on stderr naming the path and the fix, exit code 1 (130 for Ctrl-C), and no half-written output.

The mounts are made in a private mount namespace (`unshare -rm`), so nothing outside the test
sees them; where the machine does not allow that, or the tests do not run as root (needed to
run a command as another user), those tests skip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL, TINY_TOKENIZE, assert_user_error, write_params
from test_train import processed  # noqa: F401 (a fixture)

LISTING = "::listing::"


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_mounts = pytest.mark.skipif(not _can_unshare(), reason="needs a private mount namespace (unshare -rm)")
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root, to run a command as another user")


def on_small_disk(mount: Path, args: list[str], cwd: Path, size: str = "16k", read_only: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`python -m pipeline *args` with a fresh tmpfs of `size` at `mount` (read-only if asked);
    returns the result and what the tmpfs holds afterwards."""
    mount.mkdir(parents=True, exist_ok=True)
    command = " ".join(subprocess.list2cmdline([arg]) for arg in [sys.executable, "-m", "pipeline", *args])
    remount = f"mount -o remount,ro {mount} && " if read_only else ""
    script = f"mount -t tmpfs -o size={size} none {mount} && {remount}{command}; code=$?; echo {LISTING}; find {mount} -mindepth 1 | sort; exit $code"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output, _, listing = result.stdout.partition(LISTING)
    left = [line.removeprefix(str(mount) + "/") for line in listing.split() if line]
    return subprocess.CompletedProcess(result.args, result.returncode, output, result.stderr), left


FULL = ["no space left on the disk of", "free some space and rerun"]


@needs_mounts
@pytest.mark.parametrize(
    ("command", "options", "size"),
    [
        ("download", ["--out", "{m}/raw", "--report", "{m}/data.json"], "8k"),
        ("tokenize", ["--raw", "{p}/data/raw", "--out", "{m}/processed", "--report", "{m}/t.json", "--runtime", "{m}/rt.json"], "16k"),
        ("train", ["--data", "{p}/data/processed", "--out", "{m}/train", "--report", "{m}/train.json", "--live", "{m}/live",
                   "--resume-dir", "{m}/resume", "--runtime", "{m}/rt.json"], "64k"),
        ("export", ["--checkpoint", "{p}/models/train/best.pt", "--data", "{p}/data/processed", "--raw", "{p}/data/raw",
                    "--out", "{m}/export", "--report", "{m}/e.json", "--runtime", "{m}/rt.json", "--metrics", "{m}/m.json"], "64k"),
        ("report", ["--reports", "{p}/reports", "--live", "{p}/reports/train", "--out", "{m}/report.html"], "16k"),
    ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing(project, tmp_path, command, options, size):
    mount = tmp_path / "mnt"
    args = [command, "--params", str(project / "params.yaml"), *(o.format(m=mount, p=project) for o in options)]
    result, left = on_small_disk(mount, args, cwd=project, size=size)
    assert_user_error(result, *FULL)
    assert str(mount) in result.stderr
    # nothing half-written: no output and no temporary file; train's curves (live/, rt/) are written as it goes and
    # may stay, as may its resume folder, which holds whole checkpoints only
    assert [entry for entry in left if not entry.startswith(("live", "rt", "resume"))] == [], left
    assert not [entry for entry in left if entry.endswith((".tmp", ".old")) or "/." in entry], left


@needs_mounts
def test_predict_out_on_a_full_disk(project, tmp_path):
    mount = tmp_path / "mnt"
    (tmp_path / "many.txt").write_text("a great film, truly wonderful\n" * 2000, encoding="utf-8")
    args = ["predict", "--bundle", str(project / "models" / "export"), "--file", str(tmp_path / "many.txt"), "--out", str(mount / "out.jsonl")]
    result, left = on_small_disk(mount, args, cwd=tmp_path, size="16k")
    assert_user_error(result, *FULL, "out.jsonl")
    assert left == []


@needs_mounts
def test_a_read_only_folder_is_named(project, tmp_path):
    mount = tmp_path / "mnt"
    args = ["download", "--params", str(project / "params.yaml"), "--out", str(mount / "raw"), "--report", str(mount / "data.json")]
    result, left = on_small_disk(mount, args, cwd=project, size="1m", read_only=True)
    assert_user_error(result, "read-only file system", str(mount))
    assert left == []


@needs_mounts
def test_outputs_are_replaced_together(project, tmp_path):
    """data/raw is not swapped in when the report beside it cannot be written: both, or neither."""
    raw = tmp_path / "raw"
    shutil.copytree(project / "data" / "raw", raw)
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    source = tmp_path / "other.csv"
    source.write_text("text,label\n" + "".join(f"another text {i},{'ab'[i % 2]}\n" for i in range(60)), encoding="utf-8")
    write_params(tmp_path, download={"source": str(source)})
    mount = tmp_path / "mnt"
    result, _ = on_small_disk(mount, ["download", "--out", str(raw), "--report", str(mount / "data.json")], cwd=tmp_path, size="1m", read_only=True)
    assert_user_error(result, "read-only file system")
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before  # the old splits, untouched, and no temporary folder beside
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@needs_root
def test_no_permission_is_named(project):
    """Run as `nobody` against a folder it may not write."""
    shared = Path(tempfile.mkdtemp(prefix="textclf-perm-"))
    try:
        os.chmod(shared, 0o755)  # readable by everyone, writable by root only
        shutil.copytree(project / "source", shared / "source")
        write_params(shared, download={"source": str(shared / "source")})
        for path in [shared, *shared.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "pipeline", "download"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(shared)}
        result = subprocess.run(command, cwd=shared, env=env, capture_output=True, text=True, timeout=300)
        assert_user_error(result, "permission denied", "data")
        assert not (shared / "data").exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_ctrl_c_in_train_is_one_line_and_resumable(processed, tmp_path):  # noqa: F811
    # no validation improves on the first (min_delta 1): the run stops after 1 + 40 of them, 120 steps
    write_params(tmp_path, tokenize=TINY_TOKENIZE, model={**TINY_MODEL, "arch": "bag"},
                 train={"threads": 1, "max_epochs": 400, "patience": 40, "min_delta": 1.0, "eval_every": 3})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &`, nohup) ignores SIGINT,
    # and an ignored signal stays ignored in every child, so the child gets the default disposition back
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--data", str(processed)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    validations = 0
    deadline = time.monotonic() + 120
    while validations < 3 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        validations += line.startswith("epoch ")
    assert validations == 3, process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted (Ctrl-C); the next run resumes from the last validation, if there was one"]
    assert (tmp_path / "models" / ".train-resume" / "last.pt").is_file() and not (tmp_path / "models" / "train").exists()
    # the state it left is whole: a run resumes from it
    resumed = subprocess.run([sys.executable, "-m", "pipeline", "train", "--data", str(processed)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert not (tmp_path / "models" / ".train-resume").exists()


def test_a_damaged_resume_state_is_replaced(processed, tmp_path, capsys):  # noqa: F811
    from pipeline.params import parse_params
    from pipeline.stages.train import run_train

    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "last.pt").write_bytes(b"not a checkpoint")
    params = parse_params({"tokenize": TINY_TOKENIZE, "model": {**TINY_MODEL, "arch": "bag"}, "train": {"threads": 1, "max_epochs": 2}})
    report = run_train(params, processed, tmp_path / "models", tmp_path / "train.json", tmp_path / "live", resume, progress=False)
    assert report["epochs"] == 2 and not resume.exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "last.pt is not a readable checkpoint" in warnings[0] and warnings[0].endswith("starting over")
    assert json.loads((tmp_path / "train.json").read_text())["steps"] == report["steps"]
