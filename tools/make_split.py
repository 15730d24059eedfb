#!/usr/bin/env python
"""Write labeled/unlabeled/val split lists: thin wrapper over ``segssl.cli.make_split`` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segssl.cli.make_split import entry  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(entry())
