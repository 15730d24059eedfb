"""Bad files inside a dataset: a training item is reported and replaced (a long run goes on),
an evaluation item stops the run with one message naming the file (a metric must not
silently change), and a config whose every mask is wrong fails instead of looping."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from segssl.cli.common import run_cli
from segssl.cli.train import main as train_main
from segssl.config import DataConfig
from segssl.data.adapters import build_adapter
from segssl.data.loaders import SegDataset
from segssl.data.views import ViewMaker
from segssl.errors import DataError


def _dataset(root: Path, n: int = 6, corrupt: tuple[int, ...] = (), bad_mask: tuple[int, ...] = ()) -> None:
    for split in ("train", "val"):
        for i in range(n):
            (root / split / "img").mkdir(parents=True, exist_ok=True)
            (root / split / "lbl").mkdir(parents=True, exist_ok=True)
            image = root / split / "img" / f"{split}{i}.png"
            if split == "train" and i in corrupt or split == "val" and i == 0 and corrupt:
                image.write_bytes(b"truncated")
            else:
                cv2.imwrite(str(image), np.full((32, 32, 3), 30 * i, np.uint8))
            mask = np.zeros((32, 32), np.uint8)
            mask[:, 16:] = 7 if split == "train" and i in bad_mask else 1
            cv2.imwrite(str(root / split / "lbl" / f"{split}{i}.png"), mask)


def _params() -> dict:
    return {"num_classes": 2, "splits": {s: {"images": f"{s}/img", "masks": f"{s}/lbl"} for s in ("train", "val")}}


def test_bad_training_item_is_reported_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _dataset(tmp_path, corrupt=(2,))
    adapter = build_adapter("folder", str(tmp_path), _params())
    dataset = SegDataset(adapter, adapter.items("train"), ViewMaker(DataConfig(), 3, train=True), skip_bad=True)
    with caplog.at_level(logging.WARNING):
        sample = dataset[2]
    assert sample["id"] != "train2"
    assert "train2" in caplog.text and "cannot decode image file" in caplog.text
    strict = SegDataset(adapter, adapter.items("train"), ViewMaker(DataConfig(), 3, train=False))
    with pytest.raises(DataError, match="train2.png"):
        strict[2]


def test_every_item_bad_fails_instead_of_looping(tmp_path: Path) -> None:
    _dataset(tmp_path, bad_mask=tuple(range(6)))
    adapter = build_adapter("folder", str(tmp_path), _params())
    dataset = SegDataset(adapter, adapter.items("train"), ViewMaker(DataConfig(), 3, train=True), skip_bad=True)
    with pytest.raises(DataError, match="bad items in a row.*outside the 2 declared classes"):
        dataset[0]


def test_corrupt_validation_image_stops_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _dataset(tmp_path / "data", corrupt=(1,))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"adapter": "folder", "root": str(tmp_path / "data"), "params": _params(), "num_workers": 0, "batch_size": 2},
        "model": {"encoder": "resnet18"}, "train": {"max_steps": 2, "eval_every": 2},
    }))
    rc = run_cli(train_main, ["--config", str(config), "--work-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "val0.png" in err and "Traceback" not in err
    # training itself went on past the corrupt training image and saved nothing half-written
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))
