"""The dataset-adapter contract.

An adapter turns files on disk into a list of *items* (plain dicts of paths and metadata, as
MONAI's ``Dataset(data=list_of_dicts)``) and loads one item into a *sample*:

* ``image``: H x W x C numpy array (uint8, uint16 or float32), never augmented;
* ``mask``: H x W int64 class indices (labeled items only);
* ``valid``: H x W bool, False where the mask says "don't care" (no sentinel values leak out);
* ``id``: str.

Items carry ``id`` and optionally ``group`` (patient, scene, sequence) so that splits never
put one group on both sides. A user's own adapter subclasses ``Adapter`` in their own module
and is named in the config as ``package.module:ClassName``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np

from ...errors import DataError
from ...registry import Registry

Item = dict[str, Any]
Sample = dict[str, Any]

ADAPTERS: Registry[type["Adapter"]] = Registry("dataset adapter")


class LRUCache:
    """A few decoded volumes or scenes per process; dropped when the adapter is pickled."""

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = make()
        if self.size:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "_data": OrderedDict()}  # workers start empty, not with a copy


class Adapter(ABC):
    """Base class of dataset adapters. Subclasses set the metadata attributes in ``__init__``."""

    num_classes: int
    class_names: list[str]
    in_channels: int
    #: raw mask value meaning "unlabelled" in the source files (reported, never used as a label)
    ignore_index: Optional[int] = None
    #: RGB colour per class for colour masks and overlays
    palette: Optional[list[tuple[int, int, int]]] = None
    #: ``"module:Class"`` or registered name; filled in by ``build_adapter``
    spec: ClassVar[str] = ""

    @abstractmethod
    def splits(self) -> list[str]:
        """Names of the splits this adapter can list (e.g. train, val, test, unlabeled)."""

    @abstractmethod
    def items(self, split: str) -> list[Item]:
        """Items of one split; each has a unique ``id`` and, if labeled, a mask reference."""

    @abstractmethod
    def load(self, item: Item) -> Sample:
        """Load one item into a sample (see module docstring)."""

    def cached_items(self, split: str, scan: Callable[[], list[Item]]) -> list[Item]:
        """``items()`` helper: reject unknown splits, scan a split's files once per adapter."""
        if split not in self.splits():
            raise self._unknown_split(split)
        cache: dict[str, list[Item]] = self.__dict__.setdefault("_items_cache", {})
        if split not in cache:
            cache[split] = scan()
        return cache[split]

    def has_mask(self, item: Item) -> bool:
        return item.get("mask") is not None

    def describe(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "in_channels": self.in_channels,
            "ignore_index": self.ignore_index,
            "palette": [list(c) for c in self.default_palette()],
        }

    def default_palette(self) -> list[tuple[int, int, int]]:
        if self.palette is not None:
            return [tuple(int(v) for v in c) for c in self.palette]  # type: ignore[misc]
        rng = np.random.default_rng(12345)  # fixed, so overlays look the same on every run
        return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(self.num_classes)]

    def _unknown_split(self, split: str) -> DataError:
        return DataError(
            f"{type(self).__name__} has no split '{split}'; available: {', '.join(self.splits())}"
        )


def check_class_names(class_names: Optional[Sequence[str]], num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names given for {num_classes} classes")
    return list(class_names)


def finalize_mask(
    raw: np.ndarray,
    num_classes: int,
    source: str,
    value_map: Optional[dict[int, int]] = None,
    ignore_values: Sequence[int] = (),
    image_shape: Optional[tuple[int, int]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a raw index mask into ``(mask int64, valid bool)``.

    ``value_map`` maps raw values to classes (e.g. 255 -> 1); when given, values it does not
    list are an error unless in ``ignore_values``. Without it raw values are class indices.
    Any value neither a class nor ignored raises a ``DataError`` naming ``source``.
    """
    if raw.ndim != 2:
        raise DataError(f"mask {source} must be single-channel, got shape {raw.shape}")
    if image_shape is not None and raw.shape != tuple(image_shape):
        raise DataError(
            f"mask {source} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is "
            f"{image_shape[1]}x{image_shape[0]}"
        )
    # compare as int64: an ignore value outside the mask's dtype (e.g. 65535 for uint8) matches nothing
    ignore = np.isin(raw.astype(np.int64), np.asarray(list(ignore_values), dtype=np.int64)) if ignore_values else np.zeros(raw.shape, bool)
    if value_map:
        mask = np.zeros(raw.shape, np.int64)
        known = ignore.copy()
        for raw_value, cls in value_map.items():
            hit = raw == raw_value
            mask[hit] = cls
            known |= hit
        if not known.all():
            bad = np.unique(raw[~known])[:10].tolist()
            raise DataError(
                f"mask {source} holds values {bad} not in the value map {dict(value_map)} "
                f"nor in ignore values {list(ignore_values)}"
            )
    else:
        mask = raw.astype(np.int64)
        bad_pixels = ~ignore & ((mask < 0) | (mask >= num_classes))
        if bad_pixels.any():
            bad = np.unique(mask[bad_pixels])[:10].tolist()
            raise DataError(
                f"mask {source} holds labels {bad} outside the {num_classes} declared classes "
                f"(0..{num_classes - 1}) and not in ignore values {list(ignore_values)}"
            )
    valid = ~ignore
    mask[~valid] = 0  # the value is irrelevant where valid is False; keep it a legal index
    return mask, valid


def palette_to_index(
    rgb: np.ndarray, palette: Sequence[Sequence[int]], source: str, ignore_colours: Sequence[Sequence[int]] = ()
) -> tuple[np.ndarray, np.ndarray, int]:
    """Map an RGB colour mask to ``(mask, valid, n_unknown_pixels)``.

    Colours in ``ignore_colours`` and colours not in the palette become invalid; the count of
    unknown-colour pixels is returned so the caller can report it.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"colour mask {source} must be RGB, got shape {rgb.shape}")
    code = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    mask = np.zeros(code.shape, np.int64)
    valid = np.zeros(code.shape, bool)
    for cls, colour in enumerate(palette):
        hit = code == ((int(colour[0]) << 16) | (int(colour[1]) << 8) | int(colour[2]))
        mask[hit] = cls
        valid |= hit
    ignored = np.zeros(code.shape, bool)
    for colour in ignore_colours:
        ignored |= code == ((int(colour[0]) << 16) | (int(colour[1]) << 8) | int(colour[2]))
    unknown = int((~valid & ~ignored).sum())
    return mask, valid, unknown


def build_adapter(name: str, root: Optional[str], params: dict[str, Any]) -> Adapter:
    """Instantiate a registered or ``module:Class`` adapter; bad params name the key."""
    import inspect

    from ...errors import ConfigError

    cls = ADAPTERS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError(f"data.adapter '{name}' is not a segssl Adapter subclass")
    signature = inspect.signature(cls.__init__)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    allowed = [p for p in signature.parameters if p not in ("self", "root")]
    if not accepts_any:
        for key in params:
            if key not in allowed:
                raise ConfigError(
                    f"unknown config key 'data.params.{key}' for adapter '{name}'; "
                    f"valid keys: {', '.join(allowed)}"
                )
    try:
        signature.bind(None, root, **params)
    except TypeError as exc:
        raise ConfigError(f"adapter '{name}': {exc} (check data.params and data.root)") from None
    return cls(root, **params)
