"""segssl.config: strict typed loading, dotted-key errors, --set overrides, validation, round trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from segssl.config import Config, apply_overrides, dump_config, from_dict, load_config, validate
from segssl.errors import ConfigError

FULL_YAML = """
name: exp1
data:
  adapter: folder
  root: /data/isbi
  params: {num_classes: 2, value_map: {0: 0, 255: 1}}
  split: {train: train, labeled: 0.125, seed: 3, rest_unlabeled: false, unlabeled: [extra], val: val, test: test}
  resize: [128, 96]
  crop: [64, 64]
  mean: [0.4]
  std: [0.2]
  augment: {scale: [0.5, 2.0], hflip: false, vflip: true, rotate90: true, color_jitter: [0.1, 0.2, 0.3, 0.05],
            color_jitter_p: 0.5, grayscale_p: 0.0, blur_p: 0.25}
  batch_size: 4
  unlabeled_batch_size: 12
  eval_batch_size: 2
  num_workers: 0
  cache: true
model: {arch: DeepLabV3Plus, encoder: resnet34, encoder_weights: null, params: {decoder_channels: 128}}
method: {name: supervised, params: {threshold: 0.95}}
train:
  max_steps: 500
  eval_every: 50
  log_every: 5
  seed: 7
  device: cpu
  amp: "off"
  grad_clip: 1.5
  select_metric: mdice
  optim: {name: sgd, lr: 0.01, weight_decay: 0.0005, momentum: 0.8, scheduler: poly, warmup: 0.1, poly_power: 1.0}
  deterministic: true
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_yaml_loads_every_field(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_YAML))
    assert cfg.name == "exp1"
    assert cfg.data.adapter == "folder" and cfg.data.root == "/data/isbi"
    assert cfg.data.params == {"num_classes": 2, "value_map": {0: 0, 255: 1}}
    s = cfg.data.split
    assert (s.train, s.labeled, s.seed, s.rest_unlabeled, s.unlabeled, s.val, s.test) == (
        "train", 0.125, 3, False, ["extra"], "val", "test")
    assert cfg.data.resize == [128, 96] and cfg.data.crop == [64, 64]
    assert cfg.data.augment.scale == [0.5, 2.0] and cfg.data.augment.vflip is True
    assert cfg.data.augment.color_jitter == [0.1, 0.2, 0.3, 0.05]
    assert cfg.data.unlabeled_batch_size == 12 and cfg.data.cache is True
    assert cfg.model.arch == "DeepLabV3Plus" and cfg.model.encoder_weights is None
    assert cfg.model.params == {"decoder_channels": 128}
    assert cfg.method.params == {"threshold": 0.95}
    t = cfg.train
    assert (t.max_steps, t.eval_every, t.amp, t.grad_clip, t.deterministic) == (500, 50, "off", 1.5, True)
    assert (t.optim.name, t.optim.lr, t.optim.scheduler, t.optim.poly_power) == ("sgd", 0.01, "poly", 1.0)
    assert isinstance(t.optim.poly_power, float)  # YAML "1.0" -> float
    assert isinstance(t.grad_clip, float)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus: 1\n", "'bogus'"),
        ("train: {max_stepz: 5}\n", "'train.max_stepz'"),
        ("train: {optim: {lrr: 0.1}}\n", "'train.optim.lrr'"),
        ("data: {split: {labelled: 0.5}}\n", "'data.split.labelled'"),
    ],
)
def test_unknown_keys_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as info:
        load_config(write(tmp_path, text))
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train: {max_steps: '5'}\n", "train.max_steps"),  # string for int
        ("train: {max_steps: true}\n", "train.max_steps"),  # bool for int
        ("train: {max_steps: 5.0}\n", "train.max_steps"),  # float for int
        ("data: {batch_size: [8]}\n", "data.batch_size"),
        ("data: {augment: {hflip: 1}}\n", "data.augment.hflip"),  # int for bool
        ("train: {optim: {lr: fast}}\n", "train.optim.lr"),
        ("train: {optim: {lr: true}}\n", "train.optim.lr"),  # bool is not a number
        ("name: 3\n", "name"),
        ("train: 5\n", "train"),  # a section must be a mapping
        ("data: {mean: 0.5}\n", "data.mean"),  # list expected
        ("data: {crop: [32, '32']}\n", "data.crop"),
        ("data: {split: {labeled: true}}\n", "data.split.labeled"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert f"'{key}" in str(info.value)


def test_overrides_dotted_keys_and_yaml_scalar_types() -> None:
    raw = apply_overrides({"train": {"max_steps": 100}}, [
        "train.max_steps=5", "data.split.labeled=0.125", "data.resize=[64,64]", "name=a=b", "train.grad_clip=null",
    ])
    assert raw == {
        "train": {"max_steps": 5, "grad_clip": None},
        "data": {"split": {"labeled": 0.125}, "resize": [64, 64]},
        "name": "a=b",  # only the first '=' separates key and value
    }
    cfg = from_dict(Config, raw)
    assert cfg.train.max_steps == 5
    assert cfg.data.split.labeled == 0.125 and type(cfg.data.split.labeled) is float
    assert cfg.data.resize == [64, 64]


def test_override_labeled_count_stays_int_and_fraction_stays_float(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.split.labeled=46"])
    assert cfg.data.split.labeled == 46 and type(cfg.data.split.labeled) is int
    cfg = load_config(None, ["data.split.labeled=1.0"])
    assert cfg.data.split.labeled == 1.0 and type(cfg.data.split.labeled) is float
    cfg = load_config(None, ["data.split.labeled=lists/ids.txt"])
    assert cfg.data.split.labeled == "lists/ids.txt"


def test_overrides_replace_values_from_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_YAML), ["train.optim.lr=0.5", "data.params.num_classes=3"])
    assert cfg.train.optim.lr == 0.5
    assert cfg.data.params == {"num_classes": 3, "value_map": {0: 0, 255: 1}}  # sibling kept
    assert cfg.train.max_steps == 500


@pytest.mark.parametrize("item", ["train.max_steps", "=5", ""])
def test_malformed_set_is_config_error(item: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, [item])


def test_set_through_a_scalar_is_config_error() -> None:
    with pytest.raises(ConfigError, match="'name' is not a mapping"):
        apply_overrides({"name": "run"}, ["name.x=1"])


def test_set_unknown_key_is_rejected_by_schema() -> None:
    with pytest.raises(ConfigError, match=r"'train\.max_stepz'"):
        load_config(None, ["train.max_stepz=5"])


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["train: [unclosed\n", "a: b: c\n", "- 1\n- 2\n"])
def test_invalid_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, "broken.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.max_steps=0", "train.max_steps"),
        ("train.eval_every=0", "train.eval_every"),
        ("data.split.labeled=1.5", "data.split.labeled"),
        ("data.split.labeled=0.0", "data.split.labeled"),
        ("data.split.labeled=0", "data.split.labeled"),
        ("train.amp=fp8", "train.amp"),
        ("train.optim.name=lion", "train.optim.name"),
        ("train.optim.scheduler=step", "train.optim.scheduler"),
        ("data.crop=[32]", "data.crop"),
        ("data.augment.scale=[1.2,0.8]", "data.augment.scale"),
        ("data.augment.blur_sigma=[0,1]", "data.augment.blur_sigma"),
        ("data.std=[0.0]", "data.std"),
        ("data.resize_interpolation=cubic", "data.resize_interpolation"),
    ],
)
def test_validate_cross_field_errors(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_validate_accepts_defaults_and_boundaries() -> None:
    validate(Config())
    cfg = load_config(None, ["data.split.labeled=1.0", "train.max_steps=1", "train.amp=bf16"])
    assert cfg.train.max_steps == 1


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_YAML), ["train.optim.lr=1.0e-5", "data.split.labeled=46"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert type(again.data.split.labeled) is int and again.train.optim.lr == 1e-5
    default_out = tmp_path / "default.yaml"
    dump_config(Config(), default_out)
    assert load_config(default_out) == Config()


def test_scientific_notation_without_dot_is_a_float(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "train: {optim: {lr: 1e-3}}\n"))
    assert cfg.train.optim.lr == pytest.approx(1e-3)
