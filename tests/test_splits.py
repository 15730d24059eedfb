"""segssl.data.splits: seeded, grouped labeled draws and the split assembly from an adapter."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from segssl.config import SplitConfig
from segssl.data.adapters.demo import DemoAdapter
from segssl.data.splits import draw_labeled, make_splits
from segssl.errors import ConfigError, DataError


def pool(n: int = 20, groups: int = 0) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"id": f"img{i:02d}"} for i in range(n)]
    if groups:
        for i, it in enumerate(items):
            it["group"] = f"patient{i % groups}"
    return items


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [it["id"] for it in items]


def test_none_labels_everything() -> None:
    items = pool(5)
    labeled, rest = draw_labeled(items, None, seed=0)
    assert ids(labeled) == ids(items) and rest == []


@pytest.mark.parametrize(("labeled", "expected"), [(0.25, 5), (0.125, 2), (1.0, 20), (0.01, 1), (7, 7), (20, 20)])
def test_fraction_and_count_sizes(labeled: float | int, expected: int) -> None:
    # 0.25 * 20 = 5; 0.125 * 20 = 2.5 -> round-half-even 2; 0.01 * 20 = 0.2 -> at least 1
    chosen, rest = draw_labeled(pool(20), labeled, seed=0)
    assert len(chosen) == expected and len(rest) == 20 - expected
    assert sorted(ids(chosen) + ids(rest)) == ids(pool(20))  # a partition, nothing duplicated


@pytest.mark.parametrize("labeled", [0.25, 6])
def test_draw_is_reproducible_per_seed_and_differs_across_seeds(labeled: float | int) -> None:
    first = ids(draw_labeled(pool(20), labeled, seed=0)[0])
    assert ids(draw_labeled(pool(20), labeled, seed=0)[0]) == first
    draws = {tuple(ids(draw_labeled(pool(20), labeled, seed=s)[0])) for s in range(5)}
    assert len(draws) >= 4  # C(20, 5) = 15504 subsets: seeds practically never collide


def test_outputs_keep_input_order() -> None:
    items = pool(20)
    labeled, rest = draw_labeled(items, 8, seed=3)
    order = ids(items)
    assert ids(labeled) == sorted(ids(labeled), key=order.index)
    assert ids(rest) == sorted(ids(rest), key=order.index)
    assert all(any(it is orig for orig in items) for it in labeled)  # the same dicts, not copies


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("labeled", [3, 0.3, 1])
def test_groups_never_straddle(seed: int, labeled: float | int) -> None:
    items = pool(20, groups=5)  # 5 patients x 4 images
    chosen, rest = draw_labeled(items, labeled, seed)
    chosen_groups = {it["group"] for it in chosen}
    rest_groups = {it["group"] for it in rest}
    assert chosen_groups.isdisjoint(rest_groups)
    assert len(chosen) == 4 * len(chosen_groups) and len(rest) == 4 * len(rest_groups)
    # whole groups until the target is reached (3 -> 1 group, 0.3*20=6 -> 2 groups, 1 -> 1 group)
    assert len(chosen) == {3: 4, 0.3: 8, 1: 4}[labeled]


def test_grouped_draw_far_over_target_warns(caplog: pytest.LogCaptureFixture) -> None:
    items = [{"id": f"a{i}", "group": "a"} for i in range(12)] + [{"id": f"b{i}", "group": "b"} for i in range(8)]
    with caplog.at_level("WARNING", logger="segssl.data.splits"):
        chosen, _ = draw_labeled(items, 0.1, seed=0)  # 2 items asked, one whole group given
    n = len(chosen)
    assert n in (8, 12)
    assert f"asks for 2 of 20 items, but whole groups gave {n} (1 group(s), the largest of {n} items)" in caplog.text
    assert f"labeled share is {5 * n}%, not 10%" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="segssl.data.splits"):
        draw_labeled(pool(20, groups=5), 3, seed=0)  # 4 for 3: within 1.5x, silent
    assert not caplog.text


def test_count_larger_than_pool_is_config_error() -> None:
    with pytest.raises(ConfigError, match="21 labeled items.*has 20"):
        draw_labeled(pool(20), 21, seed=0)


def test_list_file_selects_ids_independent_of_seed(tmp_path: Path) -> None:
    listing = tmp_path / "labeled.txt"
    listing.write_text("img03\n# a comment\n\nimg10.png img10_mask.png\nimg01\n")
    for seed in (0, 1, 2):
        labeled, rest = draw_labeled(pool(12), str(listing), seed)
        assert ids(labeled) == ["img01", "img03", "img10"]  # pool order, not file order
        assert len(rest) == 9 and "img03" not in ids(rest)


def test_list_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="list file not found"):
        draw_labeled(pool(4), str(tmp_path / "absent.txt"), 0)
    listing = tmp_path / "labeled.txt"
    listing.write_text("img01\nimg99\n")
    with pytest.raises(DataError, match="img99"):
        draw_labeled(pool(4), str(listing), 0)


def test_list_file_with_dotted_ids(tmp_path: Path) -> None:
    items = [{"id": "case.001"}, {"id": "case.002"}]
    listing = tmp_path / "labeled.txt"
    listing.write_text("case.001\n")
    labeled, rest = draw_labeled(items, str(listing), 0)
    assert ids(labeled) == ["case.001"] and ids(rest) == ["case.002"]


def demo(**kw: Any) -> DemoAdapter:
    return DemoAdapter(None, size=16, **{"train": 10, "val": 3, "test": 2, **kw})


def test_make_splits_rest_unlabeled_val_test() -> None:
    splits = make_splits(demo(), SplitConfig(labeled=4, seed=1, val="val", test="test"))
    assert splits.counts() == {"labeled": 4, "unlabeled": 6, "val": 3, "test": 2}
    assert set(ids(splits.labeled)).isdisjoint(ids(splits.unlabeled))
    assert sorted(ids(splits.labeled) + ids(splits.unlabeled)) == [f"train_{i:04d}" for i in range(10)]
    assert ids(splits.val) == ["val_0000", "val_0001", "val_0002"]
    assert ids(splits.test) == ["test_0000", "test_0001"]
    again = make_splits(demo(), SplitConfig(labeled=4, seed=1, val="val", test="test"))
    assert ids(again.labeled) == ids(splits.labeled)


def test_make_splits_without_rest_unlabeled_and_extra_split() -> None:
    cfg = SplitConfig(labeled=0.5, rest_unlabeled=False, val="val", test=None)
    assert make_splits(demo(), cfg).counts() == {"labeled": 5, "unlabeled": 0, "val": 3, "test": 0}
    cfg = SplitConfig(labeled=0.5, rest_unlabeled=True, unlabeled=["unlabeled"], val=None)
    splits = make_splits(demo(unlabeled=7), cfg)
    assert splits.counts() == {"labeled": 5, "unlabeled": 12, "val": 0, "test": 0}
    assert sum(i.startswith("unlabeled_") for i in ids(splits.unlabeled)) == 7


def test_make_splits_all_labeled_by_default() -> None:
    splits = make_splits(demo(), SplitConfig())
    assert splits.counts() == {"labeled": 10, "unlabeled": 0, "val": 3, "test": 0}


def test_make_splits_rejects_maskless_training_pool() -> None:
    with pytest.raises(DataError, match="without masks"):
        make_splits(demo(unlabeled=3), SplitConfig(train="unlabeled", val=None))
