"""Resume state of the training stages: a killed `dvc repro` continues from the last finished epoch.

At the end of every epoch a training stage saves, per fold, everything the next epoch depends on (model,
optimizer, scheduler, grad scaler, every random generator, early-stopping counters, the epochs' logged
metrics) in `.resume/<stage>-<key>/` (git-ignored). It is not a DVC output on purpose: DVC deletes a
stage's outputs before running it, and a `persist: true` output would switch off the stage's run-cache.
`key` hashes the stage's params, its input files and the project's code, so a state saved under other
params, data or code is never reused; the folder is removed once the stage has written its outputs.
Under torchrun rank 0 alone reads and writes the states, and sends them to the other ranks (fit()).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import random
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core.errors import PipelineError

RESUME_ROOT = Path(".resume")
CODE_ROOT = Path(__file__).resolve().parents[1]  # the stages/ package: its code is part of the key


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def resume_key(
    params: object, content_inputs: Sequence[Path] = (), listed_inputs: Sequence[Path] = ()
) -> str:
    """A short hash of the params (a dataclass), the content of `content_inputs` (files, or folders of
    small files: the prepared tables), the name, size and modification time of every file under
    `listed_inputs` (image folders: thousands of files, so not read) and the project's Python code."""
    digest = hashlib.sha256()
    fields = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for path in content_inputs:
        for file in _files(path):
            digest.update(str(file).encode())
            _hash_file(digest, file)
    for path in listed_inputs:
        for file in _files(path):
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for file in sorted(CODE_ROOT.rglob("*.py")):
        _hash_file(digest, file)
    return digest.hexdigest()[:16]


def _files(path: Path) -> Iterable[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def rng_state() -> dict[str, Any]:
    """The global random generators (Python, NumPy, torch CPU and CUDA), as plain types and tensors so
    that the state loads with torch.load(weights_only=True)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        **numpy_state["state"],
        "key": numpy_state["state"]["key"].numpy().astype(np.uint32),
    }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class ResumeStore:
    """One stage run's resume folder: fold_<k>.pt per fold, the latest finished epoch of that fold."""

    folder: Path

    @classmethod
    def open(cls, stage: str, key: str, root: Path = RESUME_ROOT, remove_stale: bool = True) -> ResumeStore:
        """The folder for (stage, key); states of the same stage under another key are stale (other
        params, data or code) and are removed (unless not `remove_stale`: the ranks other than 0 under
        torchrun, which never touch the files)."""
        folder = root / f"{stage}-{key}"
        for stale in sorted(root.glob(f"{stage}-*")) if root.is_dir() and remove_stale else []:
            if stale != folder and stale.is_dir():
                print(f"{stage}: removing resume state {stale} (saved under other params, data or code)")
                shutil.rmtree(stale, ignore_errors=True)
        return cls(folder)

    def path(self, fold: int) -> Path:
        return self.folder / f"fold_{fold}.pt"

    def load(self, fold: int) -> dict[str, Any] | None:
        """The fold's saved state, or None; an unreadable state (killed while the disk was full, say)
        is reported and ignored: the fold then trains from its first epoch."""
        path = self.path(fold)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
            print(
                f"warning: {path}: unreadable resume state ignored ({type(error).__name__})", file=sys.stderr
            )
            return None

    def save(self, fold: int, state: dict[str, Any]) -> None:
        """Write the state to a temporary file, then rename: a kill while saving keeps the previous one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(fold)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:  # torch's writer reports a full disk as a RuntimeError
            tmp.unlink(missing_ok=True)
            reason = error.strerror if isinstance(error, OSError) else str(error).splitlines()[0]
            raise PipelineError(f"{path}: cannot write the resume state ({reason})") from None

    def finish(self) -> None:
        """The stage has written its outputs: the state is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = self.folder.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
