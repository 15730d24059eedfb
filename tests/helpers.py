"""Shared helpers for end-to-end tests: tiny demo-data configs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def terminate_after_first_step(tool: str, args: list[str], run_dir: Path, timeout: float = 180) -> tuple[int, str]:
    """Start ``tools/<tool>`` with ``args``, send it SIGTERM once ``run_dir`` logged a training
    step, and return (exit status, stderr)."""
    from segssl.engine.logger import read_metrics

    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / tool), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and read_metrics(metrics)) and proc.poll() is None:
        if time.time() >= deadline:  # a safety net against a hang, not a timing assertion
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"{tool} never logged a training step in {run_dir} within {timeout:.0f} s:\n{err[-2000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err
