"""Inference applies the preprocessing of the run's adapter (one implementation, in
``segssl.data.preprocess``): the model is fed exactly the arrays the adapter yields for the same
file (NIfTI: RAS+ reorientation + intensity; rasters: band selection + band statistics + scale,
whole or window by window), NIfTI masks go back on the input's voxel grid, GeoTIFF masks keep
the input's CRS and transform. Steps that cannot be reproduced are refused, naming the option.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segssl.cli.common import run_cli
from segssl.cli.infer import main as infer_main
from segssl.cli.train import main as train_main
from segssl.config import Config, to_dict
from segssl.data.adapters import build_adapter
from segssl.data.preprocess import RasterPreprocess, VolumePreprocess, from_meta
from segssl.data.views import ViewMaker
from segssl.engine.batch import BatchInference, BatchOptions, Job
from segssl.engine.inference import ImagePredictor, LoadedRun, load_run
from segssl.engine.large_raster import window_starts
from segssl.engine.outputs import OutputOptions, output_names
from segssl.engine.summary import Summary
from segssl.errors import DataError, SegsslError

from .helpers import tiny_config
from .test_infer_outputs import _image, _rows, _write_tif, nib, rasterio

needs_nibabel = pytest.mark.skipif(nib is None, reason="nibabel is not installed")
needs_rasterio = pytest.mark.skipif(rasterio is None, reason="rasterio is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # inside rasterio's from_origin

NAMES = ["background", "tissue"]
# voxel axes: 0 -> anterior, 1 -> left (R flipped), 2 -> inferior (S flipped): RAS+ is a
# transpose of the first two axes plus two flips, so a mask left in RAS+ has the wrong shape
AFFINE = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -20], [0, 0, -2.5, 30], [0, 0, 0, 1]], float)
SHAPE = (20, 24, 6)


class _Recorder(nn.Module):
    """Keeps every batch it is fed. Class 1 where the mean normalised input is above 0: a
    pointwise rule, so the mask expected for a whole file needs no network."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        score = x.mean(1, keepdim=True)
        return torch.cat([torch.zeros_like(score), score], 1)


def _recording_predictor(name: str, adapter: object, params: dict, mean: float, std: float) -> tuple[ImagePredictor, _Recorder, Config]:
    """A run as the trainer records it (meta = adapter.describe() + normalisation), stride 1 so
    the model's inputs are not padded."""
    cfg = Config()
    cfg.data.adapter, cfg.data.params, cfg.data.mean, cfg.data.std = name, params, [mean], [std]
    meta = {**adapter.describe(), "mean": cfg.data.mean, "std": cfg.data.std, "resize": None, "stride": 1}  # type: ignore[attr-defined]
    model = _Recorder().eval()
    return ImagePredictor(LoadedRun(cfg=cfg, meta=meta, model=model, step=0), torch.device("cpu")), model, cfg


def _infer(run: Path, path: Path, out: Path, *extra: str) -> int:
    """tools/infer.py on a run directory (in-process)."""
    return run_cli(infer_main, ["--run", str(run), "--input", str(path), "--output", str(out), "--device", "cpu", "--workers", "1", *extra])


def _run(predictor: ImagePredictor, path: Path, kind: str, out: Path, **options: object) -> Summary:
    summary = Summary(out, NAMES, {})
    job = Job(path, Path(path.name), kind, output_names(Path(path.name), kind, OutputOptions()))
    BatchInference(predictor, out, BatchOptions(**options), summary).run([job])  # type: ignore[arg-type]
    return summary


# ---------------------------------------------------------------------- NIfTI
def _volume(rng: np.random.Generator) -> np.ndarray:
    """Smooth float32 HU-like values, with a block of exact zeros (z-score over non-zero voxels)."""
    planes = [cv2.resize(rng.uniform(-400, 600, (4, 5)).astype(np.float32), (SHAPE[1], SHAPE[0]), interpolation=cv2.INTER_CUBIC)
              for _ in range(SHAPE[2])]
    volume = np.stack(planes, axis=2)
    volume[:3] = 0
    return volume


@pytest.fixture()
def decathlon(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "msd"

    def save(rel: str, array: np.ndarray) -> str:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(array, AFFINE)
        image.header.set_qform(AFFINE, code=1)
        image.header.set_sform(AFFINE, code=2)
        nib.save(image, str(root / rel))
        return rel

    training = []
    for i in range(3):
        volume = _volume(rng)
        training.append({"image": save(f"imagesTr/case_{i}.nii.gz", volume),
                         "label": save(f"labelsTr/case_{i}.nii.gz", (volume > 100).astype(np.uint8))})
    meta = {"modality": {"0": "CT"}, "labels": {"0": NAMES[0], "1": NAMES[1]}, "training": training,
            "test": [save("imagesTs/case_9.nii.gz", _volume(rng))]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _expected_score(raw: np.ndarray, params: dict) -> np.ndarray:
    """The recorder's score, computed independently on the file's own voxels (no reorientation:
    every intensity step is pointwise or a whole-volume statistic)."""
    if params["intensity"] == "zscore":
        sel = raw[raw != 0]
        return (raw - sel.mean()) / sel.std()  # data.mean 0, std 1
    lo, hi = params["window"] if params["intensity"] == "ct" else np.percentile(raw, params["percentiles"])
    return (np.clip((raw - lo) / (hi - lo), 0, 1) - 0.5) / 0.25  # data.mean 0.5, std 0.25


@needs_nibabel
@pytest.mark.parametrize("params", [
    {"intensity": "ct", "window": [-100, 300]},
    {"intensity": "zscore", "zscore_nonzero": True},
    {"intensity": "percentile", "percentiles": [2, 98]},
], ids=["ct", "zscore", "percentile"])
def test_nifti_model_input_equals_adapter_slices(decathlon: Path, tmp_path: Path, params: dict) -> None:
    adapter = build_adapter("nifti", str(decathlon), params)
    zscore = params["intensity"] == "zscore"
    predictor, model, cfg = _recording_predictor("nifti", adapter, params, 0.0 if zscore else 0.5, 1.0 if zscore else 0.25)
    path = decathlon / "imagesTs" / "case_9.nii.gz"
    out = tmp_path / "out"
    assert _run(predictor, path, "volume", out, axis=predictor.slice_axis, batch_size=4).counts()["ok"] == 1

    views = ViewMaker(cfg.data, 1, train=False)
    expected = torch.stack([views(adapter.load(item))["image"] for item in adapter.items("unlabeled")])
    fed = torch.cat(model.seen)
    assert fed.shape == expected.shape == (SHAPE[2], 1, SHAPE[1], SHAPE[0])  # RAS+ axial slices
    np.testing.assert_array_equal(fed.numpy(), expected.numpy())

    raw = np.asarray(nib.load(path).dataobj)
    result = nib.load(out / "case_9.nii.gz")
    assert np.allclose(result.affine, AFFINE) and result.shape == raw.shape == SHAPE
    assert int(result.header["sform_code"]) == 2 and int(result.header["qform_code"]) == 1
    score = _expected_score(raw.astype(np.float64), params)
    decided = np.abs(score) > 1e-3  # float32 vs float64 rounding may tip voxels on the threshold
    assert decided.mean() > 0.99 and 0.05 < (score > 0).mean() < 0.95
    np.testing.assert_array_equal(np.asarray(result.dataobj)[decided], (score > 0)[decided])


@needs_nibabel
def test_nifti_run_end_to_end(decathlon: Path, tmp_path: Path) -> None:
    """Train a tiny run on the NIfTI adapter, predict a non-RAS volume with the CLI: the mask has
    the input's affine, header and voxel grid, and in RAS+ it is the model's prediction of the
    adapter's slices."""
    params = {"intensity": "ct", "window": [-100, 300], "val": 1}
    config = tiny_config(tmp_path, **{"data.adapter": "nifti", "data.root": str(decathlon), "data.params": params,
                                      "data.split": {"labeled": None, "val": "val", "test": None},
                                      "data.mean": [0.5], "data.std": [0.25], "train.max_steps": 2})
    run = tmp_path / "run"
    assert train_main(["--config", str(config), "--work-dir", str(run)]) == 0
    recorded = json.loads((run / "meta.json").read_text())["preprocess"]
    assert recorded == {"intensity": "ct", "window": [-100.0, 300.0], "percentiles": [0.5, 99.5],
                        "zscore_nonzero": False, "canonical": True, "axis": 2}

    path = decathlon / "imagesTs" / "case_9.nii.gz"
    out = tmp_path / "out"
    assert _infer(run, path, out, "--color") == 0
    result = nib.load(out / "case_9.nii.gz")
    assert np.allclose(result.affine, AFFINE) and result.shape == SHAPE and result.get_data_dtype() == np.uint8
    assert len(list((out / "case_9_color").glob("*.png"))) == SHAPE[2]

    loaded = load_run(run)
    predictor = ImagePredictor(loaded, torch.device("cpu"))
    adapter = build_adapter("nifti", str(decathlon), params)
    views = ViewMaker(loaded.cfg.data, 1, train=False)
    samples = [adapter.load(item) for item in adapter.items("unlabeled")]
    preds = predictor.predict([s["image"] for s in samples], prepared=[views(s)["image"] for s in samples])
    in_ras = np.asarray(nib.as_closest_canonical(result).dataobj)  # nibabel's reorientation, not ours
    assert np.mean(in_ras == np.stack([p.mask for p in preds], axis=2)) > 0.999


# ---------------------------------------------------------------------- rasters
@pytest.fixture()
def rasters(tmp_path: Path) -> Path:
    from rasterio.transform import from_origin

    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    geo = {"crs": "EPSG:32640", "transform": from_origin(500000, 2800000, 0.5, 0.5)}
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(n):
            image = _image(rng, 40, 56, 5, np.uint16)
            _write_tif(root / split / "img" / f"{split}{i}.tif", image, **geo)
            if split != "test":
                _write_tif(root / split / "lbl" / f"{split}{i}.tif", (image[:, :, 2:3] > 32767).astype(np.uint8), **geo)
    return root


def _raster_params(root: Path, **extra: object) -> dict:
    splits = {s: {"images": f"{s}/img", "masks": f"{s}/lbl"} for s in ("train", "val")}
    splits["test"] = {"images": "test/img"}
    return {"num_classes": 2, "class_names": NAMES, "splits": splits, "bands": [3, 1, 4], "band_stats": "auto",
            "stats_cache": str(root.parent / "stats"), **extra}


def _georef(path: Path) -> tuple:
    with rasterio.open(path) as src:
        return src.crs, src.transform, src.height, src.width


@needs_rasterio
def test_raster_model_input_equals_adapter_image(rasters: Path, tmp_path: Path) -> None:
    """Band selection + band statistics + scale 0.5: the model sees the adapter's 20 x 28 image,
    the mask comes out on the input's 40 x 56 grid."""
    params = _raster_params(rasters, scale=0.5)
    adapter = build_adapter("raster", str(rasters), params)
    predictor, model, cfg = _recording_predictor("raster", adapter, params, 0.0, 1.0)
    path = rasters / "test" / "img" / "test0.tif"
    out = tmp_path / "out"
    assert _run(predictor, path, "raster", out).counts()["ok"] == 1
    expected = ViewMaker(cfg.data, 3, train=False)(adapter.load(adapter.items("test")[0]))["image"]
    fed = torch.cat(model.seen)
    assert fed.shape == (1, 3, 20, 28)
    np.testing.assert_array_equal(fed[0].numpy(), expected.numpy())
    assert _georef(out / "test0.tif") == _georef(path)


@needs_rasterio
def test_streamed_raster_windows_equal_adapter_crops(rasters: Path, tmp_path: Path) -> None:
    """Over --max-pixels the scene is read window by window, each window preprocessed alone
    with the run's recorded band statistics: every window fed to the model is the crop of the
    adapter's whole image. With scale, which needs whole scenes, the file is refused."""
    params = _raster_params(rasters)
    adapter = build_adapter("raster", str(rasters), params)
    predictor, model, cfg = _recording_predictor("raster", adapter, params, 0.0, 1.0)
    path = rasters / "test" / "img" / "test0.tif"
    out = tmp_path / "out"
    assert _run(predictor, path, "raster", out, window=(16, 16), max_pixels=0).counts()["ok"] == 1
    whole = ViewMaker(cfg.data, 3, train=False)(adapter.load(adapter.items("test")[0]))["image"]
    crops = [whole[:, y:y + 16, x:x + 16] for y in window_starts(40, 16, 0.25) for x in window_starts(56, 16, 0.25)]
    np.testing.assert_array_equal(torch.cat(model.seen).numpy(), torch.stack(crops).numpy())
    assert _georef(out / "test0.tif") == _georef(path)

    scaled = build_adapter("raster", str(rasters), _raster_params(rasters, scale=0.5))
    predictor, model, _ = _recording_predictor("raster", scaled, params, 0.0, 1.0)
    summary = _run(predictor, path, "raster", tmp_path / "refused", window=(16, 16), max_pixels=0)
    error = summary.rows[str(path)]["error"]
    assert "data.params.scale=0.5" in error and "--max-pixels" in error and not model.seen


@needs_rasterio
def test_raster_run_end_to_end(rasters: Path, tmp_path: Path) -> None:
    """Train a tiny run on the raster adapter (bands, auto band statistics, scale), predict with
    the CLI: the GeoTIFF mask keeps the input's CRS, transform and size, and equals the model's
    prediction of the adapter's image."""
    params = _raster_params(rasters, scale=0.5)
    config = tiny_config(tmp_path, **{"data.adapter": "raster", "data.root": str(rasters), "data.params": params,
                                      "data.split": {"labeled": None, "val": "val", "test": None},
                                      "data.mean": [0.0], "data.std": [1.0], "train.max_steps": 2})
    run = tmp_path / "run"
    assert train_main(["--config", str(config), "--work-dir", str(run)]) == 0
    adapter = build_adapter("raster", str(rasters), params)
    recorded = json.loads((run / "meta.json").read_text())["preprocess"]
    assert recorded["bands"] == [3, 1, 4] and recorded["scale"] == 0.5
    np.testing.assert_array_equal(np.float32(recorded["band_stats"]["mean"]), adapter.band_stats[0])  # type: ignore[index]

    path = rasters / "test" / "img" / "test0.tif"
    out = tmp_path / "out"
    assert _infer(run, path, out) == 0
    assert _georef(out / "test0.tif") == _georef(path)
    loaded = load_run(run)
    predictor = ImagePredictor(loaded, torch.device("cpu"))
    tensor = ViewMaker(loaded.cfg.data, 3, train=False)(adapter.load(adapter.items("test")[0]))["image"]
    expected = predictor.predict([np.zeros((40, 56, 3), np.uint16)], prepared=[tensor])[0].mask  # at the file's size
    with rasterio.open(out / "test0.tif") as src:
        assert np.mean(src.read(1) == expected) > 0.999
    # over --max-pixels, scale cannot be reproduced window by window: that file is refused
    assert _infer(run, path, tmp_path / "big", "--max-pixels", "100") == 1
    assert "data.params.scale=0.5" in _rows(tmp_path / "big")["test0.tif"]["error"]


# ---------------------------------------------------------------------- records and refusals
def test_preprocess_records_and_refusals(tmp_path: Path) -> None:
    assert from_meta({}) is None
    assert not from_meta({"preprocess": {"band_stats": None, "bands": None, "scale": 1.0}}).active  # type: ignore[union-attr]
    # records written before zscore_nonzero/canonical were recorded: the run's data.params, else the old defaults
    old = {"preprocess": {"intensity": "zscore", "window": None, "percentiles": [0.5, 99.5], "axis": 1}}
    assert from_meta(old, {"zscore_nonzero": True}) == VolumePreprocess("zscore", None, (0.5, 99.5), True, True, 1)
    raster = RasterPreprocess(bands=[2], scale=0.5, band_stats=(np.float32([3.5]), np.float32([2.25])))
    again = from_meta({"preprocess": raster.record()})
    assert isinstance(again, RasterPreprocess) and again.record() == raster.record()
    with pytest.raises(SegsslError, match=r"data.params.gamma=0.7"):
        from_meta({"preprocess": {"gamma": 0.7, "scale": 1.0}})

    # a custom adapter's own steps: the run is refused before the model is built, naming the option
    cfg = Config()
    torch.save({"config": to_dict(cfg),
                "meta": {"num_classes": 2, "in_channels": 3, "preprocess": {"gamma": 0.7}}, "model": {}}, tmp_path / "c.pt")
    with pytest.raises(SegsslError, match=r"c.pt: .*data.params.gamma=0.7.*cannot reproduce"):
        load_run(None, str(tmp_path / "c.pt"))

    # inputs of the other kind than the run's adapter read
    volume_meta = {"num_classes": 2, "in_channels": 1, "preprocess": VolumePreprocess("ct", (-100, 300), (0.5, 99.5), False, True, 2).record()}
    predictor = ImagePredictor(LoadedRun(cfg=cfg, meta=volume_meta, model=_Recorder(), step=0), torch.device("cpu"))
    with pytest.raises(DataError, match="data.params.intensity=ct"):
        predictor.prepare(np.zeros((8, 8, 1), np.uint8), "photo.png")
    raster_meta = {"num_classes": 2, "in_channels": 1, "preprocess": raster.record()}
    predictor = ImagePredictor(LoadedRun(cfg=cfg, meta=raster_meta, model=_Recorder(), step=0), torch.device("cpu"))
    with pytest.raises(DataError, match="data.params.band_stats, data.params.bands, data.params.scale"):
        predictor.prepare_volume(np.zeros((4, 4, 4), np.float32), None, 2, "ct.nii.gz")
