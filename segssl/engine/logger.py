"""Run logging: ``metrics.jsonl`` (one JSON object per line, each with its ``step``),
TensorBoard events and the console. Only rank 0 writes."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("segssl")


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer: Optional[Any] = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        assert self.writer is not None
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _clean(value: Any) -> Any:
    """JSON has no NaN: absent classes are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def setup_console_logging(run_dir: Optional[Path], is_main: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    for handler in list(root.handlers):
        if getattr(handler, "_segssl", False):
            root.removeHandler(handler)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console._segssl = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if run_dir is not None and is_main:
        file_handler = logging.FileHandler(run_dir / "train.log")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler._segssl = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
