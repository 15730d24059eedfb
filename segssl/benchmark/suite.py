"""A suite = methods x labeled subsets x seeds, each row one ``tools/train.py`` run.

Rows are resumable at two levels: a finished row leaves a small JSON (committed) and is skipped
next time; an interrupted row resumes its training from the run's last checkpoint. Stopping the
runner stops its training processes the same way (they save ``last.pt``), and a row whose training
was interrupted stops the sweep instead of counting as failed.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..config import read_yaml
from ..data.io import read_id_list
from ..engine.logger import read_metrics
from ..engine.interrupt import Terminated
from ..errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SUITE_KEYS = {"name", "description", "configs", "labeled", "seeds", "overrides", "upper_method", "work_root"}


@dataclass
class MethodEntry:
    config: str  # a tools/train.py config (the method's defaults live there)
    overrides: list[str] = field(default_factory=list)  # e.g. method.name=fixmatch on a dataset's base config


@dataclass
class Suite:
    name: str
    configs: dict[str, MethodEntry]
    # row label (e.g. "1/8") -> data.split.labeled: a count, a fraction or an id-list file (repository-relative)
    labeled: dict[str, Union[int, float, str]]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # --set applied to every row
    upper_method: str = "supervised"  # trained on all labels: the upper bound
    work_root: str = "runs/benchmarks"  # checkpoints (not committed)
    description: str = ""


@dataclass(frozen=True)
class Row:
    method: str
    label: str  # labeled-subset label or "all"
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}__{self.label.replace('/', 'of')}__s{self.seed}"


def _entry(path: Path, method: str, raw: Any) -> MethodEntry:
    if isinstance(raw, str):
        entry = MethodEntry(raw)
    elif isinstance(raw, dict) and set(raw) <= {"config", "set"} and "config" in raw:
        entry = MethodEntry(str(raw["config"]), [str(o) for o in raw.get("set") or []])
    else:
        raise ConfigError(f"suite {path}: configs.{method} must be a config path or {{config: PATH, set: [key=value, ...]}}")
    if not (REPO / entry.config).is_file():
        raise ConfigError(f"suite {path}: config of '{method}' not found: {entry.config}")
    return entry


def load_suite(path: Path) -> Suite:
    raw = read_yaml(path)
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(SUITE_KEYS))}")
    for key in ("name", "configs", "labeled"):
        if key not in raw:
            raise ConfigError(f"suite {path}: missing key '{key}'")
    suite = Suite(
        name=str(raw["name"]), configs={m: _entry(path, m, c) for m, c in dict(raw["configs"]).items()},
        labeled=dict(raw["labeled"]), seeds=[int(s) for s in raw.get("seeds", [0])],
        overrides=[str(o) for o in raw.get("overrides") or []], upper_method=str(raw.get("upper_method", "supervised")),
        work_root=str(raw.get("work_root", "runs/benchmarks")), description=str(raw.get("description", "")).strip(),
    )
    for label, value in suite.labeled.items():
        if isinstance(value, str) and not (REPO / value).is_file():
            raise ConfigError(f"suite {path}: labeled.{label}: list file not found: {value} (paths are relative to the repository)")
    if suite.upper_method not in suite.configs:
        raise ConfigError(f"suite {path}: upper_method '{suite.upper_method}' has no config")
    return suite


def rows(suite: Suite, only: Optional[list[str]] = None, labels: Optional[list[str]] = None,
         seeds: Optional[list[int]] = None) -> list[Row]:
    """All rows in run order; ``only``/``labels`` keep the given methods / labeled subsets, in the order given.

    ``seeds`` replaces the suite's own list for this call: an extra seed for one key comparison
    (``--only fixmatch --seeds 2``) without adding it to every row the report lists as not run yet.
    """
    seed_list = suite.seeds if seeds is None else seeds
    out = [Row(suite.upper_method, "all", s) for s in seed_list]
    out += [Row(m, label, s) for label in suite.labeled for m in suite.configs for s in seed_list]
    for wanted in labels or []:
        if wanted != "all" and wanted not in suite.labeled:
            raise ConfigError(f"--labels {wanted}: the suite has {', '.join(['all', *suite.labeled])}")
    for wanted in only or []:
        if wanted not in suite.configs:
            raise ConfigError(f"--only {wanted}: the suite has {', '.join(suite.configs)}")
    out = [r for r in out if (not only or r.method in only) and (not labels or r.label in labels)]
    if only:  # the caller's order decides which row runs first (the most informative one)
        out.sort(key=lambda r: only.index(r.method))
    return out


def subset_sizes(suite: Suite) -> dict[str, float]:
    """The label-efficiency curve's x value of every labeled subset, smallest first: its image count,
    the number of ids in its list file (e.g. a reference script's own draw), or its fraction."""
    sizes = {label: float(len(read_id_list(REPO / value))) if isinstance(value, str) else float(value)
             for label, value in suite.labeled.items()}
    return dict(sorted(sizes.items(), key=lambda kv: kv[1]))


def commit_id() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return out or "unknown"
    except OSError:
        return "unknown"


def machine(threads: Optional[int] = None) -> str:
    """``threads``: the torch threads of the process that trained, when not this one."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = threads if threads is not None else torch.get_num_threads()
    return f"{platform.machine()}, {threads} torch threads, {gpu}, torch {torch.__version__}"


def threads_per_row(jobs: int) -> Optional[int]:
    """CPU threads for each of ``jobs`` rows trained at once: the cores split between them, unless
    the caller chose (``OMP_NUM_THREADS``). Each PyTorch process otherwise starts one thread per core,
    and OpenMP threads of oversubscribed processes wait on each other (a 2-thread FixMatch step was
    seen to slow from 1.9 s to 23.5 s beside other work on a 2-core machine). Split, a CamVid
    supervised row ran 1.05 steps/s on one thread beside a FixMatch row, against 1.6-1.7 alone
    on both threads."""
    if jobs < 2 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it: rows run from the repository root, so the
    stored command can be pasted on another checkout."""
    try:
        return str(path.resolve().relative_to(REPO.resolve()))
    except ValueError:
        return str(path)


def row_overrides(suite: Suite, row: Row, extra: list[str]) -> list[str]:
    """The ``--set`` values of a row, in the order they apply: the method's, the row's, the suite's."""
    entry = suite.configs[row.method]
    labeled = "null" if row.label == "all" else str(suite.labeled[row.label])
    return [*entry.overrides, f"data.split.labeled={labeled}", f"train.seed={row.seed}", *suite.overrides, *extra]


def row_command(suite: Suite, row: Row, work: Path, extra: list[str]) -> list[str]:
    command = [sys.executable, "tools/train.py", "--config", suite.configs[row.method].config, "--work-dir", repo_relative(work)]
    command += [a for o in row_overrides(suite, row, extra) for a in ("--set", o)]
    if (work / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    return command


def _diagnostics(metrics: list[dict[str, Any]], steps: int) -> dict[str, Optional[float]]:
    """Unlabeled-stream diagnostics averaged over the last fifth of training (None if not logged)."""
    late = [m for m in metrics if m.get("split") == "train" and m["step"] > 0.8 * steps]
    out: dict[str, Optional[float]] = {}
    for key in ("mask_ratio", "pl_acc", "mean_conf"):
        values = [m[key] for m in late if m.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def still_rising(curve: list[tuple[int, float]], steps: int, tolerance: float = 0.005) -> Optional[bool]:
    """Did val mIoU rise over the last fifth of training (best there > best before + tolerance)?"""
    before = [v for s, v in curve if s <= 0.8 * steps]
    late = [v for s, v in curve if s > 0.8 * steps]
    if not before or not late:
        return None
    return max(late) > max(before) + tolerance


def val_curve(metrics: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, val mIoU) of every evaluation in a run's metrics.jsonl records."""
    return [(m["step"], m["miou"]) for m in metrics if m.get("split") == "val" and "miou" in m]


def record_segment(work: Path, commit: str, machine_text: str) -> list[dict[str, Any]]:
    """Append this training segment (commit, machine, start) to ``work/segments.jsonl`` and return
    every segment of the run so far. A run without ``last.pt`` starts from step 0, so its earlier
    segments trained nothing that survives and are dropped."""
    path = work / "segments.jsonl"
    if not (work / "checkpoints" / "last.pt").exists():
        path.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    segment = {"commit": commit, "machine": machine_text, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with path.open("a") as f:
        f.write(json.dumps(segment) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect_result(suite: Suite, row: Row, work: Path, command: list[str], seconds: float,
                   commit: Optional[str] = None, threads: Optional[int] = None,
                   segments: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """``segments``: the run's training segments (``record_segment``); a row resumed at other
    commits names all of them, in order, joined by ``+``."""
    summary = json.loads((work / "summary.json").read_text())
    metrics = read_metrics(work / "metrics.jsonl")
    curve = val_curve(metrics)
    test = summary.get("test", {})
    commit = commit or commit_id()
    commits = list(dict.fromkeys([*(s["commit"] for s in segments or []), commit]))
    extra = {"segments": segments} if segments and len(segments) > 1 else {}
    return {
        "suite": suite.name, "row": {"method": row.method, "label": row.label, "seed": row.seed},
        "command": " ".join(["python", *command[1:]]), "commit": "+".join(commits), "machine": machine(threads), **extra,
        "checkpoint": f"best val {summary['best']['metric']} (step {summary['best']['step']})",
        "best_val_miou": summary["best"]["value"], "best_step": summary["best"]["step"],
        "last_val_miou": curve[-1][1] if curve else None, "val_curve": curve,
        "val_still_rising": still_rising(curve, summary["steps"]),
        "test": {k: test.get(k) for k in ("miou", "mdice", "pixel_acc", "iou", "dice")},
        "diagnostics": _diagnostics(metrics, summary["steps"]),
        "seconds_this_session": round(seconds, 1), "train_seconds": summary["seconds"], "steps": summary["steps"],
    }


class RowInterrupted(KeyboardInterrupt):
    """A row's training was stopped by a signal (it saved ``last.pt``): the sweep stops too."""


INTERRUPTED_CODES = {130, 143, -signal.SIGINT, -signal.SIGTERM}  # train.py's codes, or killed by the signal
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def stop_rows(interrupt: KeyboardInterrupt, grace: float = 30.0) -> None:
    """Stop the training processes still running so each saves ``last.pt``. A terminal's Ctrl-C
    already reached them (same process group): give them ``grace`` seconds to save before SIGTERM,
    which would end a save midway. A SIGTERM sent to the runner alone is forwarded at once."""
    with _live_lock:
        procs = list(_live)
    deadline = time.time() + (0.0 if isinstance(interrupt, Terminated) else grace)
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait()


def _train(command: list[str], log_file: Optional[Path], threads: Optional[int]) -> int:
    # parallel rows: one log per row instead of interleaved progress bars
    with log_file.open("a") if log_file is not None else nullcontext() as log:
        out: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads is not None else None
        proc = subprocess.Popen(command, cwd=REPO, env=env, **out)
        with _live_lock:
            _live.add(proc)
        try:
            return proc.wait()
        finally:
            if proc.poll() is not None:
                with _live_lock:
                    _live.discard(proc)


def run_row(suite: Suite, row: Row, results: Path, work_root: Path, extra: Optional[list[str]] = None,
            log_file: Optional[Path] = None, threads: Optional[int] = None) -> dict[str, Any]:
    """Train one row (resuming if it was interrupted) and store its result JSON; ``threads``
    sets the training process's ``OMP_NUM_THREADS``."""
    work = work_root / suite.name / row.key
    command = row_command(suite, row, work, extra or [])
    started, commit = time.time(), commit_id()  # the code that trains, not HEAD when it ends
    segments = record_segment(work, commit, machine(threads))
    earlier = sorted({s["commit"] for s in segments[:-1]} - {commit})
    if earlier:  # resuming across a code change is allowed (sessions), but never silent
        print(f"warning: {row.key} resumes a run trained so far at commit {', '.join(earlier)}; HEAD is {commit}. "
              f"Its result will name both; delete {work} to train it from step 0 at {commit}", file=sys.stderr, flush=True)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    returncode = _train(command, log_file, threads)
    if returncode in INTERRUPTED_CODES:
        raise RowInterrupted(f"row {row.key} was interrupted; run the same command again to resume it")
    if returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise RuntimeError(f"row {row.key} failed (exit {returncode}){where}: {' '.join(command)}")
    result = collect_result(suite, row, work, command, time.time() - started, commit, threads, segments)
    results.mkdir(parents=True, exist_ok=True)
    tmp = results / f".{row.key}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(results / f"{row.key}.json")
    return result
