#!/usr/bin/env python
"""Training-step overhead of the trainer, per method, against the bare compute of that step.

For every registered method: one batch pair is drawn once; then, alternating in the same
process, (a) ``Trainer.train_step`` (autocast context, loss scaler, gradient averaging hook,
finite-loss check, schedulers, EMA hooks) and (b) the same method's ``training_step`` with a
plain ``backward()`` and ``optimizer.step()`` on the same model and batch. The ratio of medians
is the trainer's overhead (target <= 1.15 on CPU). Also: data-loading throughput of the
configured loader and the process's peak RSS.

  python benchmarks/train_speed.py [--config configs/demo.yaml] [--steps 12] [--set key=value ...]
                                   [--out benchmarks/results/speed_cpu.md]

Each method runs with its library defaults (``method.params`` reset), so any config can serve,
e.g. a semi-supervised CamVid config for its labeled/unlabeled split.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segssl.benchmark.suite import commit_id, machine  # noqa: E402
from segssl.cli.common import add_override_argument  # noqa: E402
from segssl.config import load_config  # noqa: E402
from segssl.engine.trainer import Trainer  # noqa: E402
from segssl.methods import METHODS, StepContext  # noqa: E402


def bare_step(trainer: Trainer, labeled: dict, unlabeled: dict | None) -> None:
    method, optimizers = trainer.method, trainer.optimizers

    def step(name: str) -> None:
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    ctx = StepContext(step=trainer.step, max_steps=trainer.cfg.train.max_steps, device=trainer.device,
                      num_classes=trainer.adapter.num_classes, autocast=torch.enable_grad,
                      backward=lambda loss: loss.backward(), optimizer_step=step, run_dir=trainer.run_dir)
    out = method.training_step(labeled, unlabeled, ctx)
    if not method.manual_optimization:
        out["loss"].backward()
        for name in optimizers:
            step(name)
    method.on_after_step(ctx)


def measure(config: str, name: str, steps: int, work: Path, overrides: list[str]) -> dict[str, float]:
    cfg = load_config(config, [*overrides, f"method.name={name}", "method.params={}", "train.max_steps=100000"])
    trainer = Trainer(cfg, work / name)
    d = cfg.data
    labeled_stream = trainer._stream(trainer.splits.labeled, (), d.batch_size, 0)
    unlabeled_stream = None
    if trainer.method.uses_unlabeled:
        unlabeled_stream = trainer._stream(trainer.splits.unlabeled, trainer.method.unlabeled_views, d.batch_size, 1, hide_labels=True)
    t0 = time.perf_counter()
    batches = [(next(labeled_stream), next(unlabeled_stream) if unlabeled_stream is not None else None) for _ in range(steps)]
    load_s = (time.perf_counter() - t0) / steps
    labeled, unlabeled = batches[0]
    for _ in range(2):  # warm-up both paths
        trainer.train_step(labeled, unlabeled)
        bare_step(trainer, labeled, unlabeled)
    timed_trainer, timed_bare = [], []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.train_step(labeled, unlabeled)
        timed_trainer.append(time.perf_counter() - t)
        t = time.perf_counter()
        bare_step(trainer, labeled, unlabeled)
        timed_bare.append(time.perf_counter() - t)
    trainer_s, bare_s = statistics.median(timed_trainer), statistics.median(timed_bare)
    return {"trainer_s": trainer_s, "bare_s": bare_s, "ratio": trainer_s / bare_s, "load_s": load_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--methods", nargs="*", default=METHODS.names())
    add_override_argument(parser, "config override for every method, as in tools/train.py")
    parser.add_argument("--out", help="write the Markdown table here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods:
            r = measure(args.config, name, args.steps, Path(tmp), args.overrides)
            rows.append(f"| {name} | {1000 * r['trainer_s']:.0f} | {1000 * r['bare_s']:.0f} | {r['ratio']:.3f} | {1000 * r['load_s']:.0f} |")
            print(rows[-1], flush=True)
    commit = commit_id()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = "\n".join([
        f"# Training-step overhead ({args.config}, median of {args.steps} alternating steps)", "",
        "| method | trainer step ms | bare step ms | ratio | batch load ms (configured workers) |", "|---|---|---|---|---|",
        *rows, "",
        f"command: `python benchmarks/train_speed.py --config {args.config} --steps {args.steps}"
        f"{''.join(f' --set {o}' for o in args.overrides)}`; commit {commit}; "
        f"{machine()}; peak RSS {peak:.0f} MiB.",
    ])
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
