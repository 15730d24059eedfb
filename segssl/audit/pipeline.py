"""Score every audited item from its stored out-of-fold probabilities, and rank them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..data.adapters.base import Adapter, Item, Sample
from .oof import check_sample, load_probs, oof_path
from .scoring import AuditParams, ImageAudit, audit_image, check_inputs, ranking

Visit = Callable[[Item, Sample, np.ndarray, ImageAudit], None]


@dataclass
class ItemResult:
    id: str
    fold: int
    score: float
    suspicion_mean: float
    regions: list[dict[str, Any]]  # Region.summary(), highest score first
    shape: tuple[int, ...]  # of the probabilities, C x H x W
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. cleanlab columns


def valid_of(sample: Sample) -> np.ndarray:
    return sample.get("valid", np.ones(sample["mask"].shape, bool))


def load_item(adapter: Adapter, item: Item, oof_dir: Path) -> tuple[Sample, np.ndarray]:
    """The item's sample (mask checked against its image) and its stored probabilities."""
    sample = adapter.load(item)
    check_sample(sample, item)
    probs = load_probs(oof_path(oof_dir, item["id"]))
    check_inputs(probs, sample["mask"], valid_of(sample), f"item {item['id']} (stale probabilities in {oof_dir}?)")
    return sample, probs


def score_items(adapter: Adapter, items: list[Item], oof_dir: Path, params: AuditParams,
                folds: Optional[dict[str, int]] = None, visit: Optional[Visit] = None) -> list[ItemResult]:
    """One ``ItemResult`` per item, in ranked order (most suspicious first). ``visit`` sees each
    item's full-size audit (maps included) before it is dropped: benchmarks and suggestions use it."""
    results = []
    for item in items:
        sample, probs = load_item(adapter, item, oof_dir)
        audit = audit_image(probs, sample["mask"], valid_of(sample), params)
        if visit is not None:
            visit(item, sample, probs, audit)
        results.append(ItemResult(str(item["id"]), (folds or {}).get(str(item["id"]), -1), audit.score,
                                  audit.suspicion_mean, [r.summary() for r in audit.regions], probs.shape))
    order = ranking([r.score for r in results], [r.suspicion_mean for r in results], [r.id for r in results])
    return [results[i] for i in order]


def add_cleanlab(results: list[ItemResult], adapter: Adapter, items: list[Item], oof_dir: Path, scratch: Path) -> list[np.ndarray]:
    """Add cleanlab's softmin image score (lower = more likely mislabeled) and the share of valid
    pixels its ``find_label_issues`` flags to ``results[i].extra``; returns those issue maps."""
    from .cleanlab_scores import pixel_issues, softmin_scores

    by_id = {str(it["id"]): it for it in items}
    valid_pixels: dict[int, np.ndarray] = {}

    def load(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample, probs = load_item(adapter, by_id[results[i].id], oof_dir)
        valid_pixels[i] = valid_of(sample)
        return probs, sample["mask"], valid_pixels[i]

    softmin = softmin_scores(load, len(results))
    issues = pixel_issues(load, [r.shape for r in results], scratch)
    for i, r in enumerate(results):
        valid = valid_pixels[i]
        r.extra["cleanlab_softmin"] = softmin[i]
        r.extra["cleanlab_issue_share"] = float(issues[i][valid].mean()) if valid.any() else 0.0
    return issues
