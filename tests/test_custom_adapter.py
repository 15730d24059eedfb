"""The README's custom-adapter example, run exactly as documented: tools/train.py with
examples/custom_adapter/config.yaml (``data.adapter: my_adapter:MyAdapter``) and the module on
PYTHONPATH, on toy data written by the example's own generator."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_adapter"


@pytest.mark.slow  # a subprocess that imports torch and trains: several seconds on a loaded CPU
def test_custom_adapter_example_trains(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import make_toy_data
    finally:
        sys.path.remove(str(EXAMPLE))
    data = make_toy_data.write(tmp_path / "data", size=32, counts={"train": 4, "val": 2, "unlabeled": 2})
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--config", str(EXAMPLE / "config.yaml"),
         "--set", f"data.root={data}", "--set", "data.resize=[32,32]", "--set", "data.batch_size=2",
         "--set", "train.max_steps=2", "--set", "train.eval_every=2", "--work-dir", str(run)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val miou" in proc.stdout
    meta = json.loads((run / "meta.json").read_text())
    assert meta["num_classes"] == 2 and meta["class_names"] == ["background", "object"]
    assert "my_adapter:MyAdapter" in (run / "config.yaml").read_text()


def test_custom_adapter_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example class through build_adapter, in-process (fast): splits, groups, ignore pixels."""
    from segssl.data.adapters import build_adapter
    from segssl.errors import ConfigError

    monkeypatch.syspath_prepend(str(EXAMPLE))
    import make_toy_data

    data = make_toy_data.write(tmp_path / "data", size=32, counts={"train": 3, "val": 1, "unlabeled": 2})
    adapter = build_adapter("my_adapter:MyAdapter", str(data), {"index": "index.csv"})
    assert adapter.splits() == ["train", "unlabeled", "val"]
    assert [it["group"] for it in adapter.items("train")] == ["site0", "site1", "site2"]
    assert all(it["mask"] is None for it in adapter.items("unlabeled"))
    sample = adapter.load(adapter.items("train")[0])
    assert sample["image"].shape == (32, 32, 3) and set(sample["mask"][sample["valid"]].tolist()) <= {0, 1}
    assert 0 < (~sample["valid"]).sum() < 32 * 32 // 4  # the 'unsure' ring is not scored
    with pytest.raises(ConfigError, match="data.params.indx"):
        build_adapter("my_adapter:MyAdapter", str(data), {"indx": "index.csv"})
