"""Run the real DAG through `dvc repro` in a throwaway copy of the repository."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    "synthesize",
    "prepare",
    "classifier",
    "score_train",
    "threshold",
    "segment",
    "postprocess",
    "inspect",
    "bundle",
)

# A tiny synthetic dataset: small images, a few dozen of them.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "synthesize": {"n_train": 32, "n_test": 8, "height": 64, "width": 400, "workers": 1},
}


def repo_files() -> list[str]:
    """Tracked files plus new files not yet committed (but not ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return [name for name in listed if (REPO / name).is_file()]


def copy_repo(
    destination: Path, overrides: dict[str, dict[str, Any]] | None = None, tiny: bool = True
) -> Path:
    """Copy the repository's source (no data, models or venv) into `destination` as a new git repo,
    with the tiny dataset's params (unless tiny=False) and `overrides` applied."""
    for name in repo_files():
        if name.startswith(("data/", "models/")) or name == "dvc.lock":
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    if tiny:
        set_params(destination, TINY_PARAMS)
    set_params(destination, overrides or {})
    # A commit, as in a clone: dvclive needs a git revision to log against.
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=destination, check=True)
    return destination


def set_params(repo: Path, overrides: dict[str, dict[str, Any]]) -> None:
    params_file = repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def environment() -> dict[str, str]:
    """The test's own interpreter first on PATH, so dvc.yaml's `python` is the venv's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in `repo` (a leading 'dvc' runs the venv's dvc)."""
    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    result = subprocess.run(command, cwd=repo, env=environment(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@contextlib.contextmanager
def params_overridden(
    repo: Path, overrides: dict[str, dict[str, Any]], restore: Sequence[str] | None = None
) -> Iterator[None]:
    """Temporarily override params, restoring params.yaml byte for byte afterwards, even when the test
    fails. `restore`: the stages (() = the whole DAG) to `dvc repro` afterwards, so that the outputs
    match the params again for the tests that follow (DVC's run-cache brings them back: nothing retrains)."""
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    set_params(repo, overrides)
    try:
        yield
    finally:
        params_file.write_text(original)
        if restore is not None:
            run(repo, "dvc", "repro", *restore)
