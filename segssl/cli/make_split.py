"""segssl-make-split: write labeled / unlabeled (/ val / test) id lists for a dataset.

  python tools/make_split.py --config CFG --labeled 1/8 [--val 0.1] [--test 0.1] [--seed 0]
                             [--stratify] --out datasets/NAME/split_1-8_seed0 [--set key=value ...]

The pool is the config's training split (``data.split.train``). Whole groups (patient, scene,
sequence: the adapter's ``group``) are drawn, so no group sits on two sides. ``--test`` and
``--val`` are drawn from the pool first, then ``--labeled`` from what is left; the rest is
unlabeled. ``--stratify`` loads every mask once and draws, rarest class first, a group holding
each class not yet covered before filling up at random, so rare classes appear in every part.

Writes OUT/labeled.txt, unlabeled.txt, train.txt (labeled + unlabeled: the training split's
list when val/test were drawn from the pool, so they stay out of the unlabeled stream),
val.txt / test.txt (drawn, or the config's val/test split), and split.json (arguments, counts,
class coverage). Use with ``data.split.labeled: OUT/labeled.txt``.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..config import load_config
from ..errors import ConfigError, DataError
from .common import add_override_argument, run_cli

Amount = Union[float, int]


def parse_amount(text: str, flag: str) -> Amount:
    """"0.125" or "1/8" -> fraction, "46" -> count."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value: Amount = float(num) / float(den)
        elif text.isdigit():
            value = int(text)
        else:
            value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a fraction (0.125, 1/8) or a count (46), got '{text}'") from None
    if (isinstance(value, float) and not 0 < value <= 1) or (isinstance(value, int) and value < 1):
        raise ConfigError(f"{flag} must be a fraction in (0, 1] or a count >= 1, got '{text}'")
    return value


def group_items(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(str(it.get("group", it["id"])), []).append(it)
    return groups


def draw(
    groups: dict[str, list[dict[str, Any]]], amount: Amount, seed: int, classes: Optional[dict[str, set[int]]] = None
) -> tuple[list[str], list[str]]:
    """(chosen group keys, the rest); ``classes`` (group -> classes present) stratifies."""
    size = sum(len(v) for v in groups.values())
    target = max(1, round(amount * size)) if isinstance(amount, float) else amount
    if target > size:
        raise ConfigError(f"asked for {target} items, the pool has {size}")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    chosen: list[str] = []
    count = 0
    if classes is not None:
        holders: dict[int, list[str]] = {}
        for key in order:
            for c in classes[key]:
                holders.setdefault(c, []).append(key)
        for c in sorted(holders, key=lambda c: (len(holders[c]), c)):  # rarest class first
            if count >= target:
                break
            if not any(c in classes[k] for k in chosen):
                key = holders[c][0]
                chosen.append(key)
                count += len(groups[key])
    for key in order:
        if count >= target:
            break
        if key not in chosen:
            chosen.append(key)
            count += len(groups[key])
    return chosen, [k for k in order if k not in chosen]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segssl-make-split", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (its data section names the adapter and pool)")
    add_override_argument(parser)
    parser.add_argument("--labeled", required=True, help="labeled part: fraction (0.125, 1/8) of the pool left after val/test, or a count (46)")
    parser.add_argument("--val", help="draw a validation part from the pool (fraction or count)")
    parser.add_argument("--test", help="draw a test part from the pool (fraction or count)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--stratify", action="store_true", help="make every class present in the pool appear in each part")
    parser.add_argument("--out", required=True, help="output folder for the list files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    from ..data.adapters import build_adapter

    cfg = load_config(args.config, args.overrides)
    adapter = build_adapter(cfg.data.adapter, cfg.data.root, cfg.data.params)
    pool = adapter.items(cfg.data.split.train)
    if any(not adapter.has_mask(it) for it in pool) and args.stratify:
        raise DataError(f"--stratify needs masks, and split '{cfg.data.split.train}' has items without")
    bad = [it["id"] for it in pool if not it["id"] or any(ch.isspace() for ch in it["id"])]
    if bad:
        raise DataError(f"ids with whitespace cannot go into list files: {bad[:5]}")
    groups = group_items(pool)
    classes = None
    if args.stratify:
        classes = {k: set() for k in groups}
        for key, items in groups.items():
            for it in items:
                sample = adapter.load(it)
                classes[key].update(np.unique(sample["mask"][sample["valid"]]).tolist())
    parts: dict[str, list[str]] = {}
    remaining = dict(groups)
    for name, text, salt in (("test", args.test, 2), ("val", args.val, 1), ("labeled", args.labeled, 0)):
        if text is None:
            continue
        chosen, rest = draw(remaining, parse_amount(text, f"--{name}"), args.seed + 1009 * salt, classes)
        parts[name] = [it["id"] for k in chosen for it in remaining[k]]
        remaining = {k: remaining[k] for k in rest}
    parts["unlabeled"] = [it["id"] for items in remaining.values() for it in items]
    drawn = set(parts)  # parts from the pool (class coverage is known for these)
    parts["train"] = parts["labeled"] + parts["unlabeled"]
    for name in ("val", "test"):
        split = getattr(cfg.data.split, name)
        if name not in parts and split:
            parts[name] = [it["id"] for it in adapter.items(split)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    order = {it["id"]: i for i, it in enumerate(pool)}
    coverage: dict[str, Any] = {}
    for name, ids in parts.items():
        ids = sorted(ids, key=lambda i: order.get(i, -1))
        (out / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        if classes is not None and name in drawn:
            keys = {str(it.get("group", it["id"])) for it in pool if it["id"] in set(ids)}
            present = set().union(*(classes[k] for k in keys))
            in_pool = set().union(*classes.values())  # classes the pool lacks cannot be asked of a part
            coverage[name] = [adapter.class_names[c] for c in range(adapter.num_classes) if c in in_pool and c not in present]
    counts = {k: len(v) for k, v in parts.items()}
    summary = {"config": args.config, "overrides": args.overrides, "pool": cfg.data.split.train, "labeled": args.labeled,
               "val": args.val, "test": args.test, "seed": args.seed, "stratify": args.stratify, "counts": counts,
               "groups": {"pool": len(groups)}, "classes_absent": coverage}
    (out / "split.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {', '.join(f'{k} {v}' for k, v in counts.items())} ids ({len(groups)} groups in the pool) to {out}")
    for name, absent in coverage.items():
        if absent:
            print(f"warning: classes absent from {name}: {', '.join(absent)}")
    print(f"use: --set data.split.labeled={out / 'labeled.txt'}")
    if args.val or args.test:
        print(f"val/test were drawn from '{cfg.data.split.train}': list {out / 'train.txt'} as that split's list and "
              f"{out / 'val.txt'} as the val split's, so they stay out of training")
    return 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
