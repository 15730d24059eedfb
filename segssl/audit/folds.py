"""Seeded, grouped K-fold assignment of the labeled items.

Items sharing a ``group`` (patient, scene, sequence: see the adapter contract) always land in
the same fold, for the reason ``splits.draw_labeled`` draws whole groups: near-duplicate frames
on both sides would let a model "predict" a held-out mask it has effectively seen.
"""
from __future__ import annotations

import random
from typing import Any

from ..errors import ConfigError, DataError

Item = dict[str, Any]  # as in data.adapters.base; not imported so the CLI checks --folds before loading adapters


def check_k(k: int) -> None:
    if k < 2:
        raise ConfigError(f"--folds must be at least 2 (one fold is held out while the others train), got {k}")


def group_key(item: Item) -> str:
    return str(item.get("group", item["id"]))


def make_folds(items: list[Item], k: int, seed: int) -> list[list[Item]]:
    """Split ``items`` into ``k`` folds of whole groups with near-equal item counts.

    Groups are shuffled with ``seed``, then placed largest first into the fold holding the
    fewest items (ties: the lower fold index), so fold sizes differ by at most one group.
    Each fold keeps the items in their input order.
    """
    check_k(k)
    if k > len(items):
        raise ConfigError(f"--folds {k} is larger than the labeled set ({len(items)} items)")
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(group_key(item), []).append(item)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda key: -len(groups[key]))  # stable: equal sizes keep the shuffled order
    folds: list[list[Item]] = [[] for _ in range(k)]
    for key in keys:
        smallest = min(range(k), key=lambda i: len(folds[i]))
        folds[smallest].extend(groups[key])
    for index, fold in enumerate(folds):
        if not fold:
            raise DataError(
                f"fold {index} of {k} gets no labeled items: the {len(items)} labeled items form only "
                f"{len(groups)} groups (items sharing a 'group' stay together); use --folds {len(groups)} or fewer"
            )
    order = {id(item): i for i, item in enumerate(items)}
    return [sorted(fold, key=lambda item: order[id(item)]) for fold in folds]
