"""Run a dvc command from a project command (stages.report, stages.seeds): this interpreter's dvc, the
project's venv whatever PATH says, with analytics off; a failure is one line naming the command."""

from __future__ import annotations

import os
import subprocess
import sys

from stages.core.errors import PipelineError


def dvc_output(*args: str) -> str:
    """Standard output of `dvc ARGS`; a PipelineError with dvc's last error line when it fails."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else result.returncode}")
    return result.stdout
