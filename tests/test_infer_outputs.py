"""Batch inference: output types, bad files, resume, list files, GeoTIFF/NIfTI round trips and
the windowed large-raster path (same masks as whole-image prediction, bounded memory).

Checkpoints are built directly (no training): a randomly initialised Unet/resnet18 whose
head bias is centred, so that every class wins somewhere and masks have structure.
"""
from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segssl.cli.common import run_cli
from segssl.cli.infer import main as infer_main
from segssl.config import Config, ModelConfig, to_dict
from segssl.engine.batch import BatchInference, BatchOptions, Job
from segssl.engine.inference import ImagePredictor, LoadedRun, load_run
from segssl.engine.large_raster import window_starts
from segssl.engine.outputs import OutputOptions, output_names
from segssl.engine.summary import Summary
from segssl.models import build_model

try:
    import rasterio
except ImportError:  # pragma: no cover - GeoTIFF support is optional
    rasterio = None
try:
    import nibabel as nib
except ImportError:  # pragma: no cover - NIfTI support is optional
    nib = None
needs_rasterio = pytest.mark.skipif(rasterio is None, reason="rasterio is not installed")
needs_nibabel = pytest.mark.skipif(nib is None, reason="nibabel is not installed")

PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]
NAMES = ["background", "disc", "rectangle", "bar"]


def _meta(in_channels: int, stride: int = 32) -> dict:
    return {"num_classes": 4, "class_names": NAMES, "in_channels": in_channels, "palette": PALETTE,
            "mean": [0.5], "std": [0.25], "resize": None, "stride": stride, "ignore_index": None}


def _checkpoint(path: Path, in_channels: int, resize: list[int] | None = None) -> Path:
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=None))
    cfg.data.resize = resize
    model = build_model(cfg.model, in_channels, 4).eval()
    with torch.no_grad():  # centre the random head so that every class wins somewhere
        x = torch.rand(2, in_channels, 64, 64) * 4 - 2
        model.segmentation_head[0].bias -= model(x).mean((0, 2, 3))
    torch.save({"config": to_dict(cfg), "meta": _meta(in_channels), "model": model.state_dict(), "step": 7}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """The 2-core test machine is shared: one intra-op thread is faster than two that wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "rgb.pt", 3)


@pytest.fixture(scope="module")
def gray_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "gray.pt", 1)


def _image(rng: np.random.Generator, h: int, w: int, c: int = 3, dtype: type = np.uint8) -> np.ndarray:
    """Smooth blobs: predictions vary over the image instead of following pixel noise."""
    small = rng.uniform(0, 1, (max(2, h // 8), max(2, w // 8), c)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, c).clip(0, 1)
    return (img * np.iinfo(dtype).max).astype(dtype)


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[:, :, ::-1] if image.shape[2] == 3 else image)


def _write_tif(path: Path, image: np.ndarray, **profile: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, c = image.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=c, dtype=image.dtype.name, **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))


def _infer(ckpt: Path, inputs: Path, out: Path, *extra: str) -> int:
    return run_cli(infer_main, ["--checkpoint", str(ckpt), "--input", str(inputs), "--output", str(out),
                                "--device", "cpu", "--workers", "1", *extra])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {Path(r["file"]).name: r for r in csv.DictReader(f)}


def _read_mask(path: Path) -> np.ndarray:
    if path.suffix == ".tif":  # OpenCV would expand the embedded colour map to RGB
        with rasterio.open(path) as src:
            return src.read(1)
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_every_output_type(rgb_ckpt: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    images = {"a.png": _image(rng, 40, 56), "deep/b.jpg": _image(rng, 40, 56), "deep/c.png": _image(rng, 33, 45),
              "gray.png": _image(rng, 40, 56, 1)}  # 1 channel: repeated for the RGB model, grey in overlays
    for rel, image in images.items():
        _write_png(inputs / rel, image)
    _write_png(inputs / ".hidden.png", images["a.png"])  # hidden files are not inputs
    (inputs / "notes.json").write_text("{}")
    out = tmp_path / "out"
    assert _infer(rgb_ckpt, inputs, out, "--color", "--overlay", "--confidence", "png", "--batch-size", "2") == 0
    roles = ("", "_color", "_overlay", "_conf")
    assert _files(out) == {"summary.csv", "summary.json", "deep", *(f"{s}{k}.png" for s in ("a", "gray", "deep/b", "deep/c") for k in roles)}
    rows = _rows(out)
    for rel, image in images.items():
        stem = str(Path(rel).with_suffix(""))
        mask = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8 and mask.max() < 4
        colour = cv2.imread(str(out / f"{stem}_color.png"))[:, :, ::-1]
        assert np.array_equal(colour, np.asarray(PALETTE, np.uint8)[mask])
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))[:, :, ::-1]
        decoded = cv2.imread(str(inputs / rel))[:, :, ::-1]  # JPEG: what was decoded, not what was encoded
        background = mask == 0  # black palette entry: the image shows through unchanged
        assert np.array_equal(overlay[background], decoded[background]) and not np.array_equal(overlay, decoded)
        conf = cv2.imread(str(out / f"{stem}_conf.png"), cv2.IMREAD_UNCHANGED)
        assert conf.dtype == np.uint8 and conf.min() >= 255 // 4  # max of 4 probabilities >= 1/4
        row = rows[Path(rel).name]
        assert row["status"] == "ok" and (int(row["height"]), int(row["width"]), int(row["channels"])) == image.shape
        fractions = [float(row[f"fraction_{n}"]) for n in NAMES]
        assert abs(sum(fractions) - 1) < 1e-4
        assert fractions == pytest.approx([float(np.mean(mask == k)) for k in range(4)], abs=1e-5)
        assert float(row["mean_confidence"]) == pytest.approx(conf.mean() / 255, abs=2e-3)
    assert len(np.unique(cv2.imread(str(out / "a.png"), 0))) >= 2  # masks have structure
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"] == {"ok": 4, "failed": 0, "skipped": 0} and doc["classes"] == NAMES and doc["step"] == 7

    # float32 confidence, no batching, flip TTA: same masks up to ties; npy matches the 8-bit map
    out2 = tmp_path / "out2"
    assert _infer(rgb_ckpt, inputs, out2, "--confidence", "npy", "--batch-size", "1") == 0
    conf = np.load(out2 / "a_conf.npy")
    assert conf.dtype == np.float32 and conf.shape == (40, 56) and 0.25 <= conf.min() and conf.max() <= 1
    assert np.abs(conf * 255 - cv2.imread(str(out / "a_conf.png"), 0)).max() <= 1
    assert np.mean(cv2.imread(str(out2 / "a.png"), 0) == cv2.imread(str(out / "a.png"), 0)) > 0.999


def test_model_trained_at_a_fixed_size_predicts_at_the_file_size(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "resized.pt", 3, resize=[64, 64])
    rng = np.random.default_rng(8)
    _write_png(tmp_path / "in" / "wide.png", _image(rng, 48, 100))
    _write_png(tmp_path / "in" / "tall.png", _image(rng, 90, 30))
    assert _infer(ckpt, tmp_path / "in", tmp_path / "out", "--batch-size", "2") == 0
    assert cv2.imread(str(tmp_path / "out" / "wide.png"), 0).shape == (48, 100)
    assert cv2.imread(str(tmp_path / "out" / "tall.png"), 0).shape == (90, 30)


@needs_rasterio
def test_bad_files_are_reported_and_skipped(rgb_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    _write_png(inputs / "good.png", _image(rng, 32, 32))
    (inputs / "broken.png").write_bytes(b"\x89PNG but not really")
    _write_tif(inputs / "two_band.tif", _image(rng, 32, 32, 2))
    (inputs / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    out = tmp_path / "out"
    assert _infer(rgb_ckpt, inputs, out) == 1
    rows = _rows(out)
    assert rows["good.png"]["status"] == "ok"
    assert "cannot decode" in rows["broken.png"]["error"] and "broken.png" in rows["broken.png"]["error"]
    assert "2 channels" in rows["two_band.tif"]["error"] and "two_band.tif" in rows["two_band.tif"]["error"]
    assert "cut.nii.gz" in rows["cut.nii.gz"]["error"]
    assert _files(out) == {"good.png", "summary.csv", "summary.json", "failures.json"}  # no partial outputs
    assert sorted(Path(f["file"]).name for f in json.loads((out / "failures.json").read_text())) == ["broken.png", "cut.nii.gz", "two_band.tif"]
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "3 failed" in captured.out


def test_skip_existing_resumes(rgb_ckpt: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    inputs, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        _write_png(inputs / f"{name}.png", _image(rng, 32, 40))
    assert _infer(rgb_ckpt, inputs, out, "--color") == 0
    first = _rows(out)
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("a.png", "b.png")}
    (out / "c_color.png").unlink()  # an output of c is missing: c is predicted again
    assert _infer(rgb_ckpt, inputs, out, "--color", "--skip-existing") == 0
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "c_color.png").is_file()
    rows = _rows(out)
    assert rows["a.png"] == first["a.png"]  # rows of earlier runs are carried over
    assert [r["status"] for r in rows.values()] == ["ok"] * 3


def test_list_file_input_never_writes_outside_output(rgb_ckpt: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data, lists = tmp_path / "data", tmp_path / "lists"
    _write_png(data / "x" / "one.png", _image(rng, 32, 32))
    _write_png(data / "y" / "two.png", _image(rng, 32, 32))
    lists.mkdir()
    (lists / "files.txt").write_text(
        "# comment\n../data/x/one.png\n\n" + f"{data / 'y' / 'two.png'}\n../data/x/../x/one.png\n"
        "../data/missing.png\n../data/x/notes.csv\n"
    )
    before = _files(tmp_path)
    out = tmp_path / "out"
    assert _infer(rgb_ckpt, lists / "files.txt", out) == 1  # the missing and unsupported entries fail
    assert _files(tmp_path) - before == {"out", *(f"out/{p}" for p in _files(out))}
    assert {"x/one.png", "y/two.png"} <= _files(out)
    rows = _rows(out)
    assert rows["one.png"]["status"] == rows["two.png"]["status"] == "ok" and len(rows) == 4  # duplicate listed once
    assert "not found" in rows["missing.png"]["error"] and "unsupported file type" in rows["notes.csv"]["error"]
    # an output folder inside a listed file's folder is refused before anything is written
    assert _infer(rgb_ckpt, lists / "files.txt", data / "x" / "preds") == 2 and not (data / "x" / "preds").exists()
    assert _infer(rgb_ckpt, data, data / "preds", "--glob", "*.png") == 2 and not (data / "preds").exists()
    # a symlink inside the output folder cannot lead writes elsewhere
    outside, out2 = tmp_path / "elsewhere", tmp_path / "out2"
    outside.mkdir()
    out2.mkdir()
    (out2 / "x").symlink_to(outside, target_is_directory=True)
    assert _infer(rgb_ckpt, lists / "files.txt", out2) == 1
    assert "symlink" in _rows(out2)["one.png"]["error"] and not any(outside.iterdir())


def test_output_names_do_not_clash(tmp_path: Path) -> None:
    from segssl.cli.infer import plan_jobs

    files = [tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "b.png"]
    jobs = plan_jobs(tmp_path, files, OutputOptions())
    assert [j.names["mask"].as_posix() for j in jobs] == ["a.png.png", "a.jpg.png", "b.png"]
    assert output_names(Path("s/ct.nii.gz"), "volume", OutputOptions(confidence="png", color=True)) == {
        "mask": Path("s/ct.nii.gz"), "color": Path("s/ct_color"), "confidence": Path("s/ct_conf.nii.gz")}


@needs_rasterio
def test_geotiff_keeps_georeference_and_nodata(rgb_ckpt: Path, tmp_path: Path) -> None:
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    rng = np.random.default_rng(4)
    image = _image(rng, 48, 64, 3, np.uint16) + 1  # uint16: overlays stretch it for display
    image[:8, :8] = 0  # nodata corner
    transform, crs = from_origin(500000.0, 4200000.0, 0.5, 0.5), CRS.from_epsg(32633)
    _write_tif(tmp_path / "in" / "scene.tif", image, crs=crs, transform=transform, nodata=0)
    out = tmp_path / "out"
    assert _infer(rgb_ckpt, tmp_path / "in", out, "--color", "--overlay", "--confidence", "npy") == 0
    with rasterio.open(out / "scene.tif") as src:
        assert src.crs == crs and src.transform == transform and (src.height, src.width, src.count) == (48, 64, 1)
        mask = src.read(1)
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.colormap(1)[1][:3] == tuple(PALETTE[1])
    assert (mask[:8, :8] == 255).all() and mask[8:].max() < 4
    for name, bands in (("scene_color.tif", 3), ("scene_overlay.tif", 3)):
        with rasterio.open(out / name) as src:
            assert src.crs == crs and src.transform == transform and src.count == bands
    assert np.load(out / "scene_conf.npy")[:8, :8].max() == 0
    row = _rows(out)["scene.tif"]
    assert sum(float(row[f"fraction_{n}"]) for n in NAMES) == pytest.approx(1, abs=1e-4)


@needs_nibabel
@pytest.mark.parametrize("axis", [2, 0])
def test_nifti_keeps_affine_and_header(gray_ckpt: Path, tmp_path: Path, axis: int) -> None:
    rng = np.random.default_rng(5)
    volume = (_image(rng, 40, 48, 6).astype(np.int16) * 8 - 1000)  # CT-like int16, 40 x 48 x 6
    affine = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]], float)
    image = nib.Nifti1Image(volume, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    image.header.set_slope_inter(1.0, 0.0)
    (tmp_path / "in").mkdir()
    nib.save(image, tmp_path / "in" / "ct.nii.gz")
    out = tmp_path / "out"
    assert _infer(gray_ckpt, tmp_path / "in", out, "--axis", str(axis), "--color", "--confidence", "png") == 0
    result = nib.load(out / "ct.nii.gz")
    assert np.allclose(result.affine, affine) and result.shape == volume.shape
    assert int(result.header["sform_code"]) == 2 and int(result.header["qform_code"]) == 1
    assert result.get_data_dtype() == np.uint8 and result.header.get_intent()[0] == "label"
    mask = np.asarray(result.dataobj)
    # each slice equals the 2-D prediction of that slice
    predictor = ImagePredictor(load_run(None, str(gray_ckpt)), torch.device("cpu"))
    k = volume.shape[axis] // 2
    expected = predictor.predict([np.take(volume, k, axis=axis)[:, :, None].astype(np.float32)])[0].mask
    assert np.mean(np.take(mask, k, axis=axis) == expected) > 0.999
    assert len(list((out / "ct_color").glob("*.png"))) == volume.shape[axis]
    conf = nib.load(out / "ct_conf.nii.gz")
    assert np.allclose(conf.affine, affine) and conf.get_data_dtype() == np.uint8
    assert _rows(out)["ct.nii.gz"]["depth"] == str(volume.shape[axis])


@needs_rasterio
def test_windowed_path_matches_whole_image(tmp_path: Path) -> None:
    """A network with a small receptive field: window by window equals whole-image prediction
    except where a window edge's zero padding leaks into the blend (near-ties only)."""
    image = _image(np.random.default_rng(6), 160, 224)
    _write_tif(tmp_path / "in" / "scene.tif", image)
    _write_png(tmp_path / "in" / "photo.png", image)
    predictor = ImagePredictor(LoadedRun(cfg=Config(), meta=_meta(3), model=_TinyNet().eval(), step=0), torch.device("cpu"))
    jobs = [Job(tmp_path / "in" / name, Path(name), kind, output_names(Path(name), kind, OutputOptions()))
            for name, kind in (("scene.tif", "raster"), ("photo.png", "image"))]
    for folder, options in (("whole", BatchOptions()), ("windowed", BatchOptions(window=(64, 64), max_pixels=0))):
        BatchInference(predictor, tmp_path / folder, options, Summary(tmp_path / folder, NAMES, {})).run(jobs)
    for name in ("scene.tif", "photo.png"):
        a, b = _read_mask(tmp_path / "whole" / name), _read_mask(tmp_path / "windowed" / name)
        assert a.shape == b.shape == image.shape[:2]
        assert np.mean(a == b) > 0.99, name


@needs_rasterio
def test_streamed_path_equals_monai_sliding_window(rgb_ckpt: Path, tmp_path: Path) -> None:
    """Through the CLI with a deep network: rasters streamed window by window give the masks of
    MONAI's sliding_window_inference over the whole image on the same grid."""
    image = _image(np.random.default_rng(6), 160, 224)
    _write_tif(tmp_path / "in" / "scene.tif", image)
    _write_png(tmp_path / "in" / "photo.png", image)
    window = ["--window", "96", "96", "--overlap", "0.5"]
    assert _infer(rgb_ckpt, tmp_path / "in", tmp_path / "monai", *window, "--confidence", "npy") == 0
    assert _infer(rgb_ckpt, tmp_path / "in", tmp_path / "streamed", *window, "--confidence", "npy", "--max-pixels", "0") == 0
    for name in ("scene.tif", "photo.png"):
        a, b = _read_mask(tmp_path / "monai" / name), _read_mask(tmp_path / "streamed" / name)
        assert a.shape == b.shape == image.shape[:2] and np.mean(a == b) > 0.999, name
        conf = [np.load(tmp_path / f / f"{Path(name).stem}_conf.npy") for f in ("monai", "streamed")]
        assert np.abs(conf[0] - conf[1]).max() < 1e-4


def test_window_grid_matches_monai() -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, window, overlap in [(100, 32, 0.25), (97, 32, 0.5), (32, 32, 0.25), (1000, 256, 0.1), (33, 32, 0.9)]:
        interval = _get_scan_interval((size,), (window,), 1, (overlap,))
        assert window_starts(size, window, overlap) == [s[0].start for s in dense_patch_slices((size,), (window,), interval)]


class _TinyNet(nn.Module):
    """Two 3x3 convolutions: the streaming machinery, not the network, is under test."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@needs_rasterio
def test_large_raster_has_bounded_memory(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    size = 2000
    image = _image(np.random.default_rng(7), size, size)
    _write_tif(tmp_path / "in" / "big.tif", image, crs="EPSG:3857", transform=from_origin(0, 0, 1, 1),
               tiled=True, blockxsize=256, blockysize=256)
    run = LoadedRun(cfg=Config(), meta=_meta(3), model=_TinyNet().eval(), step=0)
    predictor = ImagePredictor(run, torch.device("cpu"))
    whole = predictor.predict([image])[0].mask
    del image
    out = tmp_path / "out"
    opts = OutputOptions(confidence="npy")
    job = Job(tmp_path / "in" / "big.tif", Path("big.tif"), "raster", output_names(Path("big.tif"), "raster", opts))
    options = BatchOptions(outputs=opts, batch_size=4, window=(128, 128), max_pixels=0)
    # a first pass on a small raster imports what the path needs (MONAI, rasterio modules):
    # module imports are not what is measured
    _write_tif(tmp_path / "in" / "small.tif", np.zeros((64, 64, 3), np.uint8))
    warm = Job(tmp_path / "in" / "small.tif", Path("small.tif"), "raster", output_names(Path("small.tif"), "raster", opts))
    BatchInference(predictor, tmp_path / "warm", options, Summary(tmp_path / "warm", NAMES, {})).run([warm])
    runner = BatchInference(predictor, out, options, Summary(out, NAMES, {}))
    tracemalloc.start()
    try:
        runner.run([job])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the accumulator is classes x window height x width (4 MB here); the float32 probability
    # map of the scene would be 64 MB, the uint8 image 12 MB and its uint8 mask 4 MB
    full_probabilities = 4 * size * size * 4
    assert peak < full_probabilities / 5, f"peak {peak / 2**20:.1f} MiB"
    with rasterio.open(out / "big.tif") as src:
        mask = src.read(1)
        assert src.crs.to_epsg() == 3857 and src.block_shapes[0] == (256, 256)
    assert np.mean(mask == whole) > 0.99  # window-edge padding tips a few near-ties
    assert np.load(out / "big_conf.npy", mmap_mode="r").shape == (size, size)
