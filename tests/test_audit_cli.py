"""tools/audit.py end to end on tiny synthetic data (2 folds, 2 steps each, FixMatch with an
unlabeled pool), its resumability, and its one-line errors."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segssl.audit.oof import check_sample, oof_path
from segssl.cli.audit import main as audit_main
from segssl.cli.common import run_cli
from segssl.engine.logger import read_metrics
from segssl.errors import DataError

from .helpers import REPO, tiny_config

IDS = [f"train_{i:04d}" for i in range(8)]


def config(tmp: Path, **overrides: object) -> Path:
    settings = {
        "data.params": {"size": 32, "train": 8, "val": 2, "test": 2, "unlabeled": 4},
        "data.split": {"labeled": None, "seed": 0, "val": "val", "test": "test", "unlabeled": ["unlabeled"]},
        "data.batch_size": 2, "data.eval_batch_size": 4, "method.name": "fixmatch",
        "model.params": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},  # a smaller net: faster steps
        "train.max_steps": 2, "train.eval_every": 2,
    }
    settings.update(overrides)
    return tiny_config(tmp, **settings)


@pytest.fixture(scope="module")
def audit_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("audit")
    cfg, work, suggested = config(tmp), tmp / "work", tmp / "suggested"
    args = ["--config", str(cfg), "--work-dir", str(work), "--folds", "2", "--threshold", "0.3", "--min-area", "4",
            "--write-suggestions", str(suggested), "--suggest-min-score", "0"]
    assert audit_main(args) == 0
    return {"tmp": tmp, "work": work, "args": args, "suggested": suggested}


def test_folds_train_and_store_out_of_fold_probabilities(audit_run: dict) -> None:
    work = audit_run["work"]
    folds = json.loads((work / "folds.json").read_text())["folds"]
    assert sorted(folds[0] + folds[1]) == IDS and not set(folds[0]) & set(folds[1])
    for index, held_out in enumerate(folds):
        run = work / f"fold_{index}"
        trained_on = (run / "train_ids.txt").read_text().split()
        assert sorted(trained_on) == sorted(set(IDS) - set(held_out))  # never its own held-out fold
        assert (run / "checkpoints" / "best.pt").is_file() and (run / "oof_done.json").is_file()
        train = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
        assert [r["step"] for r in train] == [1, 2] and all("loss/u" in r for r in train)
        assert "unlabeled 4" in (run / "train.log").read_text()  # the unlabeled pool, without the held-out images
    for item_id in IDS:
        probs = np.load(oof_path(work / "oof", item_id))
        assert probs.dtype == np.float16 and probs.shape == (4, 32, 32)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)


def test_reports_list_every_labeled_image(audit_run: dict) -> None:
    work = audit_run["work"]
    rows = list(csv.DictReader(open(work / "report.csv")))
    assert sorted(r["id"] for r in rows) == IDS
    scores = [float(r["image_score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    folds = json.loads((work / "folds.json").read_text())["folds"]
    assert all(r["id"] in folds[int(r["fold"])] for r in rows)
    page = (work / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 4 * 8
    assert (work / "regions.csv").is_file() and json.loads((work / "audit.json").read_text())["folds"] == 2


def test_suggestions_differ_from_given_masks_only_in_flagged_regions(audit_run: dict) -> None:
    from segssl.data.adapters.demo import DemoAdapter

    rows = {r["id"]: r for r in csv.DictReader(open(audit_run["suggested"] / "suggestions.csv"))}
    regions = list(csv.DictReader(open(audit_run["work"] / "regions.csv")))
    assert rows and set(rows) == {r["id"] for r in regions}  # an image with a region gets a suggestion
    adapter = DemoAdapter(size=32, train=8, val=2, test=2, unlabeled=4)
    for item in adapter.items("train"):
        path = audit_run["suggested"] / f"{item['id']}.png"
        if item["id"] not in rows:
            assert not path.exists()
            continue
        suggested = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        changed = suggested != adapter.load(item)["mask"]
        assert changed.sum() == int(rows[item["id"]]["changed_pixels"]) > 0
        boxes = np.zeros_like(changed)
        for r in regions:
            if r["id"] == item["id"]:
                boxes[int(r["y0"]):int(r["y1"]), int(r["x0"]):int(r["x1"])] = True
        assert not (changed & ~boxes).any()


def test_rerun_skips_finished_folds(audit_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    work = audit_run["work"]
    stamps = {p: p.stat().st_mtime_ns for p in list(work.glob("fold_*/checkpoints/*.pt")) + list((work / "oof").iterdir())}
    assert audit_main(audit_run["args"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "audited 8 images" in capsys.readouterr().out


def test_interrupted_fold_resumes_from_its_last_checkpoint(audit_run: dict) -> None:
    work = audit_run["tmp"] / "resumed"
    shutil.copytree(audit_run["work"], work)
    for name in ("oof_done.json", "summary.json"):  # fold 1 as if killed after its checkpoint
        (work / "fold_1" / name).unlink()
    held_out = json.loads((work / "folds.json").read_text())["folds"][1]
    oof_path(work / "oof", held_out[0]).unlink()
    fold0 = (work / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    args = ["--config", str(config(audit_run["tmp"])), "--work-dir", str(work), "--folds", "2", "--set", "train.max_steps=3"]
    assert audit_main(args) == 0
    assert (work / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns == fold0  # finished: skipped
    train = [r["step"] for r in read_metrics(work / "fold_1" / "metrics.jsonl") if r["split"] == "train"]
    assert train == [1, 2, 3]  # steps 1-2 from before, step 3 after resuming
    assert "resumed from" in (work / "fold_1" / "train.log").read_text()
    assert oof_path(work / "oof", held_out[0]).is_file()


def _camvid_like(root: Path, sequences: int) -> None:
    """CamVid layout, 2 frames per sequence (the adapter groups frames by sequence)."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for s in range(sequences):
            for f in range(2):
                cv2.imwrite(str(root / split / f"seq{s}_{f:03d}.png"), np.full((32, 32, 3), 50 * f, np.uint8))
                cv2.imwrite(str(root / f"{split}annot" / f"seq{s}_{f:03d}.png"), np.full((32, 32), s % 11, np.uint8))


def _folder_with_misfit_mask(root: Path) -> str:
    for i in range(4):
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "lbl").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "img" / f"x{i}.png"), np.zeros((32, 32), np.uint8))
        cv2.imwrite(str(root / "lbl" / f"x{i}.png"), np.zeros((32, 30) if i == 2 else (32, 32), np.uint8))
    return "{splits: {train: {images: img, masks: lbl}}, num_classes: 2, in_channels: 1}"


@pytest.mark.parametrize("case", ["one_fold", "too_many_folds", "fewer_groups", "misfit_mask", "no_cleanlab"])
def test_bad_input_stops_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--config", str(config(tmp_path)), "--work-dir", str(tmp_path / "work"), "--folds", "2"]
    if case == "one_fold":
        args[-1], message = "1", "--folds must be at least 2"
    elif case == "too_many_folds":
        args[-1], message = "9", "--folds 9 is larger than the labeled set (8 items)"
    elif case == "fewer_groups":
        _camvid_like(tmp_path / "camvid", sequences=2)
        args[-1], message = "3", "fold 2 of 3 gets no labeled items: the 4 labeled items form only 2 groups"
        args += ["--set", "data.adapter=camvid", "--set", f"data.root={tmp_path / 'camvid'}",
                 "--set", "data.params={splits: [train, val]}", "--set", "data.split.unlabeled=[]",
                 "--set", "data.split.test=null", "--set", "method.name=supervised"]
    elif case == "misfit_mask":
        params = _folder_with_misfit_mask(tmp_path / "data")
        message = f"mask {tmp_path / 'data' / 'lbl' / 'x2.png'} is 30x32 (WxH) but its image is 32x32"
        args += ["--set", "data.adapter=folder", "--set", f"data.root={tmp_path / 'data'}", "--set", f"data.params={params}",
                 "--set", "data.split={val: null, test: null}", "--set", "method.name=supervised"]
    else:
        monkeypatch.setitem(sys.modules, "cleanlab", None)
        args, message = args + ["--cleanlab"], "pip install 'segssl[audit]'"
    assert run_cli(audit_main, args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "work").glob("fold_*"))  # stopped before any training


def test_custom_adapter_masks_must_fit_their_images() -> None:
    item = {"id": "scan_7"}
    with pytest.raises(DataError, match="mask of item scan_7 is 30x32 .* its image is 32x32"):
        check_sample({"image": np.zeros((32, 32, 1)), "mask": np.zeros((32, 30), np.int64)}, item)
    with pytest.raises(DataError, match="scan_7 loads without a mask"):
        check_sample({"image": np.zeros((32, 32, 1))}, item)


def test_tools_wrapper_prints_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "audit.py"), "--config", str(config(tmp_path)),
                           "--work-dir", str(tmp_path / "w"), "--folds", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --folds must be at least 2 (one fold is held out while the others train), got 1"
