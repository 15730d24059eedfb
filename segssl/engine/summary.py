"""``summary.csv`` / ``summary.json`` of a batch inference job: one row per input file.

Rows hold the status (ok, failed, skipped), size, mean confidence and per-class pixel
fractions; failures carry the reason. The files are rewritten atomically every minute and at
the end, so a killed job still leaves a summary of what it finished, and a resumed job
(``--skip-existing``) carries the rows of files finished earlier over from the last summary.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

STATUSES = ("ok", "failed", "skipped")
COLUMNS = ("file", "output", "status", "kind", "height", "width", "depth", "channels", "mean_confidence", "error")


class Summary:
    def __init__(self, root: Path, class_names: list[str], info: dict[str, Any], every_s: float = 60.0) -> None:
        self.root, self.class_names, self.info, self.every_s = root, list(class_names), info, every_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.previous = self._previous_rows()
        self.last_write = time.monotonic()

    def _previous_rows(self) -> dict[str, dict[str, Any]]:
        path = self.root / "summary.json"
        try:
            rows = json.loads(path.read_text())["images"]
            return {row["file"]: row for row in rows if row.get("status") == "ok"}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def add(self, row: dict[str, Any]) -> None:
        self.rows[row["file"]] = {**{c: None for c in COLUMNS}, "fractions": None, **row}
        if time.monotonic() - self.last_write > self.every_s:
            self.write()

    def skipped(self, file: str, output: str) -> None:
        """A finished output: keep the row of the run that wrote it when there is one."""
        earlier = self.previous.get(file)
        self.add(earlier if earlier is not None else {"file": file, "output": output, "status": "skipped"})

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for r in self.rows.values() if r["status"] == s) for s in STATUSES}

    def failures(self) -> list[dict[str, str]]:
        return [{"file": r["file"], "error": r["error"]} for r in self.rows.values() if r["status"] == "failed"]

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        rows = sorted(self.rows.values(), key=lambda r: r["file"])  # reader threads finish out of order
        doc = {**self.info, "classes": self.class_names, "counts": self.counts(), "images": rows}
        _atomic_text(self.root / "summary.json", json.dumps(doc, indent=1))
        _atomic_text(self.root / "summary.csv", self._csv(rows))
        failures = self.failures()
        if failures:  # kept for scripts written against the first version of the tool
            _atomic_text(self.root / "failures.json", json.dumps(failures, indent=2))
        else:
            (self.root / "failures.json").unlink(missing_ok=True)
        self.last_write = time.monotonic()

    def _csv(self, rows: list[dict[str, Any]]) -> str:
        buffer = io.StringIO()
        fraction_columns = [f"fraction_{name}" for name in self.class_names]
        writer = csv.writer(buffer)
        writer.writerow([*COLUMNS, *fraction_columns])
        for row in rows:
            fractions: Optional[dict[str, float]] = row.get("fractions")
            values = [_cell(row.get(c)) for c in COLUMNS]
            values += [_cell(fractions.get(name)) if fractions else "" for name in self.class_names]
            writer.writerow(values)
        return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(text)
    os.replace(tmp, path)
