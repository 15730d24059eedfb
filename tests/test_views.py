"""segssl.data.views: geometry shared across views, mask alignment, padding, any band count."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from segssl.config import AugmentConfig, DataConfig
from segssl.data.views import ViewMaker, pad_collate

MEAN, STD = 0.5, 0.25  # DataConfig defaults: normalised = (x - 0.5) / 0.25
NO_PHOTO = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
GEOMETRY = dict(scale=[0.8, 1.2], hflip=True, vflip=True, rotate90=True)


def denorm(t: torch.Tensor) -> torch.Tensor:
    return t * STD + MEAN


def block_sample(seed: int, h: int = 40, w: int = 48) -> dict[str, Any]:
    """8x8 blocks of random classes 0..3; the image encodes the mask as mask * 60 on every channel."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 4, (h // 8, w // 8)), np.ones((8, 8), np.int64))
    image = np.repeat((mask * 60).astype(np.uint8)[:, :, None], 3, axis=2)
    return {"id": f"s{seed}", "image": image, "mask": mask, "valid": np.ones((h, w), bool)}


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 5x5 neighbourhood has one class, away from the crop border.

    Bilinear (image) and nearest (mask) resampling may disagree within a pixel of a class
    boundary; two pixels away they must agree exactly if the geometry is shared.
    """
    m = mask.float()[None, None]
    hi = torch.nn.functional.max_pool2d(m, 5, 1, 2)[0, 0]
    lo = -torch.nn.functional.max_pool2d(-m, 5, 1, 2)[0, 0]
    keep = hi == lo
    keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
    return keep


def test_geometry_shared_and_mask_aligned_over_many_draws() -> None:
    cfg = DataConfig(crop=[32, 32], augment=AugmentConfig(**GEOMETRY, **NO_PHOTO))
    vm = ViewMaker(cfg, channels=3, train=True, views=("strong",))
    vm.reseed(0)
    seen: dict[int, set[bytes]] = {0: set(), 1: set()}
    for draw in range(30):
        seed = draw % 2
        sample = block_sample(seed)
        out = vm(sample)
        assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
        assert out["has_mask"] is True and out["id"] == f"s{seed}"
        assert torch.equal(out["strong"], out["image"])  # no photometric change: identical views
        image = denorm(out["image"])
        for c in range(1, 3):
            assert torch.equal(image[c], image[0])
        expected = out["mask"].float() * 60 / 255
        keep = out["valid"] & interior(out["mask"])
        assert keep.float().mean() > 0.1  # enough pixels checked on every draw
        torch.testing.assert_close(image[0][keep], expected[keep], atol=1e-4, rtol=0)
        seen[seed].add(out["mask"].numpy().tobytes())
    assert len(seen[0]) > 8 and len(seen[1]) > 8  # geometry is random: one input, many outputs


def test_photometric_changes_strong_only() -> None:
    aug = AugmentConfig(**GEOMETRY, color_jitter_p=1.0, grayscale_p=0.0, blur_p=1.0)
    vm = ViewMaker(DataConfig(crop=[32, 32], augment=aug), channels=3, train=True, views=("strong", "strong2"))
    vm.reseed(1)
    for seed in range(10):
        sample = block_sample(seed)
        sample["image"] = (sample["image"] * 0.5 + 40).astype(np.uint8)  # room to brighten and darken
        out = vm(sample)
        assert not torch.equal(out["strong"], out["image"])
        assert not torch.equal(out["strong"], out["strong2"])  # drawn independently per view
        assert out["strong"].shape == out["image"].shape
        s = denorm(out["strong"])
        assert s.min() >= -1e-6 and s.max() <= 1 + 1e-6  # uint8 input: clipped to [0, 1]
        # mask and valid follow the (shared) geometry: still aligned with the weak image
        expected = (out["mask"].float() * 30 + 40) / 255
        keep = out["valid"] & interior(out["mask"])
        torch.testing.assert_close(denorm(out["image"])[0][keep], expected[keep], atol=2.5 / 255, rtol=0)


def test_eval_views_leave_geometry_alone() -> None:
    sample = block_sample(3)
    out = ViewMaker(DataConfig(crop=[16, 16]), channels=3, train=False)(sample)
    assert "strong" not in out
    torch.testing.assert_close(denorm(out["image"])[0], torch.from_numpy(sample["mask"] * 60 / 255).float())
    assert torch.equal(out["mask"], torch.from_numpy(sample["mask"]))


def test_crop_larger_than_image_pads_invalid() -> None:
    cfg = DataConfig(crop=[48, 40], augment=AugmentConfig(hflip=False, **NO_PHOTO))
    sample = block_sample(5, h=32, w=24)
    sample["mask"][:] = 1
    out = ViewMaker(cfg, channels=3, train=True)(sample)
    assert out["image"].shape == (3, 48, 40)
    valid = out["valid"]
    assert int(valid.sum()) == 32 * 24
    rows, cols = valid.any(1).nonzero().flatten(), valid.any(0).nonzero().flatten()
    assert len(rows) == 32 and len(cols) == 24
    assert bool(valid[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all())  # one solid block
    assert int(out["mask"][~valid].max()) == 0 and bool((out["mask"][valid] == 1).all())


def test_unlabeled_sample_gets_all_valid_dummy_mask() -> None:
    out = ViewMaker(DataConfig(), channels=3, train=False)({"id": "u", "image": np.zeros((8, 8, 3), np.uint8)})
    assert out["has_mask"] is False and bool(out["valid"].all()) and int(out["mask"].abs().sum()) == 0


@pytest.mark.parametrize(
    ("channels", "dtype", "scale"),
    [(1, np.uint16, 65535.0), (5, np.uint16, 65535.0), (1, np.float32, 1.0), (5, np.float32, 1.0), (5, np.uint8, 255.0)],
)
def test_any_band_count_and_dtype(channels: int, dtype: Any, scale: float) -> None:
    rng = np.random.default_rng(channels)
    unit = rng.uniform(0.2, 0.8, (24, 20, channels))
    image = (unit * scale).astype(dtype) if scale > 1 else unit.astype(dtype)
    mean = [0.1 * (i + 1) for i in range(channels)]
    cfg = DataConfig(mean=mean, std=[0.5] * channels, crop=[16, 16],
                     augment=AugmentConfig(color_jitter_p=1.0, grayscale_p=0.5, blur_p=1.0))
    out = ViewMaker(cfg, channels=channels, train=True, views=("strong",))({"id": "m", "image": image})
    assert out["image"].shape == (channels, 16, 16) and out["strong"].shape == (channels, 16, 16)
    assert out["image"].dtype == torch.float32 and torch.isfinite(out["strong"]).all()
    plain = ViewMaker(DataConfig(mean=mean, std=[0.5] * channels), channels=channels, train=False)
    got = plain({"id": "m", "image": image})["image"]
    expected = (image.astype(np.float64) / (scale if scale > 1 else 1.0) - np.array(mean)) / 0.5
    torch.testing.assert_close(got, torch.from_numpy(expected.transpose(2, 0, 1)).float(), atol=1e-5, rtol=0)


def test_bad_views_and_mean_length() -> None:
    with pytest.raises(ValueError, match="unknown views"):
        ViewMaker(DataConfig(), channels=3, train=True, views=("medium",))
    with pytest.raises(ValueError, match="data.mean"):
        ViewMaker(DataConfig(mean=[0.1, 0.2], std=[1.0, 1.0]), channels=3, train=False)


def test_strong_view_keeps_float_range() -> None:
    aug = AugmentConfig(hflip=False, color_jitter_p=0.0, grayscale_p=0.0, blur_p=1.0)  # blur of a constant
    vm = ViewMaker(DataConfig(mean=[0.0], std=[1.0], augment=aug), channels=1, train=True, views=("strong",))
    out = vm({"id": "f", "image": np.full((16, 16, 1), 500.0, np.float32)})
    torch.testing.assert_close(out["image"], torch.full((1, 16, 16), 500.0))
    torch.testing.assert_close(out["strong"], torch.full((1, 16, 16), 500.0))


def test_strong_view_blur_sigma_is_configurable() -> None:
    """A centred impulse keeps most of its mass under a small sigma and spreads under a large one."""
    impulse = np.zeros((33, 33, 1), np.float32)
    impulse[16, 16, 0] = 1.0

    def peak(sigma: list[float]) -> float:
        aug = AugmentConfig(hflip=False, color_jitter_p=0.0, grayscale_p=0.0, blur_p=1.0, blur_sigma=sigma)
        vm = ViewMaker(DataConfig(mean=[0.0], std=[1.0], augment=aug), channels=1, train=True, views=("strong",))
        return float(vm({"id": "i", "image": impulse})["strong"][0, 16, 16])

    # a discrete Gaussian's centre weight: ~1 at sigma 0.1, 1/(2*pi*sigma^2) ~ 0.04 at sigma 2
    assert peak([0.1, 0.1]) > 0.95
    assert 0.02 < peak([2.0, 2.0]) < 0.06


def test_resize_interpolation_area_averages_when_shrinking() -> None:
    """One-pixel stripes every 3 pixels: shrunk 3x, area averaging keeps them as a uniform third
    of their brightness in the image, bilinear sampling does not; the mask stays nearest."""
    image = np.zeros((48, 60, 1), np.float32)
    image[:, ::3] = 1.0
    mask = np.zeros((48, 60), np.int64)
    mask[:, ::3] = 1

    def shrunk(mode: str) -> dict[str, torch.Tensor]:
        cfg = DataConfig(mean=[0.0], std=[1.0], resize=[16, 20], resize_interpolation=mode)
        return ViewMaker(cfg, channels=1, train=False)({"id": "s", "image": image, "mask": mask, "valid": np.ones((48, 60), bool)})

    area, linear = shrunk("area"), shrunk("linear")
    torch.testing.assert_close(area["image"], torch.full((1, 16, 20), 1 / 3))
    assert float((linear["image"] - 1 / 3).abs().max()) > 0.3  # samples stripes or gaps, not their mean
    assert torch.equal(area["mask"], linear["mask"]) and set(area["mask"].unique().tolist()) <= {0, 1}
    up = ViewMaker(DataConfig(mean=[0.0], std=[1.0], resize=[96, 120], resize_interpolation="area"), channels=1, train=False)
    assert up({"id": "u", "image": image})["image"].shape == (1, 96, 120)  # enlarging still works


def test_pad_collate_pads_invalid_and_stacks_ids() -> None:
    vm = ViewMaker(DataConfig(), channels=3, train=False)
    a = vm(block_sample(1, h=16, w=24))
    b = vm(block_sample(2, h=24, w=8))
    batch = pad_collate([a, b])
    assert batch["id"] == ["s1", "s2"] and batch["has_mask"].tolist() == [True, True]
    assert batch["image"].shape == (2, 3, 24, 24) and batch["mask"].shape == (2, 24, 24)
    assert batch["size"].tolist() == [[16, 24], [24, 8]]
    assert int(batch["valid"][0].sum()) == 16 * 24 and bool(batch["valid"][0, :16, :24].all())
    assert int(batch["valid"][1].sum()) == 24 * 8 and bool(batch["valid"][1, :, :8].all())
    assert torch.equal(batch["mask"][0, :16, :24], a["mask"]) and int(batch["mask"][0, 16:].abs().sum()) == 0
    assert torch.equal(batch["image"][1, :, :, :8], b["image"])
    rounded = pad_collate([a, b], multiple=32)
    assert rounded["image"].shape == (2, 3, 32, 32) and int(rounded["valid"][1].sum()) == 24 * 8


def test_unlabeled_views_hide_ground_truth_validity() -> None:
    """In benchmark mode unlabeled images carry masks; their "don't care" regions must not leak
    into the loss through `valid` (only padding may be invalid there)."""
    cfg = DataConfig(crop=[24, 24], augment=AugmentConfig(hflip=False))
    mask = np.zeros((16, 16), np.int64)
    label_valid = np.ones((16, 16), bool)
    label_valid[:, :4] = False  # an ignore region of the ground truth
    sample = {"id": "u", "image": np.zeros((16, 16, 3), np.uint8), "mask": mask, "valid": label_valid}
    out = ViewMaker(cfg, 3, train=True, hide_labels=True)(sample)
    padded = ViewMaker(cfg, 3, train=True)(sample)["valid"]
    assert out["valid"].sum() == 16 * 16  # padding alone is invalid
    assert out["mask_valid"].sum() == 16 * 12 == padded.sum()
    assert torch.equal(out["mask_valid"], out["valid"] & out["mask_valid"])
