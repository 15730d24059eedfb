#!/usr/bin/env python
"""Predict masks for images: thin wrapper over ``segssl.cli.infer`` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segssl.cli.infer import entry  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(entry())
