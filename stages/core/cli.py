"""Entry-point wrapper shared by the stage modules: user errors become one line and exit code 1, and a
stage replaces all its outputs or none of them."""

from __future__ import annotations

import sys
from collections.abc import Callable

from stages.core.errors import PipelineError
from stages.core.io import outputs_together


def run(main: Callable[[], object]) -> None:
    try:
        with outputs_together():
            main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
