"""segssl-benchmark: label-efficiency suites, resumable across sessions and machines.

  python tools/benchmark.py --suite benchmarks/suites/camvid_cpu.yaml [--only METHOD ...] [--labels 1/8 all] [--report-only]

Each row (method x labeled subset x seed) is one ``tools/train.py`` run in its own work
directory. A finished row leaves ``benchmarks/results/<suite>/runs/<row>.json`` (small, meant
to be committed) and is skipped next time; an interrupted row resumes from its last
checkpoint. Every row selects its checkpoint the same way (best validation ``miou``) and is
tested once with it; the report gives test mIoU and the share of the lower/upper gap closed.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..config import from_dict, read_yaml
from ..errors import ConfigError
from .common import run_cli

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Suite:
    name: str
    configs: dict[str, str]  # method -> config file (the method's own defaults live there)
    labeled: dict[str, Union[int, float]]  # row label (e.g. "1/8") -> data.split.labeled
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # --set applied to every row
    upper_method: str = "supervised"  # trained on all labels: the upper bound
    work_root: str = "runs/benchmarks"  # checkpoints (not committed)


@dataclass
class Row:
    method: str
    label: str  # labeled-subset label or "all"
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}__{self.label.replace('/', 'of')}__s{self.seed}"


def load_suite(path: Path) -> Suite:
    suite = from_dict(Suite, read_yaml(path))
    for method, config in suite.configs.items():
        if not (REPO / config).is_file():
            raise ConfigError(f"suite {path}: config of '{method}' not found: {config}")
    if suite.upper_method not in suite.configs:
        raise ConfigError(f"suite {path}: upper_method '{suite.upper_method}' has no config")
    return suite


def rows(suite: Suite, only: Optional[list[str]] = None, labels: Optional[list[str]] = None) -> list[Row]:
    """All rows in run order; ``only``/``labels`` keep the given methods / labeled subsets, in the order given."""
    out = [Row(suite.upper_method, "all", s) for s in suite.seeds]
    out += [Row(m, label, s) for label in suite.labeled for m in suite.configs for s in suite.seeds]
    for wanted in (labels or []):
        if wanted != "all" and wanted not in suite.labeled:
            raise ConfigError(f"--labels {wanted}: the suite has {', '.join(['all', *suite.labeled])}")
    for wanted in (only or []):
        if wanted not in suite.configs:
            raise ConfigError(f"--only {wanted}: the suite has {', '.join(suite.configs)}")
    out = [r for r in out if (not only or r.method in only) and (not labels or r.label in labels)]
    if only:  # the caller's order decides which row runs first (the most informative one)
        out.sort(key=lambda r: only.index(r.method))
    return out


def commit_id() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def run_row(suite: Suite, row: Row, results: Path, work_root: Path) -> dict[str, Any]:
    work = work_root / suite.name / row.key
    labeled = "null" if row.label == "all" else str(suite.labeled[row.label])
    command = [sys.executable, "tools/train.py", "--config", suite.configs[row.method], "--work-dir", str(work),
               "--set", f"data.split.labeled={labeled}", "--set", f"train.seed={row.seed}",
               *[a for o in suite.overrides for a in ("--set", o)]]
    if (work / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    started = time.time()
    proc = subprocess.run(command, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"row {row.key} failed (exit {proc.returncode}): {' '.join(command)}")
    summary = json.loads((work / "summary.json").read_text())
    val = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if '"split": "val"' in line]
    result = {
        "row": row.__dict__, "command": " ".join(command[1:]), "commit": commit_id(),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} torch-threads",
        "best_val_miou": summary["best"]["value"], "best_step": summary["best"]["step"],
        "last_val_miou": val[-1]["miou"] if val else None,
        "test": {k: summary.get("test", {}).get(k) for k in ("miou", "mdice", "pixel_acc", "iou")},
        "seconds_this_session": round(time.time() - started, 1), "train_seconds": summary["seconds"],
        "steps": summary["steps"],
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{row.key}.json").write_text(json.dumps(result, indent=2))
    return result


def report(suite: Suite, results: Path) -> str:
    """Markdown table: mean (spread) over seeds of test mIoU and share of gap closed."""
    found = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    by = {}
    for r in found:
        by.setdefault((r["row"]["method"], r["row"]["label"]), []).append(r)

    def mean_test(method: str, label: str) -> Optional[float]:
        values = [r["test"]["miou"] for r in by.get((method, label), []) if r["test"]["miou"] is not None]
        return statistics.mean(values) if values else None

    upper = mean_test(suite.upper_method, "all")
    lines = [f"# {suite.name}", "", "| method | labeled | seeds | best val mIoU (step) | test mIoU (mean ± sd) | gap closed | train s |",
             "|---|---|---|---|---|---|---|"]
    for (method, label), runs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        tests = [r["test"]["miou"] for r in runs if r["test"]["miou"] is not None]
        sd = f" ± {statistics.stdev(tests):.3f}" if len(tests) > 1 else ""
        lower = mean_test(suite.upper_method, label)
        gap = "-"
        if tests and upper is not None and lower is not None and label != "all" and upper > lower:
            gap = f"{(statistics.mean(tests) - lower) / (upper - lower):.0%}"
        vals = ", ".join(f"{r['best_val_miou']:.3f} ({r['best_step']})" for r in runs)
        lines.append(f"| {method} | {label} | {len(runs)} | {vals} | {statistics.mean(tests):.3f}{sd} | {gap} | "
                     f"{sum(r['train_seconds'] for r in runs) / len(runs):.0f} |" if tests else f"| {method} | {label} | {len(runs)} | {vals} | - | - | - |")
    lines += ["", f"commit {commit_id()}; lower bound = `{suite.upper_method}` on the same labeled subset; "
              "every number from the best-validation checkpoint; test evaluated once."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segssl-benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="suite YAML")
    parser.add_argument("--only", nargs="*", help="run only these methods, in this order")
    parser.add_argument("--labels", nargs="*", help="run only these labeled subsets (e.g. 1/8 all)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table from stored results")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="results folder (committed)")
    parser.add_argument("--work-root", help="run directories with checkpoints (default: the suite's work_root)")
    args = parser.parse_args(argv)
    suite = load_suite(Path(args.suite))
    results = Path(args.results) / suite.name
    work_root = Path(args.work_root) if args.work_root else REPO / suite.work_root
    if not args.report_only:
        for row in rows(suite, args.only, args.labels):
            if (results / "runs" / f"{row.key}.json").exists():
                print(f"skip {row.key}: done")
                continue
            print(f"run {row.key}")
            run_row(suite, row, results / "runs", work_root)
    table = report(suite, results / "runs")
    (results / "results.md").write_text(table + "\n")
    print(table)
    return 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
