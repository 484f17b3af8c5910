"""Atomic output helpers: a stage never leaves a half-written file or folder behind, and a stage that fails
leaves all its previous outputs as they were.

Each output is written to a temporary sibling (`.<name>.*.tmp`) and renamed over its target. Inside
`outputs_together()` (every stage's entry point, stages.core.cli.run) the renames wait until the whole stage
has succeeded: a stage that fails after writing one output and before another replaces neither. A full disk
(or a file size limit) while writing is a PipelineError naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.errors import PipelineError

# The errors of a write that ran out of room: no space, over the file size limit, over the quota.
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

# (temporary, target, is a directory) of the outputs written so far inside outputs_together(), else None.
_pending: list[tuple[Path, Path, bool]] | None = None
# Temporary outputs being written -> their targets, to name a file inside a temporary folder by its target.
_writing: dict[Path, Path] = {}


def target_name(path: Path) -> Path:
    """`path` with a temporary output folder among its parents replaced by that output's target."""
    for tmp, target in _writing.items():
        if path == tmp or tmp in path.parents:
            return target / path.relative_to(tmp)
    return path


def write_error(path: Path, error: BaseException) -> PipelineError | None:
    """The PipelineError for an exception raised while writing `path`, if it is a full disk or size limit."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return PipelineError(
            f"{target_name(path)}: cannot write ({error.strerror or os.strerror(error.errno)})"
        )
    return None


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _replace(tmp: Path, path: Path, directory: bool) -> None:
    if directory and path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def outputs_together() -> Iterator[None]:
    """Defer the renames of the outputs atomic_path writes inside the block to its successful end; on any
    error every temporary output is removed and no target is touched. Nested blocks join the outer one."""
    global _pending
    if _pending is not None:
        yield
        return
    _pending = []
    try:
        yield
        # In the order written: a file written inside a temporary folder is renamed before its folder.
        for tmp, path, directory in _pending:
            _replace(tmp, path, directory)
    except BaseException:
        for tmp, _, _ in reversed(_pending):
            _remove(tmp)
        raise
    finally:
        _pending = None


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` (at the end of the enclosing
    outputs_together() block, if any), on error it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as error:
        raise write_error(path, error) or error from None
    # mkdtemp/mkstemp create private (0700/0600) entries; outputs get the usual umask-based modes.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if directory else 0o666) & ~umask)
    _writing[tmp] = path
    try:
        yield tmp
        if _pending is not None:
            _pending.append((tmp, path, directory))
        else:
            _replace(tmp, path, directory)
    except BaseException as error:
        _remove(tmp)
        converted = write_error(path, error)
        if converted is not None:
            raise converted from None
        raise
    finally:
        del _writing[tmp]


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _finite(data: object) -> object:
    """NaN and infinities become null: JSON has no such numbers and DVC cannot parse them."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_json(data: object, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path, missing: str) -> Any:
    """A JSON file's content; a missing or unparsable file is a PipelineError naming it (`missing` says
    how to make it)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; {missing}") from None
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: not readable JSON ({' '.join(str(error).split())})") from None
