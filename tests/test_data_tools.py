"""tools/check_data.py and tools/make_split.py on small generated datasets (in-process)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from segssl.cli.check_data import main as check_main
from segssl.cli.make_split import main as split_main
from segssl.config import load_config
from segssl.data.adapters import build_adapter
from segssl.data.splits import make_splits

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parents[1] / "../shared/data"


def put(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_check_data_reports_each_bad_file_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    for i in range(4):
        put(root / "img" / f"{i}.png", np.full((8, 10), 100, np.uint8))
        put(root / "lbl" / f"{i}.png", np.where(np.arange(80).reshape(8, 10) < 40, 0, 255).astype(np.uint8))
    (root / "img" / "1.png").write_bytes(b"not a png")  # unreadable
    put(root / "lbl" / "2.png", np.zeros((6, 10), np.uint8))  # size mismatch
    put(root / "lbl" / "3.png", np.full((8, 10), 7, np.uint8))  # label outside the value map
    put(root / "unl" / "9.png", np.full((8, 10), 100, np.uint8))
    cfg = config(tmp_path, {"adapter": "folder", "root": str(root), "params": {
        "num_classes": 2, "in_channels": 1, "value_map": {0: 0, 255: 1},
        "splits": {"train": {"images": "img", "masks": "lbl"}, "unlabeled": {"images": "unl"}}}})
    report = tmp_path / "out" / "report.json"
    assert check_main(["--config", str(cfg), "--json", str(report)]) == 1
    text = capsys.readouterr().out
    assert "ERROR unreadable: 1" in text and "ERROR size mismatch: 1" in text and "ERROR labels outside classes: 1" in text
    assert "class pixels: class_0 50.0%, class_1 50.0%" in text and "FAILED: 3 error(s)" in text
    full = json.loads(report.read_text())["splits"]
    assert {e["id"] for e in full["train"]["errors"]} == {"1", "2", "3"} and full["unlabeled"]["items"] == 1
    assert full["train"]["sizes"] == {"8x10": 1} and full["train"]["mean"] == [pytest.approx(100 / 255, abs=1e-4)]
    assert check_main(["--config", str(cfg), "--split", "unlabeled"]) == 0


def camvid_like(root: Path) -> None:
    """Three sequences; only sequence C shows the rare class 2."""
    for seq, n in (("A", 4), ("B", 4), ("C", 2)):
        for i in range(n):
            mask = np.zeros((4, 4), np.uint8)
            mask[0] = 2 if seq == "C" else 1
            put(root / "train" / f"{seq}_{i:03d}.png", np.full((4, 4, 3), 90, np.uint8))
            put(root / "trainannot" / f"{seq}_{i:03d}.png", mask)


def test_make_split_grouped_stratified_and_usable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    camvid_like(tmp_path / "cv")
    cfg = config(tmp_path, {"adapter": "camvid", "root": str(tmp_path / "cv"), "params": {"splits": ["train"]},
                            "split": {"val": None}})
    out = tmp_path / "split"
    assert split_main(["--config", str(cfg), "--labeled", "2", "--seed", "3", "--stratify", "--out", str(out)]) == 0
    labeled = (out / "labeled.txt").read_text().split()
    unlabeled = (out / "unlabeled.txt").read_text().split()
    assert {i[0] for i in labeled} == {"C"} and len(labeled) == 2  # the rare class's sequence, whole
    assert not {i[0] for i in labeled} & {i[0] for i in unlabeled} and len(labeled + unlabeled) == 10
    summary = json.loads((out / "split.json").read_text())
    assert summary["counts"]["labeled"] == 2 and summary["classes_absent"] == {"labeled": ["Building"], "unlabeled": ["Pole"]}
    # the list feeds data.split.labeled directly
    run_cfg = load_config(cfg, [f"data.split.labeled={out / 'labeled.txt'}"])
    adapter = build_adapter(run_cfg.data.adapter, run_cfg.data.root, run_cfg.data.params)
    splits = make_splits(adapter, run_cfg.data.split)
    assert [it["id"] for it in splits.labeled] == labeled and len(splits.unlabeled) == 8
    # val drawn from the pool by group; fractions; same seed -> same lists; no coverage without --stratify
    capsys.readouterr()
    again = tmp_path / "split2"
    for target in (again, tmp_path / "split3"):
        assert split_main(["--config", str(cfg), "--labeled", "1/2", "--val", "2", "--out", str(target)]) == 0
    val = (again / "val.txt").read_text().split()
    train = (again / "train.txt").read_text().split()
    assert len(val) >= 2 and not {i[0] for i in val} & {i[0] for i in train} and len(val + train) == 10
    assert (again / "labeled.txt").read_text() == (tmp_path / "split3" / "labeled.txt").read_text()
    assert "classes absent" not in capsys.readouterr().out


def test_make_split_rejects_bad_amounts(tmp_path: Path) -> None:
    from segssl.cli.common import run_cli

    camvid_like(tmp_path / "cv")
    cfg = config(tmp_path, {"adapter": "camvid", "root": str(tmp_path / "cv"), "params": {"splits": ["train"]}})
    assert run_cli(split_main, ["--config", str(cfg), "--labeled", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert run_cli(split_main, ["--config", str(cfg), "--labeled", "11", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.skipif(not (DATA / "isbi-em").is_dir(), reason="shared ISBI EM data not present")
def test_check_data_on_real_isbi_val(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository root
    assert check_main(["--config", "configs/isbi_supervised.yaml", "--split", "val", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "[val] 10 items, 10 labeled loaded" in text and "membrane 20.1%, cell 79.9%" in text
