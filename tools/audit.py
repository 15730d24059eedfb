#!/usr/bin/env python
"""Label audit: thin wrapper over ``segssl.cli.audit`` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segssl.cli.audit import entry  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(entry())
