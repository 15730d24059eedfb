"""segssl-train: train a model from a YAML config.

  python tools/train.py --config configs/demo.yaml [--method NAME] [--set key.sub=value ...]
                        [--work-dir DIR] [--resume]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import Config, apply_overrides, from_dict, read_yaml, saved_run_config, validate
from ..errors import ConfigError
from .common import add_override_argument, run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segssl-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment YAML (optional with --resume: the run's saved config is used)")
    parser.add_argument("--method", help="override the config's method (registered name)")
    add_override_argument(parser)
    parser.add_argument("--work-dir", help="run directory (default: runs/<name>-<method>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work-dir from its last checkpoint")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    if args.config is None:
        if not (args.resume and args.work_dir):
            raise ConfigError("--config is required (or --resume with --work-dir of an existing run)")
        saved = Path(args.work_dir) / "config.yaml"
        raw = saved_run_config(read_yaml(saved))
    else:
        raw = read_yaml(args.config)
    if args.method:
        method = raw.setdefault("method", {})
        if not isinstance(method, dict):
            raise ConfigError("config key 'method' must be a mapping")
        if method.get("name", "supervised") != args.method:
            method["params"] = {}  # the config's params belong to its own method
        method["name"] = args.method
    cfg = from_dict(Config, apply_overrides(raw, args.overrides))
    validate(cfg)
    from ..methods import METHODS

    METHODS.get(cfg.method.name)  # an unknown name lists the registered ones
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    if args.work_dir:
        run_dir = Path(args.work_dir)
    else:
        if args.resume:
            raise ConfigError("--resume needs --work-dir")
        run_dir = Path("runs") / f"{cfg.name}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    from ..engine.trainer import Trainer

    trainer = Trainer(cfg, run_dir, resume=args.resume)
    summary = trainer.fit()
    if trainer.dist.is_main:
        best = summary["best"]
        line = f"done: {summary['steps']} steps in {summary['seconds']} s; run directory {run_dir}"
        if best.get("value") is not None:
            line += f"; best val {cfg.train.select_metric} {best['value']:.4f} at step {best['step']}"
        if "test" in summary:
            line += f"; test mIoU {summary['test']['miou']:.4f}"
        print(line)
    from ..engine.distributed import cleanup

    cleanup()
    return 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
