"""The command line: help, version, and default paths that match dvc.yaml."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from conftest import REPO, run_cli
from typer.testing import CliRunner

from pipeline import __version__
from pipeline.cli import app

runner = CliRunner()


def test_help_lists_the_stage_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("download", "tokenize", "train", "evaluate", "export", "report", "predict"):
        assert command in result.output


def test_version(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"pipeline {__version__}"


def test_dvc_yaml_passes_the_same_paths_as_the_defaults():
    """Paths are stated once in dvc.yaml; running a command with no arguments uses the same ones."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[:4] == ["python", "-m", "pipeline", name]
        command = next(c for c in app.registered_commands if c.callback.__name__ == name)
        import inspect

        defaults = {p.name: p.default for p in inspect.signature(command.callback).parameters.values()}
        given = dict(zip(argv[4::2], argv[5::2]))
        for flag, value in given.items():
            assert str(defaults[flag.removeprefix("--")]) == value, (name, flag)
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])]
        deps = [Path(d) for d in stage["deps"]]
        inputs = [v for v in given.values() if v not in outs]
        assert set(outs) <= set(given.values()), name  # every output is passed explicitly
        for path in map(Path, inputs):  # every other path passed is a dependency, inside one, or holds some
            assert any(path == d or d in path.parents or path in d.parents for d in deps), (name, path)
        # stage name = params section (report shows every param, so it tracks the whole file)
        assert name in stage["params"] or (name == "report" and stage["params"] == [{"params.yaml": None}]), name
