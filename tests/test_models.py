"""segssl.models.build_model: any band count, config errors, local and offline encoder weights."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from segssl.config import ModelConfig
from segssl.errors import ConfigError
from segssl.models import build_model, load_encoder_weights, output_stride


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    """One 3-band model (seed 0) whose weights the loading tests save and reload."""
    torch.manual_seed(0)
    return build_model(ModelConfig(), in_channels=3, num_classes=2)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_forward_shape(in_channels: int) -> None:
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18"), in_channels=in_channels, num_classes=3)
    assert model.encoder.conv1.in_channels == in_channels
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, in_channels, 32, 64))
    assert out.shape == (1, 3, 32, 64)
    assert output_stride(model) == 32


def test_channels_last_model_gives_standard_layout_logits() -> None:
    """Losses along the class axis are slow on channels-last logits (see contiguous_logits);
    the values and the gradient must not change."""
    import copy

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18"), in_channels=3, num_classes=3)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # copies keep the hook (EMA teachers)
    x = torch.randn(2, 3, 32, 64)
    out, out_cl = model(x), channels_last(x)
    assert out_cl.is_contiguous() and not out_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, out_cl, atol=1e-3)  # the layouts sum in different orders
    out_cl.logsumexp(1).mean().backward()
    out.logsumexp(1).mean().backward()
    grad, grad_cl = model.segmentation_head[0].weight.grad, channels_last.segmentation_head[0].weight.grad
    assert grad_cl is not None and torch.allclose(grad, grad_cl, atol=1e-3)


@pytest.mark.parametrize(("cfg", "name"), [(ModelConfig(arch="NoSuchNet"), "NoSuchNet"),
                                           (ModelConfig(encoder="resnet_bogus"), "resnet_bogus")])
def test_unknown_arch_or_encoder(cfg: ModelConfig, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        build_model(cfg, in_channels=3, num_classes=2)


def test_unknown_model_param_is_config_error() -> None:
    with pytest.raises(ConfigError, match="decoder_chanels"):
        build_model(ModelConfig(params={"decoder_chanels": [8, 8, 8, 8, 8]}), in_channels=3, num_classes=2)


def test_local_encoder_weights_file(tmp_path: Path, source: torch.nn.Module) -> None:
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.state_dict(), path)
    torch.manual_seed(1)
    fresh = build_model(ModelConfig(encoder_weights=str(path)), in_channels=3, num_classes=2)
    # another seed: the decoder (not in the file) differs, so equal encoders come from the file
    assert not torch.equal(fresh.segmentation_head[0].weight, source.segmentation_head[0].weight)
    own = fresh.encoder.state_dict()
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(own[key], value), key


def test_checkpoint_style_weights_with_prefix_and_channel_mismatch(tmp_path: Path, source: torch.nn.Module) -> None:
    path = tmp_path / "full.ckpt"
    torch.save({"model": source.state_dict()}, path)  # keys like "encoder.layer1.0.conv1.weight"
    torch.manual_seed(1)
    fresh = build_model(ModelConfig(encoder_weights=str(path)), in_channels=4, num_classes=2)
    assert torch.equal(fresh.encoder.layer1[0].conv1.weight, source.encoder.layer1[0].conv1.weight)
    assert fresh.encoder.conv1.weight.shape == (64, 4, 7, 7)  # 4-band first conv left at init


def test_missing_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "enc.pth"
    with pytest.raises(ConfigError, match="file not found") as info:
        build_model(ModelConfig(encoder_weights=str(missing)), 3, 2)
    assert str(missing) in str(info.value)


def test_bad_weights_files(tmp_path: Path, source: torch.nn.Module) -> None:
    before = source.encoder.conv1.weight.clone()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        load_encoder_weights(source, junk)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo": torch.zeros(2)}, unrelated)
    with pytest.raises(ConfigError, match="no tensor"):
        load_encoder_weights(source, unrelated)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(ConfigError, match="does not hold a state dict"):
        load_encoder_weights(source, not_a_dict)
    assert torch.equal(source.encoder.conv1.weight, before)  # untouched by failed loads


def test_imagenet_weights_offline_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read once at import time
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached weights to fall back on
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(encoder_weights="imagenet"), in_channels=3, num_classes=2)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "offline" in message and "null" in message and "resnet18" in message
