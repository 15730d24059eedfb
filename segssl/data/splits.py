"""Labeled / unlabeled / val / test item lists from adapter splits and the split config.

The labeled draw is seeded and grouped: when items carry a ``group`` (patient, scene,
sequence), whole groups are drawn, so no group sits on both sides of the split.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ..config import SplitConfig
from ..errors import ConfigError, DataError
from .adapters.base import Adapter, Item
from .io import read_id_list

log = logging.getLogger(__name__)

# a grouped draw this far over its target is no longer the fraction the user asked for
OVERSHOOT_WARNING = 1.5


@dataclass
class Splits:
    labeled: list[Item]
    unlabeled: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("labeled", "unlabeled", "val", "test")}


def draw_labeled(items: list[Item], labeled: Union[float, int, str, None], seed: int) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into (labeled, rest) by fraction, count or id-list file."""
    if labeled is None:
        return list(items), []
    if isinstance(labeled, str):
        path = Path(labeled)
        if not path.is_file():
            raise ConfigError(f"data.split.labeled: list file not found: {path}")
        wanted_stems = set(read_id_list(path))
        chosen = [it for it in items if it["id"] in wanted_stems]
        found = {it["id"] for it in chosen}
        missing = sorted(wanted_stems - found)
        if missing:
            raise DataError(f"labeled list {path} names items not in the training split: {missing[:5]}")
        return chosen, [it for it in items if it["id"] not in found]
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(str(it.get("group", it["id"])), []).append(it)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    if isinstance(labeled, float):
        target = max(1, round(labeled * len(items)))
    else:
        target = labeled
    if target > len(items):
        raise ConfigError(f"data.split.labeled asks for {target} labeled items, the training split has {len(items)}")
    chosen_items: list[Item] = []
    chosen_keys = set()
    for key in keys:  # whole groups until the target count is reached
        if len(chosen_items) >= target:
            break
        chosen_items.extend(groups[key])
        chosen_keys.add(key)
    if len(chosen_items) > OVERSHOOT_WARNING * target:
        largest = max(len(groups[k]) for k in chosen_keys)
        log.warning(
            "data.split.labeled asks for %d of %d items, but whole groups gave %d (%d group(s), the "
            "largest of %d items): the labeled share is %.0f%%, not %.0f%%; use finer groups (e.g. the "
            "adapter's group option) or a list file", target, len(items), len(chosen_items), len(chosen_keys),
            largest, 100 * len(chosen_items) / len(items), 100 * target / len(items))
    rest = [it for k in keys if k not in chosen_keys for it in groups[k]]
    order = {id(it): i for i, it in enumerate(items)}
    return sorted(chosen_items, key=lambda it: order[id(it)]), sorted(rest, key=lambda it: order[id(it)])


def make_splits(adapter: Adapter, cfg: SplitConfig) -> Splits:
    pool = adapter.items(cfg.train)
    unlabeled_in_pool = [it for it in pool if not adapter.has_mask(it)]
    if unlabeled_in_pool:
        raise DataError(
            f"training split '{cfg.train}' has {len(unlabeled_in_pool)} items without masks "
            f"(e.g. {unlabeled_in_pool[0]['id']}); list unlabeled images under data.split.unlabeled"
        )
    labeled, rest = draw_labeled(pool, cfg.labeled, cfg.seed)
    if not labeled:
        raise DataError(f"no labeled items in split '{cfg.train}'")
    unlabeled = list(rest) if cfg.rest_unlabeled else []
    taken = {it["id"] for it in pool}
    for name in cfg.unlabeled:
        # ids must be unique across the training pools (methods key state by id): an extra
        # split reusing ids of the training split (ISBI: 0..29 in both) gets its split as prefix
        unlabeled.extend(it if it["id"] not in taken else {**it, "id": f"{name}__{it['id']}"} for it in adapter.items(name))
    val = adapter.items(cfg.val) if cfg.val else []
    test = adapter.items(cfg.test) if cfg.test else []
    for name, split_items in (("val", val), ("test", test)):
        missing = [it["id"] for it in split_items if not adapter.has_mask(it)]
        if missing:
            raise DataError(f"{name} split has items without masks: {missing[:5]}")
    return Splits(labeled=labeled, unlabeled=unlabeled, val=val, test=test)
