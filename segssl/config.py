"""Typed experiment configuration.

One YAML file per experiment, validated against the dataclasses below: an unknown key or a
value of the wrong type is a ``ConfigError`` naming the dotted key. ``--set a.b=value``
overrides are parsed as YAML scalars. The resolved config is written into the run directory
so that ``resume`` and ``infer`` rebuild everything from it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError


@dataclass
class SplitConfig:
    """Which adapter splits feed training, and how the labeled subset is drawn."""

    train: str = "train"  # adapter split holding the training pool
    # None: every train item is labeled; a float in (0, 1]: fraction; an int: count;
    # a string: path of a text file listing the labeled item ids, one per line.
    labeled: Union[float, int, str, None] = None
    seed: int = 0  # seed of the labeled draw (independent of the training seed)
    rest_unlabeled: bool = True  # train items not drawn as labeled join the unlabeled pool
    unlabeled: list[str] = field(default_factory=list)  # extra adapter splits of unlabeled images
    val: Optional[str] = "val"
    test: Optional[str] = None


@dataclass
class AugmentConfig:
    """Geometry is shared by all views of an image; photometric changes are per view."""

    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random rescale range
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False  # for top-down imagery (aerial, microscopy)
    # strong view (FixMatch-style, UniMatch defaults)
    color_jitter: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5, 0.25])
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    # Gaussian blur sigma range in pixels; UniMatch's (0.1, 2.0) was chosen for 321-801 px crops
    # (scaled to a 128-px side: about 0.8). On Dubai 128-px crops (colour off in both), FixMatch's
    # best val was 0.534 +- 0.022 with blur off (three seeds) against 0.540 +- 0.008 with it on (two)
    # (dubai_indomain_cpu findings): within the seed spread, so no reason to change the default
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])


RESIZE_INTERPOLATIONS = ("linear", "area")


def saved_run_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config with the values of defaults that changed since it was written, so a
    resumed run or its inference prepares images the way it was trained."""
    data = raw.get("data")
    if isinstance(data, dict) and "resize_interpolation" not in data:  # saved before the key: bilinear
        raw = {**raw, "data": {**data, "resize_interpolation": "linear"}}
    return raw


@dataclass
class DataConfig:
    adapter: str = "demo"  # registered adapter name or "package.module:ClassName"
    root: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)  # adapter keyword arguments
    split: SplitConfig = field(default_factory=SplitConfig)
    resize: Optional[list[int]] = None  # [H, W] every image is resized to (None: keep)
    # images shrunk by data.resize / augment.scale: "area" (pixel-area average) or "linear"
    # (bilinear: samples 4 pixels, so thin structures alias away beyond 2x; on CamVid shrunk 2.8x
    # it cost 0.035 val mIoU at 1/8 labels, one seed); enlarging is bilinear either way, masks always nearest
    resize_interpolation: str = "area"
    crop: Optional[list[int]] = None  # [H, W] random training crop (padded when larger)
    # per-channel normalisation of images scaled to [0, 1]; one value is broadcast
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 8
    unlabeled_batch_size: Optional[int] = None  # None: same as batch_size
    eval_batch_size: int = 8
    num_workers: int = 2
    cache: bool = False  # keep decoded (resized) samples in memory


@dataclass
class ModelConfig:
    arch: str = "Unet"  # any segmentation_models_pytorch architecture
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None  # null, "imagenet" or a local weights file
    params: dict[str, Any] = field(default_factory=dict)  # extra smp.create_model kwargs


@dataclass
class MethodConfig:
    name: str = "supervised"
    params: dict[str, Any] = field(default_factory=dict)  # validated by the method


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 2e-3  # peak learning rate of the schedule
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "onecycle"  # onecycle | poly | cosine | constant
    warmup: float = 0.3  # onecycle: fraction of steps rising to the peak
    poly_power: float = 0.9


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    eval_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; off on CPU) | bf16 | fp16 | off
    grad_clip: Optional[float] = None
    select_metric: str = "miou"  # validation metric that selects `best`
    optim: OptimConfig = field(default_factory=OptimConfig)
    deterministic: bool = False
    # NHWC weights: convolutions run faster on CPU (oneDNN) and on CUDA tensor cores
    # (measured: a U-Net mobilenet_v2 step at 8x3x128x160 on 2 CPU threads, 0.59 s -> 0.49 s)
    channels_last: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert nested dicts to dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}' must not be null")
        errors = []
        # try the exact type first so 46 stays int and 0.125 stays float
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is not type(value)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}' has invalid value {value!r} (expected {_type_name(tp)})")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp}")  # pragma: no cover


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys by their dotted name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown config key '{dotted}'; valid keys here: {', '.join(sorted(names))}"
            )
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a raw config dict; values are parsed as YAML.

    Keys are checked against the schema later (``from_dict``), except inside free-form
    ``params`` mappings, which their owner (adapter, model, method) validates.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value '{text}': {exc}") from None
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    cfg = from_dict(Config, raw)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks the types alone cannot express."""
    t, d = cfg.train, cfg.data
    if t.max_steps < 1:
        raise ConfigError("config key 'train.max_steps' must be >= 1")
    if t.eval_every < 1:
        raise ConfigError("config key 'train.eval_every' must be >= 1")
    if t.log_every < 1:
        raise ConfigError("config key 'train.log_every' must be >= 1")
    for key, size in (("data.resize", d.resize), ("data.crop", d.crop)):
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ConfigError(f"config key '{key}' must be [height, width] with positive values")
    for key, bounds in (("data.augment.scale", d.augment.scale), ("data.augment.blur_sigma", d.augment.blur_sigma)):
        if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
            raise ConfigError(f"config key '{key}' must be [min, max] with 0 < min <= max")
    if d.resize_interpolation not in RESIZE_INTERPOLATIONS:
        raise ConfigError(f"config key 'data.resize_interpolation' must be {' or '.join(RESIZE_INTERPOLATIONS)}, "
                          f"got '{d.resize_interpolation}'")
    if len(d.mean) != len(d.std) or not all(s > 0 for s in d.std):
        raise ConfigError("config keys 'data.mean' and 'data.std' must have equal length, std > 0")
    if d.batch_size < 1 or d.eval_batch_size < 1:
        raise ConfigError("config key 'data.batch_size' must be >= 1")
    labeled = d.split.labeled
    if isinstance(labeled, float) and not 0 < labeled <= 1:
        raise ConfigError("config key 'data.split.labeled' as a fraction must be in (0, 1]")
    if isinstance(labeled, int) and labeled < 1:
        raise ConfigError("config key 'data.split.labeled' as a count must be >= 1")
    if t.amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"config key 'train.amp' must be auto, bf16, fp16 or off, got '{t.amp}'")
    if t.optim.name not in ("adamw", "sgd"):
        raise ConfigError(f"config key 'train.optim.name' must be adamw or sgd, got '{t.optim.name}'")
    if t.optim.scheduler not in ("onecycle", "poly", "cosine", "constant"):
        raise ConfigError(
            "config key 'train.optim.scheduler' must be onecycle, poly, cosine or constant, "
            f"got '{t.optim.scheduler}'"
        )


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def params_from_dict(cls: type, params: dict[str, Any], owner: str) -> Any:
    """Validate a free-form ``params`` mapping against an owner's dataclass of parameters."""
    return from_dict(cls, params, prefix=owner)
