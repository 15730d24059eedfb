"""segssl-benchmark: label-efficiency suites, resumable across sessions and machines.

  python tools/benchmark.py --suite benchmarks/suites/camvid_cpu.yaml [--only METHOD ...] [--labels 1/8 all]
                            [--seeds 2] [--jobs N] [--set key=value ...] [--report-only]

Each row (method x labeled subset x seed) is one ``tools/train.py`` run in its own work
directory. A finished row leaves ``benchmarks/results/<suite>/runs/<row>.json`` (small, meant
to be committed) and is skipped next time; an interrupted row resumes from its last
checkpoint. Every row selects its checkpoint the same way (best validation ``miou``) and is
tested once with it. The report (results.md, results.json, label_efficiency.png) gives test
mIoU and the share of the lower/upper gap closed. ``--jobs N`` trains N rows at once (a GPU
machine has room for several small runs; on a CPU the cores are split between them, see
``threads_per_row``); each row then logs to ``<work dir>.log``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from ..benchmark.report import write_report
from ..benchmark.suite import REPO, Row, Suite, load_suite, rows, run_row, stop_rows, threads_per_row
from ..engine.interrupt import sigterm_as_interrupt
from .common import add_override_argument, run_cli


def _run_pending(suite: Suite, pending: list[Row], results: Path, work_root: Path, extra: list[str], jobs: int) -> list[str]:
    """Run rows (``jobs`` at a time); returns one message per failed row, the others still complete."""
    failures: list[str] = []
    threads = threads_per_row(jobs)

    def one(row: Row) -> None:
        log = work_root / suite.name / f"{row.key}.log" if jobs > 1 else None
        print(f"run {row.key}" + (f" (log: {log})" if log else ""), flush=True)
        try:
            result = run_row(suite, row, results, work_root, extra, log, threads)
            print(f"done {row.key}: best val mIoU {result['best_val_miou']:.3f} @ {result['best_step']}, "
                  f"test mIoU {result['test']['miou']:.3f}", flush=True)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            failures.append(f"{row.key}: {exc}")
            print(f"FAILED {row.key}: {exc}", file=sys.stderr, flush=True)

    pool = ThreadPoolExecutor(jobs) if jobs > 1 else None
    try:
        if pool is not None:
            list(pool.map(one, pending))
        else:
            for row in pending:
                one(row)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM, or a row's training was stopped
        stop_rows(interrupt)  # each still-running row saves last.pt before the runner exits
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return failures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segssl-benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="suite YAML")
    parser.add_argument("--only", nargs="*", help="run only these methods, in this order")
    parser.add_argument("--labels", nargs="*", help="run only these labeled subsets (e.g. 1/8 all)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="train these seeds instead of the suite's list (e.g. a third seed for one comparison)")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once (default 1)")
    add_override_argument(parser, "extra override for every row run now (e.g. train.device=cuda); recorded in each row's command")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from stored results")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="results folder (committed)")
    parser.add_argument("--work-root", help="run directories with checkpoints (default: the suite's work_root)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    suite = load_suite(Path(args.suite))
    results = Path(args.results) / suite.name
    work_root = Path(args.work_root) if args.work_root else REPO / suite.work_root
    failures: list[str] = []
    if not args.report_only:
        pending = []
        for row in rows(suite, args.only, args.labels, args.seeds):
            if (results / "runs" / f"{row.key}.json").exists():
                print(f"skip {row.key}: done")
            else:
                pending.append(row)
        try:
            with sigterm_as_interrupt():
                failures = _run_pending(suite, pending, results / "runs", work_root, args.overrides, args.jobs)
        except KeyboardInterrupt as interrupt:
            print(f"stopped: {interrupt or 'interrupted'}; finished rows are kept, interrupted ones resume "
                  "from their last checkpoint when the same command runs again", file=sys.stderr)
            write_report(suite, results, "python tools/benchmark.py --suite " + shlex.quote(args.suite) + " --report-only", work_root)
            raise
    command = "python tools/benchmark.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(write_report(suite, results, command, work_root))
    if failures:
        print(f"{len(failures)} row(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
