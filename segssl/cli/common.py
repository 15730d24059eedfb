"""Shared CLI plumbing: clear one-line errors instead of tracebacks for user mistakes."""
from __future__ import annotations

import os
import sys
from typing import Callable

from ..engine.interrupt import Terminated
from ..errors import SegsslError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except SegsslError as exc:
        print(f"error: {_first_cause(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130  # the shells' codes for SIGTERM / SIGINT


def _first_cause(exc: BaseException) -> str:
    """Errors raised in DataLoader workers arrive wrapped with the worker's traceback text."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
