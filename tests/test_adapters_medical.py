"""NIfTI adapter (Decathlon and ACDC layouts) on small volumes written with nibabel; 16-bit TIFF
microscopy through the folder adapter; the ISBI EM config on the real data when present."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from segssl.config import load_config
from segssl.data.adapters import build_adapter
from segssl.errors import ConfigError, DataError

nib = pytest.importorskip("nibabel", reason="nibabel is a dependency of the nifti adapter")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parents[1] / "../shared/data"
SHAPE = (12, 10, 6)  # x, y, z: six axial slices


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def ct_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 3:7, 2] = 1  # foreground in slices 2 and 3 only: 0, 1, 4, 5 are empty
    label[4:8, 2:5, 3] = 2
    return image, label


@pytest.fixture()
def decathlon(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    training = []
    for i in range(4):
        image, label = ct_case(rng)
        save(tmp_path / "imagesTr" / f"liver_{i}.nii.gz", image)
        save(tmp_path / "labelsTr" / f"liver_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    save(tmp_path / "imagesTs" / "liver_9.nii.gz", ct_case(rng)[0])
    meta = {"name": "toy", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"},
            "training": training, "test": ["./imagesTs/liver_9.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path


def test_decathlon_ct_window_items_and_groups(decathlon: Path) -> None:
    adapter = build_adapter("nifti", str(decathlon), {"intensity": "ct", "window": [-100, 400], "val": 1})
    assert (adapter.num_classes, adapter.in_channels) == (3, 1)
    assert adapter.class_names == ["background", "liver", "tumour"]
    assert set(adapter.splits()) == {"train", "val", "unlabeled"}
    train, val = adapter.items("train"), adapter.items("val")
    assert len(train) == 3 * 6 and len(val) == 6 and len(adapter.items("unlabeled")) == 6
    assert not {it["group"] for it in train} & {it["group"] for it in val}  # a patient on one side only
    assert adapter.items("unlabeled")[0]["mask"] is None
    item = train[2]
    sample = adapter.load(item)
    assert sample["image"].shape == (12, 10, 1) and sample["image"].dtype == np.float32
    raw = np.asarray(nib.load(item["image"]).dataobj)[:, :, 2].astype(np.float32)
    np.testing.assert_allclose(sample["image"][:, :, 0], np.clip((raw + 100) / 500, 0, 1), atol=1e-6)
    assert sample["mask"].dtype == np.int64 and set(np.unique(sample["mask"])) == {0, 1}
    assert sample["valid"].all()


def test_zscore_percentile_and_empty_slices(decathlon: Path) -> None:
    z = build_adapter("nifti", str(decathlon), {"intensity": "zscore"})
    items = [it for it in z.items("train") if it["group"] == "liver_0"]
    volume = np.stack([z.load(it)["image"][:, :, 0] for it in items])
    assert abs(volume.mean()) < 1e-4 and abs(volume.std() - 1) < 1e-3  # per-volume z-score
    p = build_adapter("nifti", str(decathlon), {"intensity": "percentile", "percentiles": [5, 95]})
    image = p.load(p.items("train")[0])["image"]
    assert image.min() >= 0 and image.max() <= 1
    kept = build_adapter("nifti", str(decathlon), {"keep_empty": 0.0, "val": 1})
    assert sorted({it["slice"] for it in kept.items("train")}) == [2, 3]  # empty slices dropped
    assert len(kept.items("val")) == 6  # ...in the train split only: evaluation keeps every slice
    half = build_adapter("nifti", str(decathlon), {"keep_empty": 0.5})
    assert len(half.items("train")) == 4 * (2 + 2)


def test_volume_lru_and_pickling(decathlon: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = build_adapter("nifti", str(decathlon), {"cache_volumes": 2})
    items = [it for it in adapter.items("train") if it["group"] == "liver_1"]
    calls = []
    real = nib.load
    monkeypatch.setattr(nib, "load", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    for it in items:
        adapter.load(it)
    assert len(calls) == 2  # the image and its label volume, once each for six slices
    clone = pickle.loads(pickle.dumps(adapter))
    assert len(clone._volumes_cache._data) == 0 and len(adapter._volumes_cache._data) == 2


def test_orientation_multimodal_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(8, 6, 4, 2)).astype(np.float32)  # two MR modalities, channels last
    flipped = np.eye(4)
    flipped[0, 0] = -1  # same anatomy stored left-right mirrored: reoriented back on load
    save(tmp_path / "a.nii.gz", data)
    save(tmp_path / "b.nii.gz", data[::-1].copy(), flipped)
    label = np.zeros((8, 6, 4), np.uint8)
    label[0, 0, :] = 3  # class 3 of 2
    save(tmp_path / "la.nii.gz", label)
    save(tmp_path / "lb.nii.gz", label[::-1].copy(), flipped)
    meta = {"modality": {"0": "T1", "1": "T2"}, "labels": {"0": "bg", "1": "fg"},
            "training": [{"image": "a.nii.gz", "label": "la.nii.gz"}, {"image": "b.nii.gz", "label": "lb.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    adapter = build_adapter("nifti", str(tmp_path), {"intensity": "percentile", "axis": 2})
    assert adapter.in_channels == 2
    a, b = (adapter.items("train")[i] for i in (1, 5))
    assert a["slice"] == b["slice"] == 1
    with pytest.raises(DataError, match="la.nii.gz"):
        adapter.load(a)  # the label 3 is outside the two declared classes
    ok = build_adapter("nifti", str(tmp_path), {"intensity": "percentile", "ignore_values": [3]})
    sa, sb = ok.load(ok.items("train")[1]), ok.load(ok.items("train")[5])
    assert sa["image"].shape == (8, 6, 2)
    np.testing.assert_allclose(sa["image"], sb["image"], atol=1e-6)
    assert not sa["valid"][0, 0] and not sb["valid"][0, 0] and sa["valid"].sum() == 8 * 6 - 1
    with pytest.raises(ConfigError, match="window"):
        build_adapter("nifti", str(tmp_path), {"intensity": "ct"})
    with pytest.raises(ConfigError, match="data.params.nope"):
        build_adapter("nifti", str(tmp_path), {"nope": 1})


def test_acdc_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for folder, patients in (("training", (1, 2, 3)), ("testing", (101,))):
        for p in patients:
            for frame in (1, 12):
                base = tmp_path / folder / f"patient{p:03d}" / f"patient{p:03d}_frame{frame:02d}"
                save(Path(f"{base}.nii.gz"), rng.normal(100, 30, (10, 9, 3)).astype(np.float32))
                save(Path(f"{base}_gt.nii.gz"), rng.integers(0, 4, (10, 9, 3)).astype(np.uint8))
            save(tmp_path / folder / f"patient{p:03d}" / f"patient{p:03d}_4d.nii.gz", np.zeros((10, 9, 3, 5), np.float32))
    adapter = build_adapter("nifti", str(tmp_path), {"layout": "acdc", "val": 2, "seed": 0})
    assert adapter.num_classes == 4 and adapter.class_names[3] == "left_ventricle"
    assert set(adapter.splits()) == {"train", "val", "test"}
    val_groups = {it["group"] for it in adapter.items("val")}
    assert len(adapter.items("val")) == 2 * 3 and len(val_groups) == 1  # 2 volumes: both frames of one patient
    assert all(it["mask"].endswith(it["id"].rsplit("_s", 1)[0] + "_gt.nii.gz") for it in adapter.items("val"))
    assert val_groups.isdisjoint({it["group"] for it in adapter.items("train")})
    assert not any("_4d" in it["id"] for s in adapter.splits() for it in adapter.items(s))
    sample = adapter.load(adapter.items("test")[0])
    assert sample["image"].shape == (10, 9, 1) and sample["mask"].max() <= 3
    listed = tmp_path / "val.txt"
    listed.write_text("patient003\n")
    fixed = build_adapter("nifti", str(tmp_path), {"layout": "acdc", "val_list": str(listed)})
    assert {it["group"] for it in fixed.items("val")} == {"patient003"}


def test_16bit_tiff_microscopy_through_folder_adapter(tmp_path: Path) -> None:
    image = (np.arange(20 * 16).reshape(20, 16) * 200).astype(np.uint16)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    assert cv2.imwrite(str(tmp_path / "img" / "s0.tif"), image)
    assert cv2.imwrite(str(tmp_path / "lbl" / "s0.png"), np.where(image > 30000, 255, 0).astype(np.uint8))
    adapter = build_adapter("folder", str(tmp_path), {"num_classes": 2, "in_channels": 1, "value_map": {0: 0, 255: 1},
                                                      "splits": {"train": {"images": "img", "masks": "lbl"}}})
    sample = adapter.load(adapter.items("train")[0])
    assert sample["image"].dtype == np.uint16 and sample["image"].shape == (20, 16, 1)
    assert sample["image"].max() == image.max() and sample["mask"].sum() == (image > 30000).sum()


@pytest.mark.skipif(not (DATA / "isbi-em").is_dir(), reason="shared ISBI EM data not present")
def test_isbi_config_on_real_data() -> None:
    cfg = load_config(REPO / "configs" / "isbi_supervised.yaml")
    adapter = build_adapter(cfg.data.adapter, str(REPO / cfg.data.root), cfg.data.params)
    train, val = adapter.items("train"), adapter.items("val")
    assert [it["id"] for it in train] == [str(i) for i in range(20)]
    assert [it["id"] for it in val] == [str(i) for i in range(20, 30)]
    assert len(adapter.items("unlabeled")) == 30 and adapter.items("unlabeled")[0]["mask"] is None
    sample = adapter.load(val[0])
    assert sample["image"].shape == (512, 512, 1) and sample["image"].dtype == np.uint8
    assert set(np.unique(sample["mask"])) == {0, 1} and sample["valid"].all()
    assert 0.1 < (sample["mask"] == 0).mean() < 0.4  # membranes are the minority class
