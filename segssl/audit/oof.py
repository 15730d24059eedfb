"""Out-of-fold class probabilities: K models, each trained on K-1 folds of the labeled set,
each predicting its held-out fold with flip test-time augmentation.

Work-directory layout (every step resumable)::

    folds.json              fold assignment (item ids); a rerun with other folds is refused
    fold_<k>/               a normal training run (config.yaml, checkpoints/, metrics.jsonl, ...)
    fold_<k>/train_ids.txt  the labeled ids it trained on
    fold_<k>/oof_done.json  written last: the fold is finished and skipped on rerun
    oof/<id>.npy            float16 C x H x W probabilities at the mask's resolution

An interrupted fold resumes training from its ``last.pt``; a fold trained but not yet predicted
only predicts. The held-out fold never joins the unlabeled pool of its own model: its
predictions should come from a model that has not adapted to those images.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np

from ..config import Config
from ..data.adapters.base import Adapter, Item, Sample
from ..data.splits import Splits
from ..errors import ConfigError, DataError
from .folds import make_folds

log = logging.getLogger("segssl")


def oof_path(oof_dir: Path, item_id: str) -> Path:
    return oof_dir / f"{quote(str(item_id), safe='')}.npy"  # ids may hold '/' or other path characters


def save_probs(path: Path, probs: np.ndarray) -> None:
    """float16 halves the disk size; atomic, so an interrupted write never looks finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    np.save(tmp, probs.astype(np.float16))
    os.replace(tmp, path)


def load_probs(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"out-of-fold probabilities not found: {path} (run the audit's folds first)")
    return np.load(path).astype(np.float32)


def check_sample(sample: Sample, item: Item) -> None:
    """The audit needs a mask on the image's pixel grid (custom adapters may not check it)."""
    if sample.get("mask") is None:
        raise DataError(f"labeled item {item['id']} loads without a mask")
    mask, image = sample["mask"], sample["image"]
    if mask.shape != image.shape[:2]:
        raise DataError(f"mask of item {item['id']} is {mask.shape[1]}x{mask.shape[0]} (WxH) "
                        f"but its image is {image.shape[1]}x{image.shape[0]}")


def iter_samples(adapter: Adapter, items: list[Item]) -> Iterator[tuple[Item, Sample]]:
    for item in items:
        sample = adapter.load(item)
        check_sample(sample, item)
        yield item, sample


def plan_folds(work_dir: Path, items: list[Item], k: int, seed: int) -> list[list[Item]]:
    folds = make_folds(items, k, seed)
    record = {"k": k, "seed": seed, "folds": [[str(it["id"]) for it in fold] for fold in folds]}
    path = work_dir / "folds.json"
    if path.is_file():
        if json.loads(path.read_text()) != record:
            raise ConfigError(f"{work_dir} holds an audit with other folds (different --folds, seed or labeled "
                              "items); choose another --work-dir")
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    return folds


def fold_done(run_dir: Path, oof_dir: Path, held_out: list[Item]) -> bool:
    return (run_dir / "oof_done.json").is_file() and all(oof_path(oof_dir, it["id"]).is_file() for it in held_out)


def _trained(run_dir: Path, max_steps: int) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and int(json.loads(summary.read_text()).get("steps", 0)) >= max_steps


def train_and_predict(cfg: Config, adapter: Adapter, splits: Splits, predict: list[Item], run_dir: Path, oof_dir: Path) -> None:
    """Train one model on ``splits`` (resuming), then store flip-TTA probabilities of ``predict``."""
    from ..engine.trainer import Trainer

    if fold_done(run_dir, oof_dir, predict):
        log.info("%s: done, skipped", run_dir)
        return
    cfg = copy.deepcopy(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    ids_file = run_dir / "train_ids.txt"
    ids_file.write_text("".join(f"{it['id']}\n" for it in splits.labeled))
    cfg.data.split.labeled = str(ids_file)  # the run's config.yaml then names what it trained on
    cfg.data.split.test = None  # no test evaluation per fold: the held-out fold is the audit's test
    if not _trained(run_dir, cfg.train.max_steps):
        Trainer(cfg, run_dir, resume=True, splits=splits).fit()
    predict_probs(cfg, adapter, run_dir, predict, oof_dir)
    (run_dir / "oof_done.json").write_text(json.dumps({"predicted": [str(it["id"]) for it in predict]}, indent=1))


def predict_probs(cfg: Config, adapter: Adapter, run_dir: Path, items: list[Item], oof_dir: Path) -> None:
    """Probabilities of ``items`` from the run's best checkpoint, with flip TTA, at mask size."""
    from ..engine.inference import ImagePredictor, load_run
    from ..engine.trainer import resolve_amp, resolve_device

    device = resolve_device(cfg.train.device, 0)
    run = load_run(run_dir, "best", device, adapter_inputs=True)
    predictor = ImagePredictor(run, device, tta=True, amp_dtype=resolve_amp(cfg.train.amp, device))
    todo = [it for it in items if not oof_path(oof_dir, it["id"]).is_file()]
    for item, sample in iter_samples(adapter, todo):
        probs = predictor.probabilities(sample["image"], prepared=True).float().cpu().numpy()
        save_probs(oof_path(oof_dir, item["id"]), probs)


def run_folds(cfg: Config, adapter: Adapter, splits: Splits, work_dir: Path, k: int, seed: int) -> dict[str, int]:
    """Train and predict every fold (skipping finished ones); returns item id -> fold index."""
    folds = plan_folds(work_dir, splits.labeled, k, seed)
    oof_dir = work_dir / "oof"
    pending = [i for i, fold in enumerate(folds) if not fold_done(work_dir / f"fold_{i}", oof_dir, fold)]
    if pending:  # one pass over the data before hours of training: a misfit mask stops now
        for _ in iter_samples(adapter, splits.labeled):
            pass
    for index, held_out in enumerate(folds):
        held = {id(it) for it in held_out}
        train = [it for it in splits.labeled if id(it) not in held]
        log.info("fold %d/%d: train on %d labeled (+%d unlabeled) images, predict %d held out",
                 index + 1, k, len(train), len(splits.unlabeled), len(held_out))
        fold_splits = Splits(labeled=train, unlabeled=list(splits.unlabeled), val=list(splits.val), test=[])
        train_and_predict(cfg, adapter, fold_splits, held_out, work_dir / f"fold_{index}", oof_dir)
    return {str(it["id"]): i for i, fold in enumerate(folds) for it in fold}

