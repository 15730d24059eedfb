"""NIfTI volumes (CT, MR) sliced into 2D items, registered as ``nifti``.

Layouts (``layout``):

* ``decathlon``: Medical Segmentation Decathlon, ``dataset.json`` with ``training`` pairs
  (split ``train``) and ``test`` images (split ``unlabeled``: MSD withholds their labels).
  Class count/names and input channels (``modality``) come from the file unless given.
* ``acdc``: ``<folder>/patientXXX/patientXXX_frameYY.nii.gz`` + ``..._gt.nii.gz``; ``folders``
  maps split names to folders (default ``{train: training, test: testing}``); ``*_4d`` files
  are skipped.

Neither ships a validation split: ``val`` (fraction or count of training volumes, drawn by
patient with ``seed``) or ``val_list`` (file of volume or patient ids) holds one out.
Every slice along ``axis`` (after reorienting to RAS+, so axis 2 is axial for CT) is one item
carrying ``group`` = volume/patient id, so the labeled draw and the ``val`` hold-out never split
a patient. Intensity (``intensity``), computed per volume and applied per slice:

* ``ct``: clip to ``window: [lo, hi]`` HU, scale to [0, 1];
* ``percentile``: clip to the volume's ``percentiles`` (default 0.5/99.5), scale to [0, 1];
* ``zscore``: (x - mean) / std of the volume (of its non-zero voxels with ``zscore_nonzero``).
  The output is unbounded, centred on 0 with unit variance; the views leave float images
  unscaled and then apply ``data.mean``/``data.std``, so set ``mean: [0]`` and ``std: [1]``
  with z-score (ct/percentile: e.g. ``mean: [0.5]``, ``std: [0.25]``).

Reorientation, intensity and slicing are ``segssl.data.preprocess.VolumePreprocess``, recorded
in the run's meta: ``tools/infer.py`` applies the very same steps to new volumes and writes its
masks back on each input's own voxel grid.

Images are float32 H x W x C (C = 1, or the modalities of 4D MSD volumes). Loaded volumes sit
in a small LRU per DataLoader worker (``cache_volumes``), so consecutive slices of a volume
cost one decompression; with shuffled training over many volumes, prefer ``data.cache: true``
or uncompressed ``.nii`` files.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ...errors import ConfigError, DataError
from ..preprocess import Stats, VolumePreprocess, open_nifti, read_nifti, volume_slice
from .base import ADAPTERS, Adapter, Item, LRUCache, Sample, check_class_names, finalize_mask

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ACDC_CLASSES = ["background", "right_ventricle", "myocardium", "left_ventricle"]


def nifti_stem(path: Union[str, Path]) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@ADAPTERS.register("nifti")
class NiftiAdapter(Adapter):
    def __init__(
        self,
        root: Optional[str],
        layout: str = "decathlon",
        num_classes: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
        axis: int = 2,
        intensity: str = "zscore",
        window: Optional[Sequence[float]] = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        zscore_nonzero: bool = False,
        value_map: Optional[dict[int, int]] = None,
        ignore_values: Sequence[int] = (),
        val: Union[float, int, None] = None,
        val_list: Optional[str] = None,
        seed: int = 0,
        keep_empty: float = 1.0,
        empty_splits: Sequence[str] = ("train",),
        cache_volumes: int = 4,
        canonical: bool = True,
        dataset_json: str = "dataset.json",
        folders: Optional[dict[str, str]] = None,
    ) -> None:
        import nibabel  # noqa: F401  (fail at build time, not in a worker)

        self.root = Path(root or ".")
        if not self.root.is_dir():
            raise DataError(f"data root folder not found: {self.root}")
        # the intensity/orientation steps live in one object shared with tools/infer.py
        self.prep = VolumePreprocess(intensity=intensity, window=tuple(window) if window is not None else None,
                                     percentiles=tuple(percentiles), zscore_nonzero=zscore_nonzero,
                                     canonical=canonical, axis=axis)
        if not 0.0 <= keep_empty <= 1.0:
            raise ConfigError(f"data.params.keep_empty must be in [0, 1], got {keep_empty}")
        self.axis = axis
        self.value_map = {int(k): int(v) for k, v in (value_map or {}).items()}
        self.ignore_values = [int(v) for v in ignore_values]
        self.ignore_index = self.ignore_values[0] if self.ignore_values else None
        self.keep_empty, self.empty_splits, self.seed = keep_empty, list(empty_splits), seed
        self._volumes_cache = LRUCache(cache_volumes)
        self._stats_cache: dict[str, Stats] = {}
        self.in_channels = 1
        if layout == "decathlon":
            volumes, names = self._decathlon(dataset_json)
        elif layout == "acdc":
            volumes, names = self._acdc(folders or {"train": "training", "test": "testing"}), ACDC_CLASSES
        else:
            raise ConfigError(f"data.params.layout must be decathlon or acdc, got '{layout}'")
        if num_classes is None:
            if names is None:
                raise ConfigError("data.params.num_classes is required (no class list found in the layout)")
            num_classes = len(names)
        self.num_classes = int(num_classes)
        if class_names is None and names is not None and len(names) == self.num_classes:
            class_names = names
        self.class_names = check_class_names(class_names, self.num_classes)
        self._volumes = self._hold_out(volumes, val, val_list)
        self._items: dict[str, list[Item]] = {}

    # ------------------------------------------------------------------ layouts
    def _decathlon(self, name: str) -> tuple[dict[str, list[Item]], Optional[list[str]]]:
        path = self.root / name
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read Decathlon file {path}: {exc}") from None
        modality = meta.get("modality") or {"0": "image"}
        self.in_channels = len(modality)
        labels = meta.get("labels")
        names = [str(labels[k]) for k in sorted(labels, key=int)] if isinstance(labels, dict) else None

        def record(image: str, mask: Optional[str]) -> Item:
            case = nifti_stem(image)
            return {"id": case, "group": case, "image": str(self.root / image),
                    "mask": str(self.root / mask) if mask else None}

        try:
            train = [record(e["image"], e["label"]) for e in meta.get("training", [])]
            test = [record(e if isinstance(e, str) else e["image"], None) for e in meta.get("test", [])]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed 'training'/'test' entry ({exc})") from None
        if not train:
            raise DataError(f"{path} lists no 'training' volumes")
        volumes = {"train": train}
        if test:
            volumes["unlabeled"] = test
        return volumes, names

    def _acdc(self, folders: dict[str, str]) -> dict[str, list[Item]]:
        volumes: dict[str, list[Item]] = {}
        for split, folder in folders.items():
            base = self.root / folder
            if not base.is_dir():
                raise DataError(f"ACDC folder of split '{split}' not found: {base}")
            records = []
            for patient in sorted(p for p in base.iterdir() if p.is_dir()):
                for image in sorted(patient.iterdir()):
                    stem = nifti_stem(image)
                    if not image.name.endswith(NIFTI_SUFFIXES) or stem.endswith(("_gt", "_4d")):
                        continue
                    gt = [image.parent / f"{stem}_gt{s}" for s in NIFTI_SUFFIXES]
                    mask = next((str(p) for p in gt if p.is_file()), None)
                    records.append({"id": stem, "group": patient.name, "image": str(image), "mask": mask})
            if not records:
                raise DataError(f"no patientXXX/*.nii(.gz) volumes in {base}")
            unlabeled = [r["id"] for r in records if r["mask"] is None]
            if unlabeled and len(unlabeled) < len(records):
                raise DataError(f"split '{split}' ({base}): volumes without a *_gt file: {unlabeled[:5]}")
            volumes[split] = records
        return volumes

    def _hold_out(self, volumes: dict[str, list[Item]], val: Union[float, int, None], val_list: Optional[str]) -> dict[str, list[Item]]:
        """Move whole patients from train to a ``val`` split (MSD and ACDC ship none)."""
        if val is None and val_list is None:
            return volumes
        if "val" in volumes:
            raise ConfigError("data.params.val/val_list: the layout already has a 'val' split")
        from ..splits import draw_labeled  # grouped, seeded draw; imported late (splits imports adapters)

        train = volumes["train"]
        if val_list is not None:
            path = Path(val_list)
            if not path.is_file():
                raise ConfigError(f"data.params.val_list: file not found: {path}")
            wanted = {line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
            held = [v for v in train if v["id"] in wanted or v["group"] in wanted]
            if not held:
                raise DataError(f"val list {path} names none of the training volumes or patients")
            rest = [v for v in train if v not in held]
        else:
            held, rest = draw_labeled(train, val, self.seed)
        return {**volumes, "train": rest, "val": held}

    # ------------------------------------------------------------------ items
    def splits(self) -> list[str]:
        return list(self._volumes)

    def items(self, split: str) -> list[Item]:
        if split not in self._volumes:
            raise self._unknown_split(split)
        if split not in self._items:
            items: list[Item] = []
            for volume in self._volumes[split]:
                items.extend(self._slices(volume, split))
            self._items[split] = items
        return self._items[split]

    def _slices(self, volume: Item, split: str) -> list[Item]:
        shape = self._canonical_shape(volume["image"])
        indices = list(range(shape[self.axis]))
        if self.keep_empty < 1.0 and split in self.empty_splits and volume["mask"] is not None:
            labels = self._volume(volume["mask"], label=True)
            other = tuple(a for a in range(3) if a != self.axis)
            background = [k for k, v in self.value_map.items() if v == 0] if self.value_map else [0]
            has_fg = (~np.isin(labels, background + self.ignore_values)).any(axis=other)
            empty = [i for i in indices if not has_fg[i]]
            rng = random.Random(f"{self.seed}:{volume['id']}")  # stable per volume, independent of order
            keep = set(rng.sample(empty, round(self.keep_empty * len(empty))))
            indices = [i for i in indices if has_fg[i] or i in keep]
        return [{**volume, "id": f"{volume['id']}_s{i:03d}", "slice": i} for i in indices]

    def _canonical_shape(self, path: str) -> tuple[int, ...]:
        img = open_nifti(path)
        if len(img.shape) not in (3, 4):
            raise DataError(f"volume {path} has shape {tuple(img.shape)}; expected 3D or 4D (channels last)")
        return self.prep.model_shape(img.shape, img.affine)

    # ------------------------------------------------------------------ loading
    def _volume(self, path: str, label: bool = False) -> np.ndarray:
        def read() -> np.ndarray:
            data, img = read_nifti(path)
            data = self.prep.to_model(data, img.affine)
            if label and data.dtype.kind == "f":  # labels saved as float (or with a scale factor)
                rounded = np.rint(data)
                if not np.allclose(rounded, data, atol=1e-3):
                    raise DataError(f"label volume {path} holds non-integer values")
                return rounded.astype(np.int64)
            return data

        return self._volumes_cache.get((path, label), read)

    def _stats(self, path: str, volume: np.ndarray) -> Stats:
        if path not in self._stats_cache:  # a few floats per volume: kept for every volume seen
            self._stats_cache[path] = self.prep.stats(volume)
        return self._stats_cache[path]

    def load(self, item: Item) -> Sample:
        volume = self._volume(item["image"])
        stats = self._stats(item["image"], volume)
        index = item["slice"]
        if not 0 <= index < volume.shape[self.axis]:
            raise DataError(f"slice {index} out of range for {item['image']} (shape {volume.shape})")
        image = volume_slice(volume, index, self.axis)
        if image.shape[2] != self.in_channels:
            raise DataError(f"volume {item['image']} has {image.shape[2]} channels, the dataset declares {self.in_channels}")
        image = self.prep.normalise(image, stats)
        sample: Sample = {"id": item["id"], "image": image}
        if item.get("mask") is not None:
            labels = self._volume(item["mask"], label=True)
            if labels.shape[:3] != volume.shape[:3]:
                raise DataError(f"label volume {item['mask']} has shape {labels.shape}, its image {volume.shape}")
            raw = np.take(labels, index, axis=self.axis)
            source = f"{item['mask']} (slice {index})"
            sample["mask"], sample["valid"] = finalize_mask(raw, self.num_classes, source, self.value_map, self.ignore_values, image.shape[:2])
        return sample

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preprocess": self.prep.record()}
