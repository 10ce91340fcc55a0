"""The package's layout kept true: dvc.yaml's dependencies derived from what each stage really
loads, the import layers, torch-free inference, short functions in training/ and stages/.

The dependency check: each stage's module is imported in a fresh interpreter and the pipeline
modules it loads are listed (with the pipeline imports inside functions, found in the source,
so that a lazy import cannot hide); each must be covered by a dep of that stage in dvc.yaml.
The data a stage's command reads (its options that are not outputs) and the files the report
page is made of must be deps too. So deleting any dep line fails a test, naming the stage.
"""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

PACKAGE = REPO / "pipeline"
# Loaded by every stage but unable to change an output: the one error type and its message
# helpers, and the default paths (dvc.yaml passes every path explicitly). Package __init__.py
# files that hold only a docstring are exempt too. Everything else a stage loads is a dep.
PLUMBING = {"pipeline/errors.py", "pipeline/paths.py"}
STAGES = ("download", "tokenize", "train", "evaluate", "export", "baseline", "report")
PARAMS_OPTION = "--params"
REPORTS_OPTION = "--reports"  # the report's folder of inputs: the files it reads are checked one by one (INPUTS)


def relative(path: Path) -> str:
    return path.resolve().relative_to(REPO).as_posix()


def module_file(name: str) -> Path | None:
    """The source file of pipeline module `name` (a package's __init__.py), or None."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def pipeline_imports(path: Path) -> set[str]:
    """Every pipeline module `path` imports, at the top or inside a function (not under
    TYPE_CHECKING), with the parent packages each import loads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(child) for node in ast.walk(tree) if _type_checking_block(node) for child in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline" and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}"))
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in with_parents if module_file(name)}


def static_closure(module: str) -> set[str]:
    seen, todo = set(), [module, *(".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1))]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(pipeline_imports(module_file(name)))
    return seen


def loaded_at_import(module: str) -> set[str]:
    """The pipeline modules a fresh interpreter has loaded after importing `module`."""
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m == 'pipeline' or m.startswith('pipeline.'))))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


@pytest.fixture(scope="module")
def stage_modules() -> dict[str, set[str]]:
    """Per stage: the files of the pipeline modules it loads (at import, and lazily)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # each in a fresh interpreter of its own
        loaded = dict(zip(STAGES, pool.map(loaded_at_import, [f"pipeline.stages.{stage}" for stage in STAGES])))
    found = {}
    for stage in STAGES:
        names = loaded[stage] | static_closure(f"pipeline.stages.{stage}")
        files = {module_file(name) for name in names}
        found[stage] = {relative(path) for path in files if relative(path) not in PLUMBING and not docstring_only(path)}
    return found


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def command_inputs(stage: dict) -> list[str]:
    """The paths a stage's command is given that are not its outputs: what it reads."""
    words = shlex.split(stage["cmd"])
    outputs = [entry if isinstance(entry, str) else next(iter(entry)) for key in ("outs", "metrics", "plots") for entry in stage.get(key, [])]
    values = [value for option, value in zip(words, words[1:]) if option.startswith("--") and option not in (PARAMS_OPTION, REPORTS_OPTION) and not value.startswith("--")]
    return [value for value in values if not covered(value, outputs)]


def dependency_problems(stages: dict, modules: dict[str, set[str]]) -> list[str]:
    """What each stage of dvc.yaml (`stages`) reads but does not depend on, one line each."""
    from pipeline.stages.report import INPUTS, TEMPLATE

    problems = []
    for name in STAGES:
        stage = stages[name]
        deps = [str(dep) for dep in stage.get("deps", [])]
        needed = {path: "it loads this module" for path in sorted(modules[name])}
        needed.update({path: "its command reads it" for path in command_inputs(stage)})
        if name == "report":
            words = shlex.split(stage["cmd"])
            reports = words[words.index(REPORTS_OPTION) + 1]
            needed.update({f"{reports}/{file}": "the page is made of it (stages/report.py INPUTS)" for file in INPUTS})
            needed[f"pipeline/templates/{TEMPLATE}"] = "the page is rendered from it"
        for path, why in needed.items():
            if not covered(path, deps):
                problems.append(f"dvc.yaml: stage {name!r} does not depend on {path} ({why}); add `- {path}` to its deps")
    return problems


def test_every_stage_depends_on_what_it_reads(stage_modules):
    assert dependency_problems(dvc_stages(), stage_modules) == []


def test_deleting_any_dep_line_is_caught(stage_modules):
    stages = dvc_stages()
    for name in STAGES:
        for index, dep in enumerate(stages[name]["deps"]):
            trimmed = json.loads(json.dumps(stages))
            del trimmed[name]["deps"][index]
            problems = dependency_problems(trimmed, stage_modules)
            assert problems, f"deleting {dep!r} from stage {name!r} went unnoticed: that dep line is not needed"
            named = [problem.split(" does not depend on ")[1].split(" (")[0] for problem in problems]
            assert all(f"stage {name!r}" in problem for problem in problems) and any(covered(path, [dep]) for path in named), problems


def test_a_lazy_import_is_seen(tmp_path):
    """An import inside a function counts as much as one at the top."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from pipeline.text.tfidf import tfidf_features\n\nif TYPE_CHECKING:\n    import pipeline.metrics\n")
    assert pipeline_imports(source) == {"pipeline", "pipeline.text", "pipeline.text.tfidf"}


# --- layers: what may import what ----------------------------------------------------------
BOTTOM = {"pipeline", "pipeline.params", "pipeline.errors", "pipeline.files", "pipeline.paths", "pipeline.system", "pipeline.metrics"}
# package -> the packages its modules may import (besides itself and the bottom layer)
ALLOWED = {
    "stages": {"training", "inference", "data", "text", "models"},
    "training": {"models", "data", "text"},
    "inference": {"data", "text"},  # never training or models: inference runs without torch
    "models": {"data", "text"},
    "data": {"text"},
    "text": set(),
}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_imports_follow_the_layers():
    """stages -> training / inference -> models -> data -> text -> params and the plumbing."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        own = package_of(name)
        if name == "pipeline.cli" or name == "pipeline.__main__":
            continue
        for imported in pipeline_imports(path):
            target = package_of(imported)
            if imported in BOTTOM or target == own or (target is None and own is not None):
                continue
            if target is None or own is None or target not in ALLOWED[own]:
                problems.append(f"{relative(path)} imports {imported}")
    assert problems == []


def test_inference_imports_without_torch_transformers_or_pandas():
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (PACKAGE / "inference").glob("*.py"))
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'pandas'): sys.modules[name] = None\n"
        + "".join(f"import {m.removesuffix('.__init__')}\n" for m in modules)
        + "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
    assert len(modules) >= 5  # __init__, bundle, classifier, predict, serve


# --- short functions -------------------------------------------------------------------------
MAX_FUNCTION_LINES = 80


def test_functions_in_training_and_stages_are_short():
    long = []
    for folder in ("training", "stages"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{relative(path)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
