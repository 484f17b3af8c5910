"""Entry-point wrapper shared by the stage modules: user errors become one line and exit code 1, and a
stage replaces all its outputs or none of them."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from stages.core.errors import PipelineError
from stages.core.io import outputs_together

# Set by the launcher of a stage's processes (stages.core.distributed.launch): a folder where each rank
# records its error, for the launcher to show once instead of once per rank.
RANK_ERRORS_ENV = "STAGES_RANK_ERRORS"


def run(main: Callable[[], object]) -> None:
    try:
        with outputs_together():
            main()
    except PipelineError as error:
        report("error", f"error: {error}")
        sys.exit(1)
    except KeyboardInterrupt:
        if RANK_ERRORS_ENV not in os.environ:
            raise
        sys.exit(130)  # the launcher was interrupted, passed it on to every rank, and says so once
    except Exception:
        if RANK_ERRORS_ENV not in os.environ:
            raise
        # Under the launcher a rank's crash is usually the others' lost connection to the rank that failed:
        # the launcher shows the first crash's traceback, or the error line that caused it.
        report("crash", traceback.format_exc())
        sys.exit(1)


def report(kind: str, text: str) -> None:
    """Print a stage's error, or under the launcher record it in the rank's file."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        print(text, file=sys.stderr)
        return
    rank = os.environ.get("RANK", "0")
    record = {"rank": int(rank) if rank.isdigit() else rank, "time": time.time(), "kind": kind, "text": text}
    try:
        (Path(folder) / f"rank_{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    except OSError:
        print(text, file=sys.stderr)
