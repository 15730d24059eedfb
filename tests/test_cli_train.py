"""End-to-end: train -> checkpoints/logs -> resume -> infer, and CLI error messages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segssl.cli.common import run_cli
from segssl.cli.infer import main as infer_main
from segssl.cli.train import main as train_main
from segssl.data.adapters import build_adapter
from segssl.engine.logger import read_metrics

from .helpers import REPO, terminate_after_first_step, tiny_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    config = tiny_config(tmp)
    run = tmp / "run"
    assert train_main(["--config", str(config), "--work-dir", str(run)]) == 0
    return run


def test_run_directory_contents(trained_run: Path) -> None:
    for name in ("config.yaml", "meta.json", "checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "train.log"):
        assert (trained_run / name).is_file(), name
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    records = read_metrics(trained_run / "metrics.jsonl")
    assert all("step" in r and "split" in r for r in records)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert all(0.0 <= r["miou"] <= 1.0 and len(r["iou"]) == 4 for r in val)
    test = [r for r in records if r["split"] == "test"]
    assert len(test) == 1 and test[0]["checkpoint_step"] == max(val, key=lambda r: r["miou"])["step"]
    meta = json.loads((trained_run / "meta.json").read_text())
    assert meta["num_classes"] == 4 and meta["in_channels"] == 3
    # no temporary files are left next to atomically written checkpoints
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_resume_continues_at_the_right_step(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    before = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert before["step"] == 4
    assert before["train_seconds"] > 0
    before["train_seconds"] = 1000.0  # earlier segments' time: the summary adds this segment's to it
    torch.save(before, run / "checkpoints" / "last.pt")
    assert train_main(["--work-dir", str(run), "--resume", "--set", "train.max_steps=6"]) == 0
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert after["step"] == 6
    adam_steps = {int(s["step"]) for s in after["optimizers"]["main"]["state"].values()}
    assert adam_steps == {6}  # optimizer state carried over, not restarted
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert "resumed from" in (run / "train.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seconds"] == pytest.approx(1000.0 + summary["seconds_this_segment"], abs=0.11)
    assert after["train_seconds"] > 1000.0


def test_existing_run_is_not_overwritten(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = trained_run / "config.yaml"
    assert run_cli(train_main, ["--config", str(config), "--work-dir", str(trained_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_infer_writes_masks_and_reports_bad_files(trained_run: Path, tmp_path: Path) -> None:
    adapter = build_adapter("demo", None, {"size": 40})
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    shapes = {}
    for i, item in enumerate(adapter.items("val")[:3]):
        image = adapter.load(item)["image"][: 40 - i * 3]  # different sizes than training
        rel = Path("nested" if i == 2 else ".") / f"img_{i}.png"
        cv2.imwrite(str(inputs / rel), image[:, :, ::-1])
        shapes[rel.with_suffix(".png").as_posix().lstrip("./")] = image.shape[:2]
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = run_cli(infer_main, ["--run", str(trained_run), "--input", str(inputs), "--output", str(out), "--device", "cpu"])
    assert rc == 1  # one file failed
    failures = json.loads((out / "failures.json").read_text())
    assert [Path(f["file"]).name for f in failures] == ["broken.png"]
    for rel, shape in shapes.items():
        mask = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == shape and mask.dtype == np.uint8
        assert mask.max() < 4
    # --skip-existing leaves finished masks alone
    stamp = (out / "img_0.png").stat().st_mtime_ns
    run_cli(infer_main, ["--run", str(trained_run), "--input", str(inputs), "--output", str(out), "--skip-existing", "--device", "cpu"])
    assert (out / "img_0.png").stat().st_mtime_ns == stamp


def test_infer_refuses_output_inside_input(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    rc = run_cli(infer_main, ["--run", str(trained_run), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "out")])
    assert rc == 2 and "inside the input" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "fixmatchh"], "registered: "),
        (["--set", "train.max_stepz=3"], "train.max_stepz"),
        (["--set", "data.params.bogus=1"], "data.params.bogus"),
        (["--set", "method.params.nope=1"], "method.params.nope"),
        (["--set", "data.adapter=nosuch"], "unknown dataset adapter 'nosuch'"),
        (["--set", "data.adapter=folder", "--set", "data.root=/nonexistent/x", "--set", "data.params={splits: {train: {images: a}}, num_classes: 2}"], "/nonexistent/x"),
    ],
)
def test_train_errors_name_the_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    config = tiny_config(tmp_path)
    rc = run_cli(train_main, ["--config", str(config), "--work-dir", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_cli_subprocess_missing_config_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--config", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'none.yaml'}"


def test_sigterm_saves_last_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    """What a batch scheduler sends (and the only stop signal a ``nohup ... &`` job receives)."""
    config = tiny_config(tmp_path, **{"train.max_steps": 100000, "train.eval_every": 100000})
    run = tmp_path / "term"
    returncode, err = terminate_after_first_step("train.py", ["--config", str(config), "--work-dir", str(run)], run)
    assert returncode == 143, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 1 <= step < 100000


def test_sigterm_handler_is_restored_after_training() -> None:
    import signal

    from segssl.engine.interrupt import Terminated, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **{"train.max_steps": 3, "train.eval_every": 3})
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tools" / "train.py"), "--config", str(config), "--work-dir", str(run)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(run / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 1  # rank 0 alone writes
    # the confusion matrices of both ranks were summed: every val pixel counted exactly once
    assert sum(val[0]["support"]) == 6 * 32 * 32
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3


def test_runs_saved_before_resize_interpolation_keep_bilinear(trained_run: Path, tmp_path: Path) -> None:
    """The default became "area"; a checkpoint written without the key was trained on bilinear
    shrinking, and inference must prepare its images the same way."""
    from segssl.engine.inference import load_run

    state = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=False)
    assert state["config"]["data"]["resize_interpolation"] == "area"  # new runs record it
    del state["config"]["data"]["resize_interpolation"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert load_run(None, checkpoint=str(old)).cfg.data.resize_interpolation == "linear"
    assert load_run(trained_run).cfg.data.resize_interpolation == "area"


def test_inference_model_keeps_the_runs_memory_layout(trained_run: Path) -> None:
    from segssl.engine.inference import load_run

    conv = next(m for m in load_run(trained_run).model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.in_channels > 1 and conv.weight.is_contiguous(memory_format=torch.channels_last)
