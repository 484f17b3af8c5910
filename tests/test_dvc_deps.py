"""dvc.yaml declares what each stage runs and reads: a missing dep is a stale cache.

Every project module a stage's module imports, directly or through other project modules, must be a dep
of that stage; so must every data or model path the module names (a `Path("data/...")` constant),
unless the stage writes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]


def module_file(name: str) -> Path | None:
    path = REPO / (name.replace(".", "/") + ".py")
    return path if path.is_file() else None


def project_imports(path: Path) -> set[Path]:
    """Project modules imported by the file at `path` (import x.y, from x.y import z, from x import y)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == "stages" and (file := module_file(name)) is not None:
                found.add(file)
    return found


def closure(path: Path) -> set[Path]:
    seen, todo = {path}, [path]
    while todo:
        for imported in project_imports(todo.pop()) - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def named_paths(path: Path) -> set[str]:
    """The data/ and models/ paths a module names in string constants."""
    return {
        node.value.rstrip("/")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(("data/", "models/"))
        and " " not in node.value
    }


def covered(path: str, declared: list[str]) -> bool:
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for entry in declared)


def stage_module(stage: dict) -> Path:
    command = stage["cmd"].split()
    assert command[:2] == ["python", "-m"], f"unexpected cmd {stage['cmd']!r}"
    path = module_file(command[2])
    assert path is not None, f"{command[2]} is not a module of this repository"
    return path


@pytest.mark.parametrize("name", list(STAGES))
def test_every_imported_project_file_is_a_dep(name: str) -> None:
    stage = STAGES[name]
    deps = {entry for entry in stage.get("deps", [])}
    needed = {str(path.relative_to(REPO)) for path in closure(stage_module(stage))}
    needed -= {"stages/__init__.py", "stages/core/__init__.py"}
    assert sorted(needed - deps) == [], f"stage {name}: imported but not a dep"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_declared_code_dep_is_imported(name: str) -> None:
    """The reverse: a stale code dep reruns a stage for nothing."""
    stage = STAGES[name]
    code = {entry for entry in stage.get("deps", []) if entry.startswith("stages/")}
    needed = {str(path.relative_to(REPO)) for path in closure(stage_module(stage))}
    assert sorted(code - needed) == [], f"stage {name}: a dep it does not import"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_named_data_path_is_a_dep_or_an_output(name: str) -> None:
    stage = STAGES[name]
    declared = [
        *stage.get("deps", []),
        *stage.get("outs", []),
        *(next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])),
    ]
    module = stage_module(stage)
    missing = sorted(path for path in named_paths(module) if not covered(path, declared))
    assert missing == [], f"stage {name}: reads or writes paths dvc.yaml does not declare"


def test_the_checker_sees_a_missing_dep() -> None:
    """The check is not vacuous: the segment stage imports its inference code through two modules."""
    segment = closure(stage_module(STAGES["segment"]))
    assert REPO / "stages/core/inference_ops.py" in segment  # via inference.py and images.py
    assert REPO / "stages/core/training.py" in segment
