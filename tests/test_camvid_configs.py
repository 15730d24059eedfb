"""Every committed CamVid method config trains end to end through tools/train.py on the real
data (a few steps on a dozen images; skipped where ../shared/data is absent)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from segssl.cli.train import main

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
CONFIGS = sorted((REPO / "configs").glob("camvid_*.yaml"))


def _list(path: Path, folder: Path, count: int) -> Path:
    path.write_text("\n".join(p.stem for p in sorted(folder.glob("*.png"))[:count]) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared CamVid data not present")
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_camvid_config_trains(config: Path, tmp_path: Path) -> None:
    train = _list(tmp_path / "train.txt", CAMVID / "train", 12)
    val = _list(tmp_path / "val.txt", CAMVID / "val", 4)
    work = tmp_path / "run"
    code = main(["--config", str(config), "--work-dir", str(work),
                 "--set", f"data.root={CAMVID}", "--set", f"data.params.splits.train.list={train}",
                 "--set", f"data.params.splits.val.list={val}", "--set", "data.split.labeled=4",
                 "--set", "data.split.test=null", "--set", "data.num_workers=0",
                 "--set", "train.max_steps=6", "--set", "train.eval_every=6", "--set", "train.log_every=2"])
    assert code == 0
    summary = json.loads((work / "summary.json").read_text())
    assert summary["steps"] == 6 and 0 <= summary["best"]["value"] <= 1
    logs = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train_logs = [m for m in logs if m["split"] == "train"]
    assert train_logs and all(v == v for m in train_logs for k, v in m.items() if isinstance(v, float))  # no NaN
    if "supervised" not in config.stem:  # semi-supervised: the unlabeled diagnostics are logged
        assert any("mask_ratio" in m or "loss/u" in m or "loss/cons" in m for m in train_logs), train_logs[-1].keys()
