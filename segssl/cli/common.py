"""Shared CLI plumbing: clear one-line errors instead of tracebacks for user mistakes."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from ..engine.interrupt import Terminated
from ..errors import SegsslError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network


def add_override_argument(parser: argparse.ArgumentParser,
                          help: str = "override a config value by dotted key, e.g. train.max_steps=500 (repeatable)") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, as every config-driven command takes it."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


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
