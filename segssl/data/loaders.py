"""Datasets and loaders: labeled and unlabeled streams (endless, DDP-sharded) and eval loaders."""
from __future__ import annotations

import logging
import random
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import DataError
from .adapters.base import Adapter, Item
from .views import ViewMaker, pad_collate

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 10  # a bad training item is replaced by another; this many failures in a row is fatal


class SegDataset(Dataset):
    """Items of one split, loaded by the adapter and rendered into views.

    With ``skip_bad`` (training streams) an unreadable or inconsistent item is reported once
    and replaced by another, so one bad file in a large folder does not stop a long run;
    evaluation sets never skip, since that would silently change the metric.
    """

    def __init__(self, adapter: Adapter, items: Sequence[Item], views: ViewMaker, skip_bad: bool = False, cache: bool = False) -> None:
        self.adapter = adapter
        self.items = list(items)
        self.views = views
        self.skip_bad = skip_bad
        self.cache: Optional[dict[int, dict[str, Any]]] = {} if cache else None
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> dict[str, Any]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        sample = self.adapter.load(self.items[index])
        if self.cache is not None:
            self.cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        failures = 0
        while True:
            try:
                return self.views(self._load(index))
            except DataError as exc:
                if not self.skip_bad:
                    raise
                failures += 1
                item_id = str(self.items[index].get("id"))
                if item_id not in self._reported:
                    self._reported.add(item_id)
                    log.warning("skipping bad item %s: %s", item_id, exc)
                if failures >= MAX_REPLACEMENTS:
                    raise DataError(f"{failures} bad items in a row, last: {exc}") from None
                index = random.randrange(len(self.items))


class EndlessShardedSampler(Sampler[int]):
    """Endless stream of shuffled epochs; rank r of w takes every w-th index of each epoch.

    The stream is a function of (seed, start), so a resumed run continues deterministically.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size < 1:
            raise DataError("cannot sample from an empty split")
        self.size, self.seed, self.rank, self.world_size, self.start = size, seed, rank, world_size, start

    def __iter__(self) -> Iterator[int]:
        epoch = 0
        while True:
            generator = torch.Generator().manual_seed(hash((self.seed, self.start, epoch)) & 0x7FFFFFFF)
            order = torch.randperm(self.size, generator=generator)
            if self.size < self.world_size:  # tiny labeled sets: every rank still gets items
                order = order.repeat(-(-self.world_size // self.size))
            yield from order[self.rank :: self.world_size].tolist()
            epoch += 1


def _worker_init(worker_id: int, base_seed: int) -> None:
    info = get_worker_info()
    seed = (base_seed + 1000 * worker_id) & 0xFFFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    if info is not None:
        info.dataset.views.reseed(seed)  # type: ignore[attr-defined]


def endless_loader(
    dataset: SegDataset, batch_size: int, seed: int, rank: int, world_size: int, start: int, workers: int
) -> Iterator[dict[str, Any]]:
    sampler = EndlessShardedSampler(len(dataset), seed, rank, world_size, start)
    base_seed = hash((seed, start, rank)) & 0x7FFFFFFF
    dataset.views.reseed(base_seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=pad_collate,
        worker_init_fn=partial(_worker_init, base_seed=base_seed),
        persistent_workers=workers > 0,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


class ShardSampler(Sampler[int]):
    """Rank r of w evaluates indices r, r+w, ...: no padding, so no item is counted twice."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_loader(
    dataset: SegDataset, batch_size: int, rank: int, world_size: int, workers: int, multiple: int = 32
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=workers,
        collate_fn=partial(pad_collate, multiple=multiple),
    )


CollateFn = Callable[[list[dict[str, Any]]], dict[str, Any]]
