"""Entry-point wrapper shared by the stage modules: user errors become one line and exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable

from stages.core.errors import PipelineError


def run(main: Callable[[], object]) -> None:
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
