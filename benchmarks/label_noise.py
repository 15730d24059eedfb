#!/usr/bin/env python
"""Label-audit benchmark: inject known label noise into CamVid, audit it, measure what is found.

1. Noise (seeded, copy-free): of the chosen training images, a fraction gets 1..N corruptions of
   distinct objects (segssl/audit/noise.py: erase -> missing, relabel -> wrong_class,
   dilate/erode -> boundary). Corrupted masks are written under runs/label_noise/<name>/masks/
   (clean ones are symlinks to the shared files, images are read in place), with a corruption
   map per image and ground_truth.json. Shared data and the repository are never written to.
2. Audit: ``tools/audit.py`` on the noisy masks (K folds of the configured method), in process,
   with the report a user would get (runs/label_noise/<name>/audit/report.html).
3. Naive baseline: one model trained on all noisy labels predicts its own training images.
4. Side by side on the same out-of-fold probabilities, three rankings: segssl's image score,
   cleanlab's softmin image score (lower = worse), and the naive per-image loss (mean cross-
   entropy of the given labels). Image level: precision and recall in the top k (k = number of
   corrupted images) and PR-AUC (average precision). Region level: recall per injected kind
   (found = at least 25% of its changed pixels flagged; for segssl also with the expected type).
   Pixel level: precision / recall of each method's flagged pixels against changed pixels
   (segssl: pixels of its regions; cleanlab: find_label_issues; naive: arg-max != label).

Results (Markdown + JSON with the command and commit): benchmarks/results/label_noise/<name>.*
Every step resumes: the noise is generated once, finished folds and the naive run are skipped.

Full run (5 folds + 1 naive model, 3000 steps each at 128x160: about 1.7 s per step on one
CPU core, so roughly 9 hours; resumable, so it can be spread over sessions):

  python benchmarks/label_noise.py --name camvid

Smoke test (a minute or two; numbers meaningless):

  python benchmarks/label_noise.py --name smoke_tiny --images 8 --folds 2 --min-object 100 \\
      --set train.max_steps=10 --set train.eval_every=10 --set data.split.val=null --set data.num_workers=0 \\
      --note "Smoke test: 10 training steps per model, so the numbers say nothing about the methods."
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segssl.audit import noise  # noqa: E402
from segssl.audit.cleanlab_scores import require_cleanlab  # noqa: E402
from segssl.audit.oof import load_probs, oof_path, train_and_predict  # noqa: E402
from segssl.audit.pipeline import add_cleanlab, score_items, valid_of  # noqa: E402
from segssl.audit.scoring import AuditParams, ranking  # noqa: E402
from segssl.benchmark.suite import commit_id, machine  # noqa: E402
from segssl.cli.common import add_override_argument  # noqa: E402
from segssl.config import Config, apply_overrides, from_dict, read_yaml, validate  # noqa: E402
from segssl.data.adapters import build_adapter  # noqa: E402
from segssl.data.io import read_mask  # noqa: E402
from segssl.data.splits import Splits, make_splits  # noqa: E402
from segssl.errors import ConfigError  # noqa: E402

FOUND = 0.25  # a corruption counts as found when this share of its changed pixels is flagged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="camvid", help="results name and work folder (runs/label_noise/<name>)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "camvid"), help="CamVid (SegNet) folder")
    p.add_argument("--config", default="configs/camvid_supervised.yaml", help="training config of the audit's models")
    add_override_argument(p, "config override (repeatable)")
    p.add_argument("--images", type=int, help="audit this many training images (seeded draw; default all)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--corrupt", type=float, default=0.3, help="fraction of images corrupted (default 0.3)")
    p.add_argument("--per-image", type=int, default=2, help="at most this many corruptions per corrupted image")
    p.add_argument("--radius", type=int, default=3, help="dilate/erode radius in pixels (the audit's band is 3)")
    p.add_argument("--min-object", type=int, default=200, help="smallest object to corrupt, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="a line added to the results (e.g. what the run is for)")
    p.add_argument("--work-root", default=str(REPO / "runs" / "label_noise"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "label_noise"))
    return p.parse_args(argv)


# ------------------------------------------------------------------ 1. noise


def make_noise(args: argparse.Namespace, base: dict[str, Any], work: Path) -> dict[str, Any]:
    settings = {k: getattr(args, k) for k in ("data", "images", "corrupt", "per_image", "radius", "min_object", "seed")}
    truth_path = work / "ground_truth.json"
    if truth_path.is_file():
        truth = json.loads(truth_path.read_text())
        if truth["settings"] != settings:
            raise ConfigError(f"{work} holds noise made with other settings {truth['settings']}; use another --name")
        return truth
    params = base["data"]["params"]
    clean = build_adapter("folder", args.data, {**params, "splits": {"train": {"images": "train", "masks": "trainannot"}}})
    items = clean.items("train")
    rng = np.random.default_rng(args.seed)
    if args.images:
        items = [items[i] for i in sorted(rng.choice(len(items), size=min(args.images, len(items)), replace=False))]
    ignore = set(params.get("ignore_values", []))
    corrupted_ids = set(rng.choice([it["id"] for it in items], size=round(args.corrupt * len(items)), replace=False).tolist())
    masks, maps = work / "masks", work / "corruption_maps"
    masks.mkdir(parents=True, exist_ok=True)
    maps.mkdir(exist_ok=True)
    corruptions: list[dict[str, Any]] = []
    for item in items:
        raw = read_mask(item["mask"])
        target = masks / Path(item["mask"]).name
        found: list[noise.Corruption] = []
        if item["id"] in corrupted_ids:
            kinds = list(rng.choice(noise.KINDS, size=int(rng.integers(1, args.per_image + 1))))
            valid = ~np.isin(raw, list(ignore))
            out, changed, found = noise.corrupt(raw.astype(np.int64), valid, kinds, int(params["num_classes"]), rng, item["id"],
                                                min_area=args.min_object, radius=args.radius)
        target.unlink(missing_ok=True)
        if found:
            cv2.imwrite(str(target), out.astype(raw.dtype))
            cv2.imwrite(str(maps / f"{item['id']}.png"), changed)
            corruptions += [c.to_dict() for c in found]
        else:  # clean: a link to the shared file, not a copy
            os.symlink(Path(item["mask"]).resolve(), target)
    (work / "ids.txt").write_text("".join(f"{it['id']}\n" for it in items))
    truth = {"settings": settings, "images": [it["id"] for it in items],
             "corrupted": sorted({c["id"] for c in corruptions}), "corruptions": corruptions}
    truth_path.write_text(json.dumps(truth, indent=1))
    return truth


def noisy_config(args: argparse.Namespace, base: dict[str, Any], work: Path) -> Path:
    """The experiment config with the training split read from the noisy masks."""
    raw = json.loads(json.dumps(base))
    data = Path(args.data).resolve()
    splits = raw["data"]["params"]["splits"]
    for name, spec in splits.items():
        for key in ("images", "masks"):
            if key in spec:
                spec[key] = str(data / spec[key])
    splits["train"] = {"images": str(data / "train"), "masks": str(work / "masks"), "list": str(work / "ids.txt")}
    raw["data"]["root"] = str(data)
    raw["data"]["split"].update({"labeled": None, "test": None})
    raw = apply_overrides(raw, list(args.overrides))
    validate(from_dict(Config, raw))
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------ 4. metrics


def evaluate(config: Path, work: Path, truth: dict[str, Any]) -> dict[str, Any]:
    cfg = from_dict(Config, read_yaml(config))
    adapter = build_adapter(cfg.data.adapter, cfg.data.root, cfg.data.params)
    splits = make_splits(adapter, cfg.data.split)
    items, params = splits.labeled, AuditParams()
    by_image: dict[str, list[dict[str, Any]]] = {}
    for c in truth["corruptions"]:
        by_image.setdefault(c["id"], []).append(c)
    positives = set(truth["corrupted"])
    maps_dir = work / "corruption_maps"
    names = ("segssl", "cleanlab_softmin", "naive_loss")
    pixels = {n: noise.PixelCounts() for n in names}
    cover: dict[str, list[tuple[str, bool]]] = {n: [] for n in names}  # (kind, found)
    typed: list[tuple[str, bool]] = []
    changed_of: dict[str, np.ndarray] = {}

    def changed(item_id: str, shape: tuple[int, ...]) -> np.ndarray:
        if item_id not in changed_of:
            path = maps_dir / f"{item_id}.png"
            changed_of[item_id] = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else np.zeros(shape, np.uint8)
        return changed_of[item_id]

    def record(name: str, item_id: str, flagged: np.ndarray, valid: np.ndarray) -> None:
        cmap = changed(item_id, flagged.shape)
        pixels[name].add(flagged, cmap > 0, valid)
        for c in by_image.get(item_id, []):
            cover[name].append((c["kind"], noise.coverage(cmap, c["index"], flagged) >= FOUND))

    def visit(item, sample, probs, audit) -> None:  # noqa: ANN001
        item_id = str(item["id"])
        record("segssl", item_id, audit.flag, valid_of(sample))
        cmap = changed(item_id, audit.flag.shape)
        for c in by_image.get(item_id, []):
            of_type = np.zeros_like(audit.flag)
            for region in audit.regions:
                if region.type == c["expected"]:
                    of_type |= region.flag
            typed.append((c["kind"], noise.coverage(cmap, c["index"], of_type) >= FOUND))

    results = score_items(adapter, items, work / "audit" / "oof", params, visit=visit)
    issues = add_cleanlab(results, adapter, items, work / "audit" / "oof", work)
    by_id = {str(it["id"]): it for it in items}
    naive_loss = {}
    for r, issue in zip(results, issues):
        sample = adapter.load(by_id[r.id])
        valid, given = valid_of(sample), sample["mask"]
        record("cleanlab_softmin", r.id, issue, valid)
        probs = load_probs(oof_path(work / "naive" / "oof", r.id))
        p_given = np.take_along_axis(probs, given[None], 0)[0]
        naive_loss[r.id] = float(-np.log(np.clip(p_given[valid], 1e-6, 1)).mean()) if valid.any() else 0.0
        record("naive_loss", r.id, (probs.argmax(0) != given) & valid, valid)
    ids = [r.id for r in results]
    orders = {
        "segssl": ids,
        "cleanlab_softmin": [ids[i] for i in ranking([-r.extra["cleanlab_softmin"] for r in results], [0.0] * len(ids), ids)],
        "naive_loss": [ids[i] for i in ranking([naive_loss[i] for i in ids], [0.0] * len(ids), ids)],
    }
    kinds = ("erase", "relabel", "dilate", "erode")
    table: dict[str, Any] = {}
    for name in names:
        precision, recall = noise.precision_recall_at_k(orders[name], positives)
        row = {"precision_at_k": precision, "recall_at_k": recall, "pr_auc": noise.average_precision(orders[name], positives),
               "pixel_precision": pixels[name].precision(), "pixel_recall": pixels[name].recall()}
        for kind in kinds:
            hits = [found for k, found in cover[name] if k == kind]
            row[f"recall_{kind}"] = sum(hits) / len(hits) if hits else None
        table[name] = row
    typed_recall = {}
    for kind in kinds:
        hits = [found for k, found in typed if k == kind]
        typed_recall[kind] = sum(hits) / len(hits) if hits else None
    counts = {kind: sum(c["kind"] == kind for c in truth["corruptions"]) for kind in kinds}
    return {"rankings": table, "segssl_typed_recall": typed_recall, "injected": counts,
            "images": len(ids), "corrupted_images": len(positives), "top10_segssl": ids[:10]}


def markdown(name: str, outcome: dict[str, Any], command: str, commit: str, seconds: float, note: str = "") -> str:
    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    kinds = ("erase", "relabel", "dilate", "erode")
    inj = outcome["injected"]
    lines = [f"# Label-audit benchmark: {name}", "",
             f"{outcome['images']} images, {outcome['corrupted_images']} corrupted (k); injected: "
             + ", ".join(f"{k} {inj[k]}" for k in kinds), "",
             "| ranking | P@k | R@k | PR-AUC | " + " | ".join(f"recall {k}" for k in kinds) + " | pixel P | pixel R |",
             "|---|---|---|---|" + "---|" * len(kinds) + "---|---|"]
    for ranking_name, row in outcome["rankings"].items():
        lines.append(f"| {ranking_name} | {f(row['precision_at_k'])} | {f(row['recall_at_k'])} | {f(row['pr_auc'])} | "
                     + " | ".join(f(row[f'recall_{k}']) for k in kinds) + f" | {f(row['pixel_precision'])} | {f(row['pixel_recall'])} |")
    typed = outcome["segssl_typed_recall"]
    lines.append("| segssl, region of the expected type | | | | " + " | ".join(f(typed[k]) for k in kinds) + " | | |")
    lines += ["", f"Found = at least {FOUND:.0%} of a corruption's changed pixels flagged. Expected types: erase -> missing, "
              "relabel -> wrong_class, dilate/erode -> boundary. cleanlab and segssl use the same out-of-fold probabilities; "
              "naive = one model trained on all noisy labels, scored on its own training images.", "",
              f"command: `{command}`; commit {commit}; {machine()}, {seconds:.0f} s this session."]
    return "\n".join(lines + ([note] if note else []))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_cleanlab()
    from segssl.cli.audit import main as audit_main
    from segssl.engine.logger import setup_console_logging

    started = time.time()
    work = Path(args.work_root) / args.name
    work.mkdir(parents=True, exist_ok=True)
    base = read_yaml(REPO / args.config)
    truth = make_noise(args, base, work)
    print(f"noise: {len(truth['corruptions'])} corruptions in {len(truth['corrupted'])} of {len(truth['images'])} images")
    config = noisy_config(args, base, work)
    audit_main(["--config", str(config), "--work-dir", str(work / "audit"), "--folds", str(args.folds)])
    cfg = from_dict(Config, read_yaml(config))
    adapter = build_adapter(cfg.data.adapter, cfg.data.root, cfg.data.params)
    splits = make_splits(adapter, cfg.data.split)
    setup_console_logging(None, True)
    train_and_predict(cfg, adapter, Splits(labeled=splits.labeled, val=splits.val), splits.labeled, work / "naive", work / "naive" / "oof")
    outcome = evaluate(config, work, truth)
    command = "python benchmarks/label_noise.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    commit = commit_id()
    text = markdown(args.name, outcome, command, commit, time.time() - started, args.note)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.md").write_text(text + "\n")
    (results / f"{args.name}.json").write_text(json.dumps({"command": command, "commit": commit, "note": args.note,
                                                           "settings": truth["settings"], "config": str(config), **outcome}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    from segssl.cli.common import run_cli

    raise SystemExit(run_cli(main))
