"""Shared helpers for end-to-end tests: tiny demo-data configs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, **overrides: Any) -> Path:
    """A demo config small enough for a few CPU steps per second."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "data": {
            "adapter": "demo",
            "params": {"size": 32, "train": 16, "val": 6, "test": 4},
            "split": {"labeled": 0.5, "seed": 0, "val": "val", "test": "test"},
            "batch_size": 4,
            "eval_batch_size": 4,
            "num_workers": 0,
        },
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "method": {"name": "supervised"},
        "train": {"max_steps": 4, "eval_every": 2, "log_every": 1, "seed": 0},
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
