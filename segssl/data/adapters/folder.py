"""Generic folder adapter: images and masks paired by file stem, one folder pair per split.

Example (ISBI EM: 0 -> membrane, 255 -> cell)::

    data:
      adapter: folder
      root: ../shared/data/isbi-em
      params:
        num_classes: 2
        class_names: [membrane, cell]
        in_channels: 1
        value_map: {0: 0, 255: 1}
        splits:
          train: {images: train/image, masks: train/label}
          unlabeled: {images: unlabeled}        # no masks needed
          val: {images: val/image, masks: val/label, list: val.txt}

Each split is ``{images: DIR, masks: DIR (optional), list: FILE (optional, stems to keep)}``;
paths are relative to ``root``. Masks are index PNGs (``value_map`` maps raw values,
``ignore_values`` are "don't care"), or RGB colour masks when ``palette`` is given (colour i is
class i; ``ignore_colours`` and unknown colours become invalid).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from ...errors import DataError
from ..io import IMAGE_EXTENSIONS, adapt_channels, list_images, read_id_list, read_image, read_mask
from .base import ADAPTERS, Adapter, Item, Sample, check_class_names, finalize_mask, palette_to_index

log = logging.getLogger(__name__)


@ADAPTERS.register("folder")
class FolderAdapter(Adapter):
    def __init__(
        self,
        root: Optional[str],
        splits: dict[str, dict[str, str]],
        num_classes: int,
        in_channels: int = 3,
        class_names: Optional[Sequence[str]] = None,
        value_map: Optional[dict[int, int]] = None,
        ignore_values: Sequence[int] = (),
        palette: Optional[Sequence[Sequence[int]]] = None,
        ignore_colours: Sequence[Sequence[int]] = (),
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        mask_suffix: str = "",
    ) -> None:
        self.root = Path(root) if root else Path(".")
        if root is not None and not self.root.is_dir():
            raise DataError(f"data root folder not found: {self.root}")
        self.num_classes = int(num_classes)
        self.class_names = check_class_names(class_names, self.num_classes)
        self.in_channels = int(in_channels)
        self.value_map = {int(k): int(v) for k, v in (value_map or {}).items()}
        self.ignore_values = [int(v) for v in ignore_values]
        self.ignore_index = self.ignore_values[0] if self.ignore_values else None
        self.colour_palette = [tuple(int(v) for v in c) for c in palette] if palette else None
        self.palette = self.colour_palette
        self.ignore_colours = [tuple(int(v) for v in c) for c in ignore_colours]
        self.extensions = tuple(e.lower() for e in extensions)
        self.mask_suffix = mask_suffix
        for name, spec in splits.items():
            unknown = set(spec) - {"images", "masks", "list"}
            if unknown or "images" not in spec:
                raise DataError(
                    f"split '{name}' must be {{images: DIR, masks: DIR, list: FILE}}; got keys {sorted(spec)}"
                )
        self._splits = dict(splits)

    def splits(self) -> list[str]:
        return list(self._splits)

    def items(self, split: str) -> list[Item]:
        return self.cached_items(split, lambda: self._scan(split, self._splits[split]))

    def _scan(self, split: str, spec: dict[str, str]) -> list[Item]:
        images = list_images(self.root / spec["images"], self.extensions)
        if "list" in spec:
            wanted = read_id_list(self._list_path(spec["list"]))
            by_stem = {p.stem: p for p in images}
            missing = [s for s in wanted if s not in by_stem]
            if missing:
                raise DataError(f"split '{split}': list {spec['list']} names images not found: {missing[:5]}")
            images = [by_stem[s] for s in wanted]
        mask_dir = self.root / spec["masks"] if spec.get("masks") else None
        if mask_dir is not None and not mask_dir.is_dir():
            raise DataError(f"mask folder of split '{split}' not found: {mask_dir}")
        masks = {}
        if mask_dir is not None:
            for p in mask_dir.iterdir():
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    stem = p.stem[: -len(self.mask_suffix)] if self.mask_suffix and p.stem.endswith(self.mask_suffix) else p.stem
                    masks[stem] = p
        items = []
        unmatched = []
        for path in images:
            item: Item = {"id": path.stem, "image": str(path), "mask": None}
            if mask_dir is not None:
                if path.stem not in masks:
                    unmatched.append(path.name)
                    continue
                item["mask"] = str(masks[path.stem])
            items.append(item)
        if unmatched:
            # a labeled split with images lacking masks is a data error, not something to guess about
            raise DataError(
                f"split '{split}': {len(unmatched)} image(s) in {self.root / spec['images']} have no mask "
                f"with the same stem in {mask_dir}: {unmatched[:5]}"
            )
        return items

    def _list_path(self, name: str) -> Path:
        """List files may sit beside the data (relative to root) or in the project (relative to
        the working directory, e.g. split lists committed under datasets/)."""
        in_root = self.root / name
        return in_root if in_root.is_file() or not Path(name).is_file() else Path(name)

    def load(self, item: Item) -> Sample:
        image = adapt_channels(read_image(item["image"]), self.in_channels, item["image"])
        sample: Sample = {"id": item["id"], "image": image}
        if item.get("mask") is None:
            return sample
        path = item["mask"]
        if self.colour_palette is not None:
            rgb = read_mask(path, colour=True)
            if rgb.shape[:2] != image.shape[:2]:
                raise DataError(f"mask {path} is {rgb.shape[1]}x{rgb.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}")
            mask, valid, unknown = palette_to_index(rgb, self.colour_palette, path, self.ignore_colours)
            if unknown:
                log.warning("mask %s: %d pixels of unknown colours set to ignore", path, unknown)
        else:
            mask, valid = finalize_mask(
                read_mask(path), self.num_classes, path, self.value_map, self.ignore_values, image.shape[:2]
            )
        sample["mask"] = mask
        sample["valid"] = valid
        return sample
