"""Segmentation networks from segmentation_models_pytorch, any architecture and encoder."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """Build ``cfg.arch`` with ``cfg.encoder``; weights: None, "imagenet" or a local file.

    A local file is a state dict (or a checkpoint holding one under ``state_dict``/``model``)
    of the encoder, loaded with ``weights_only=True``: a weights file is data, never code.
    """
    import segmentation_models_pytorch as smp

    check_model_params(cfg)
    weights = cfg.encoder_weights
    local = weights is not None and weights not in ("imagenet",) and (Path(weights).suffix or "/" in weights)
    hub_weights = None if local else weights
    try:
        model = smp.create_model(
            cfg.arch, encoder_name=cfg.encoder, encoder_weights=hub_weights,
            in_channels=in_channels, classes=num_classes, **cfg.params,
        )
    except KeyError as exc:  # smp lists the valid architectures / encoders in its message
        raise ConfigError(f"model: {exc.args[0] if exc.args else exc}") from None
    except TypeError as exc:
        raise ConfigError(f"model.params for {cfg.arch}: {exc}") from None
    except (OSError, ConnectionError, RuntimeError) as exc:
        if hub_weights is None:
            raise
        raise ConfigError(
            f"could not get '{hub_weights}' weights for encoder '{cfg.encoder}' ({type(exc).__name__}); "
            "this machine may be offline. Set model.encoder_weights to null, or to a local weights file."
        ) from None
    if local:
        load_encoder_weights(model, Path(weights))  # type: ignore[arg-type]
    head = getattr(model, "segmentation_head", model)  # also the feature-perturbation path's last step
    head.register_forward_hook(contiguous_logits)
    return model


def contiguous_logits(module: nn.Module, inputs: object, output: object) -> object:
    """Forward hook: logits in the standard layout. Channels-last weights (``train.channels_last``)
    give channels-last logits, along whose class axis a CPU runs the losses, softmax and argmax
    2-3x slower: cross-entropy forward and backward of 8 x 11 x 128 x 160 logits took 19 ms against
    7 ms, one mobilenet U-Net training step at that size 6% longer. The copy costs well under 1 ms."""
    return output.contiguous() if isinstance(output, torch.Tensor) else output


def check_model_params(cfg: ModelConfig) -> None:
    """smp's encoders silently drop unknown keyword arguments, so a typo such as
    ``decoder_chanels`` would be ignored: check ``model.params`` against the architecture."""
    import inspect

    import segmentation_models_pytorch as smp

    archs = {name.lower(): getattr(smp, name) for name in dir(smp) if isinstance(getattr(smp, name), type)}
    arch = archs.get(cfg.arch.lower())
    if arch is None:
        return  # smp.create_model reports unknown architectures with the valid list
    reserved = {"self", "encoder_name", "encoder_weights", "in_channels", "classes", "kwargs"}
    allowed = [p for p in inspect.signature(arch.__init__).parameters if p not in reserved]
    for key in cfg.params:
        if key not in allowed:
            raise ConfigError(f"unknown config key 'model.params.{key}' for {cfg.arch}; valid keys: {', '.join(allowed)}")


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"model.encoder_weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad weights file
        raise ConfigError(f"model.encoder_weights: cannot read {path}: {exc}") from None
    for key in ("state_dict", "model", "encoder"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"model.encoder_weights: {path} does not hold a state dict")
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ConfigError(f"model.encoder_weights: no tensor in {path} matches encoder parameters")
    encoder.load_state_dict(matched, strict=False)
    skipped = len(own) - len(matched)
    if skipped:
        import logging

        logging.getLogger(__name__).warning(
            "encoder weights %s: loaded %d tensors, %d encoder tensors left at initialisation "
            "(e.g. a first conv with a different channel count)", path, len(matched), skipped,
        )


def output_stride(model: nn.Module) -> int:
    """Input sizes must be multiples of this (padding is added before prediction)."""
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 32) or 32)
