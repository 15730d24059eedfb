"""segssl-audit: rank the labeled masks (and regions in them) most worth re-checking.

  python tools/audit.py --config CFG --work-dir DIR [--folds 5] [--method NAME] [--set key=value ...]
                        [--top 50] [--cleanlab] [--write-suggestions DIR]

K models (any registered method: with fixmatch & co. the unlabeled pool is used as in training)
each train on K-1 folds of the labeled set (whole groups per fold, seeded) and predict the
held-out fold with flip TTA; the out-of-fold probabilities are stored under DIR/oof/. Every
image is then scored at pixel, region (missing / extra / wrong_class / boundary) and image
level (see segssl/audit/scoring.py), and DIR/report.csv, DIR/regions.csv and DIR/report.html
(offline, thumbnails inlined) list the images most suspicious first. Rerunning skips finished
folds and resumes an interrupted one, so changing only the scoring options is quick.
--write-suggestions writes corrected masks (only confidently wrong regions take the
prediction) to a new folder; the data folder is never written to.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .common import add_override_argument, run_cli
from .train import build_config


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="segssl-audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML, as for tools/train.py")
    p.add_argument("--method", help="override the config's method (registered name)")
    add_override_argument(p)
    p.add_argument("--work-dir", required=True, help="audit folder: fold runs, out-of-fold probabilities, reports")
    p.add_argument("--folds", type=int, default=5, help="K: number of folds, each held out once (default 5)")
    p.add_argument("--fold-seed", type=int, help="seed of the fold assignment (default: data.split.seed)")
    p.add_argument("--top", type=int, default=50, help="images shown in report.html (default 50)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability of the predicted class that makes a disagreement confident (default 0.5)")
    p.add_argument("--min-area", type=int, default=16, help="smallest component / region in pixels (default 16)")
    p.add_argument("--band", type=int, default=3, help="boundary band half-width in pixels (default 3)")
    p.add_argument("--cleanlab", action="store_true", help="add cleanlab's softmin image score and pixel issues (optional extra)")
    p.add_argument("--write-suggestions", metavar="DIR", help="write corrected masks here (a new folder outside the data)")
    p.add_argument("--suggest-min-score", type=float, default=0.25,
                   help="only regions scoring at least this are replaced in suggestions (default 0.25)")
    args = p.parse_args(argv)
    args.work_dir = Path(args.work_dir)
    if args.top < 0:
        p.error("--top must be >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from ..audit.folds import check_k
    from ..audit.scoring import AuditParams

    check_k(args.folds)
    params = AuditParams(threshold=args.threshold, min_area=args.min_area, band=args.band)
    params.check()
    if args.cleanlab:
        from ..audit.cleanlab_scores import require_cleanlab

        require_cleanlab()  # before hours of training, not after
    cfg = build_config(argparse.Namespace(config=args.config, method=args.method, overrides=args.overrides,
                                          resume=False, work_dir=str(args.work_dir)))
    from ..audit.oof import run_folds
    from ..audit.pipeline import add_cleanlab, score_items
    from ..audit.report import write_csv, write_html, write_regions_csv, write_suggestions
    from ..data.adapters import build_adapter
    from ..data.splits import make_splits
    from ..engine.logger import setup_console_logging

    work = args.work_dir
    if args.write_suggestions and Path(args.write_suggestions).resolve() == work.resolve():
        raise ConfigError("--write-suggestions needs a folder of its own, not the --work-dir")
    setup_console_logging(None, True)
    started = time.time()
    adapter = build_adapter(cfg.data.adapter, cfg.data.root, cfg.data.params)
    splits = make_splits(adapter, cfg.data.split)
    seed = cfg.data.split.seed if args.fold_seed is None else args.fold_seed
    folds = run_folds(cfg, adapter, splits, work, args.folds, seed)
    results = score_items(adapter, splits.labeled, work / "oof", params, folds)
    if args.cleanlab:
        add_cleanlab(results, adapter, splits.labeled, work / "oof", work)
    names = list(adapter.class_names)
    write_csv(results, work / "report.csv", names)
    write_regions_csv(results, work / "regions.csv", names)
    write_html(results, adapter, splits.labeled, work / "oof", params, work / "report.html", args.top)
    (work / "audit.json").write_text(json.dumps({"params": params.__dict__, "folds": args.folds, "fold_seed": seed,
                                                 "config": args.config, "overrides": args.overrides, "method": cfg.method.name}, indent=2))
    line = (f"audited {len(results)} images in {time.time() - started:.0f} s: {sum(r.score > 0 for r in results)} with suspicious "
            f"regions; ranked list {work / 'report.csv'}, thumbnails {work / 'report.html'}")
    if args.write_suggestions:
        count = write_suggestions(results, adapter, splits.labeled, work / "oof", params, Path(args.write_suggestions),
                                  args.suggest_min_score, cfg.data.root)
        line += f"; {count} suggested masks in {args.write_suggestions}"
    print(line)
    return 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
