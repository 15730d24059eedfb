"""Grouped, seeded K-fold assignment of the audit and its errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from segssl.audit.folds import make_folds
from segssl.audit.oof import plan_folds
from segssl.errors import ConfigError, DataError


def pool(n: int, groups: int = 0) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"id": f"img{i:02d}"} for i in range(n)]
    for i, item in enumerate(items):
        if groups:
            item["group"] = f"g{i % groups}"
    return items


def ids(fold: list[dict[str, Any]]) -> list[str]:
    return [it["id"] for it in fold]


@pytest.mark.parametrize("seed", range(4))
def test_groups_stay_together_and_every_item_is_held_out_once(seed: int) -> None:
    items = pool(23, groups=7)  # group sizes 4,4,3,3,3,3,3
    folds = make_folds(items, 3, seed)
    assert sorted(i for fold in folds for i in ids(fold)) == ids(items)
    owner = {}
    for index, fold in enumerate(folds):
        for item in fold:
            assert owner.setdefault(item["group"], index) == index  # no group in two folds
        assert ids(fold) == sorted(ids(fold))  # input order kept
    sizes = sorted(len(f) for f in folds)
    assert sizes[-1] - sizes[0] <= 4  # at most one group apart


def test_ungrouped_items_balance_exactly_and_follow_the_seed() -> None:
    folds = make_folds(pool(10), 3, seed=0)
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert [ids(f) for f in make_folds(pool(10), 3, seed=0)] == [ids(f) for f in folds]
    assert len({tuple(ids(make_folds(pool(10), 3, seed=s)[0])) for s in range(6)}) > 1


@pytest.mark.parametrize("k, n, error, message", [
    (1, 10, ConfigError, "at least 2"),
    (0, 10, ConfigError, "at least 2"),
    (11, 10, ConfigError, "larger than the labeled set"),
])
def test_bad_k(k: int, n: int, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make_folds(pool(n), k, 0)


def test_fewer_groups_than_folds_names_the_empty_fold() -> None:
    with pytest.raises(DataError, match=r"fold 3 of 4 gets no labeled items.*only 3 groups.*--folds 3"):
        make_folds(pool(9, groups=3), 4, 0)


def test_work_dir_with_other_folds_is_refused(tmp_path: Path) -> None:
    plan_folds(tmp_path, pool(8), 2, seed=0)
    assert plan_folds(tmp_path, pool(8), 2, seed=0)  # same plan: fine (resume)
    with pytest.raises(ConfigError, match="other folds"):
        plan_folds(tmp_path, pool(8), 2, seed=1)
