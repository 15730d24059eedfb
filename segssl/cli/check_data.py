"""segssl-check-data: load every item of every split once and report what the data holds.

  python tools/check_data.py --config CFG [--set key=value ...] [--split NAME ...] [--json FILE]

Per split: item/labeled/group counts, image sizes, channels and dtypes, class pixel histogram,
ignored pixels, per-channel mean/std (in the [0, 1] units ``data.mean``/``data.std`` use), and
per file: unreadable files, image/mask size mismatches, labels outside the declared classes,
warnings (e.g. unknown mask colours). Errors never stop the scan. Across splits: duplicate ids
and groups (patients, scenes, sequences) present in more than one split. Exit status 1 when any
error was found.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import load_config
from ..errors import SegsslError
from .common import add_override_argument, run_cli

CATEGORIES = (  # first matching keyword decides; the full message is kept
    ("unreadable", ("not found", "cannot decode", "cannot read", "unreadable")),
    ("size mismatch", ("but its image", "has shape", "(WxH)")),
    ("labels outside classes", ("outside the", "not in the value map", "non-integer")),
    ("channels", ("channels", "bands")),
)


def classify(message: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in message for k in keys):
            return name
    return "load error"


class _Capture(logging.Handler):
    """Collects warnings logged while one item loads (e.g. unknown colours set to ignore)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """The views' scaling (``segssl.data.views.to_unit_float``) without importing albumentations."""
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype, 1.0)
    return image.astype(np.float32) / np.float32(scale)


def check_sample(sample: dict[str, Any], num_classes: int, in_channels: int) -> list[tuple[str, str]]:
    problems = []
    image = sample.get("image")
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        return [("load error", f"image must be an H x W x C array, got {getattr(image, 'shape', type(image))}")]
    if image.shape[2] != in_channels:
        problems.append(("channels", f"image has {image.shape[2]} channels, the dataset declares {in_channels}"))
    if "mask" in sample:
        mask, valid = sample["mask"], sample.get("valid")
        if mask.shape != image.shape[:2] or (valid is not None and valid.shape != mask.shape):
            problems.append(("size mismatch", f"image {image.shape[:2]}, mask {mask.shape}, valid {getattr(valid, 'shape', None)}"))
        else:
            sel = mask[valid] if valid is not None else mask
            bad = np.unique(sel[(sel < 0) | (sel >= num_classes)])
            if bad.size:
                problems.append(("labels outside classes", f"labels {bad[:10].tolist()} outside 0..{num_classes - 1}"))
    return problems


def check_split(adapter: Any, split: str, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    report: dict[str, Any] = {"items": 0, "labeled": 0, "groups": 0, "errors": [], "warnings": []}
    try:
        items = adapter.items(split)
    except Exception as exc:  # noqa: BLE001 (a broken split is reported, the others still run)
        report["errors"].append({"id": None, "kind": classify(str(exc)), "message": str(exc)})
        return report
    sizes: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    hist = np.zeros(adapter.num_classes, np.int64)
    ignored = 0
    moments = np.zeros((3, adapter.in_channels))  # count, sum, sum of squares per channel
    capture = _Capture()
    logger = logging.getLogger("segssl")
    logger.addHandler(capture)
    try:
        for item in tqdm(items, desc=split, unit="item", disable=not progress, file=sys.stderr):
            capture.records.clear()
            source = item.get("image") or item["id"]
            try:
                sample = adapter.load(item)
                problems = check_sample(sample, adapter.num_classes, adapter.in_channels)
            except Exception as exc:  # noqa: BLE001 (per file: report and continue)
                sample, problems = None, [(classify(str(exc)), str(exc))]
            for kind, message in problems:
                report["errors"].append({"id": item["id"], "file": source, "kind": kind, "message": message})
            for message in capture.records:
                report["warnings"].append({"id": item["id"], "message": message})
            if sample is None or any(k != "labels outside classes" for k, _ in problems):
                continue
            image = sample["image"]
            sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
            channels[f"{image.shape[2]} {image.dtype}"] += 1
            if image.shape[2] == adapter.in_channels:
                unit = to_unit_float(image).reshape(-1, image.shape[2]).astype(np.float64)
                moments += [np.full(image.shape[2], len(unit)), unit.sum(0), (unit**2).sum(0)]
            if "mask" in sample:
                report["labeled"] += 1
                valid = sample.get("valid", np.ones(sample["mask"].shape, bool))
                sel = sample["mask"][valid]
                hist += np.bincount(sel[(sel >= 0) & (sel < adapter.num_classes)], minlength=adapter.num_classes)
                ignored += int((~valid).sum())
    finally:
        logger.removeHandler(capture)
    report["items"] = len(items)
    report["groups"] = len({str(it.get("group", it["id"])) for it in items})
    report["sizes"] = dict(sizes.most_common())
    report["channels"] = dict(channels)
    report["class_pixels"] = {name: int(n) for name, n in zip(adapter.class_names, hist)}
    report["ignored_pixels"] = ignored
    if moments[0, 0] > 0:
        mean = moments[1] / moments[0]
        report["mean"] = np.round(mean, 4).tolist()
        report["std"] = np.round(np.sqrt(np.maximum(moments[2] / moments[0] - mean**2, 0)), 4).tolist()
    counts = Counter(it["id"] for it in items)
    for dup in [i for i, n in counts.items() if n > 1][:20]:
        report["errors"].append({"id": dup, "kind": "duplicate id", "message": f"id '{dup}' appears {counts[dup]} times"})
    return report


def overlaps(adapter: Any, splits: list[str]) -> list[str]:
    """Groups and ids present in more than one split (leakage between them)."""
    seen: dict[str, dict[str, set[str]]] = {"group": defaultdict(set), "id": defaultdict(set)}
    for split in splits:
        try:
            items = adapter.items(split)
        except Exception:  # noqa: BLE001 (already reported by check_split)
            continue
        for it in items:
            seen["id"][it["id"]].add(split)
            if "group" in it:
                seen["group"][str(it["group"])].add(split)
    lines = []
    for kind, table in seen.items():
        shared = {k: sorted(v) for k, v in table.items() if len(v) > 1}
        if shared:
            sample = ", ".join(f"{k} ({'/'.join(v)})" for k, v in list(shared.items())[:8])
            lines.append(f"{len(shared)} {kind}(s) in more than one split: {sample}")
    return lines


def format_split(name: str, r: dict[str, Any]) -> str:
    out = [f"[{name}] {r['items']} items, {r['labeled']} labeled loaded, {r['groups']} groups"]
    if r.get("sizes"):
        sizes = list(r["sizes"].items())
        out.append("  sizes (HxW: n): " + ", ".join(f"{k}: {v}" for k, v in sizes[:6]) + (f", ... ({len(sizes)} sizes)" if len(sizes) > 6 else ""))
        out.append("  channels/dtype: " + ", ".join(f"{k}: {v}" for k, v in r["channels"].items()))
    if r.get("mean"):
        out.append(f"  per-channel mean {r['mean']} std {r['std']} (units of data.mean/std)")
    total = sum(r.get("class_pixels", {}).values())
    if total:
        out.append("  class pixels: " + ", ".join(f"{k} {v / total:.1%}" for k, v in r["class_pixels"].items()))
        out.append(f"  ignored pixels: {r['ignored_pixels']} ({r['ignored_pixels'] / (total + r['ignored_pixels']):.2%})")
        absent = [k for k, v in r["class_pixels"].items() if v == 0]
        if absent:
            out.append(f"  classes absent: {', '.join(absent)}")
    if r["warnings"]:
        out.append(f"  {len(r['warnings'])} warning(s), e.g. {r['warnings'][0]['id']}: {r['warnings'][0]['message']}")
    kinds = Counter(e["kind"] for e in r["errors"])
    for kind, n in kinds.items():
        out.append(f"  ERROR {kind}: {n}")
        for e in [e for e in r["errors"] if e["kind"] == kind][:10]:
            out.append(f"    {e.get('file') or e['id']}: {e['message']}")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segssl-check-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (its data section is checked)")
    add_override_argument(parser)
    parser.add_argument("--split", action="append", help="check only this adapter split (repeatable)")
    parser.add_argument("--json", help="also write the full report (every error and warning) to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # warnings are collected, not printed
    from ..data.adapters import build_adapter

    cfg = load_config(args.config, args.overrides)
    adapter = build_adapter(cfg.data.adapter, cfg.data.root, cfg.data.params)
    splits = args.split or adapter.splits()
    unknown = [s for s in splits if s not in adapter.splits()]
    if unknown:
        raise SegsslError(f"unknown split(s) {unknown}; the adapter has: {', '.join(adapter.splits())}")
    print(f"adapter {cfg.data.adapter}: {adapter.num_classes} classes ({', '.join(adapter.class_names)}), "
          f"{adapter.in_channels} channel(s), ignore_index {adapter.ignore_index}")
    reports = {s: check_split(adapter, s, progress=not args.no_progress and sys.stderr.isatty()) for s in splits}
    for split, report in reports.items():
        print(format_split(split, report))
    leaks = overlaps(adapter, splits)
    for line in leaks:
        print(f"note: {line}")
    n_errors = sum(len(r["errors"]) for r in reports.values())
    print(f"{'FAILED' if n_errors else 'OK'}: {n_errors} error(s), {sum(len(r['warnings']) for r in reports.values())} warning(s) "
          f"in {sum(r['items'] for r in reports.values())} items")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"splits": reports, "overlaps": leaks}, f, indent=1)
    return 1 if n_errors else 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
