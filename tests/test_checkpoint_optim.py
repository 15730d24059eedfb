"""Atomic checkpoints, RNG capture/restore, and learning-rate schedule shapes."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segssl.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_atomic
from segssl.engine.optim import lr_factor
from segssl.errors import SegsslError


class NotAllowed:  # a pickled custom object: refused by weights_only loading
    pass


def test_save_atomic_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "run" / "last.pt"  # parent folder created on demand
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 7, "name": "x", "hist": [1.5, 2.5]}
    save_atomic(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["step"] == 7 and loaded["name"] == "x" and loaded["hist"] == [1.5, 2.5]
    save_atomic({"step": 8}, path)  # replaces the old file
    assert load_checkpoint(path) == {"step": 8}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"step": 1, "w": torch.ones(3)}, path)

    def broken_save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # temp file removed


def test_interrupt_during_save_also_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(SegsslError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SegsslError, match="cannot load checkpoint") as info:
        load_checkpoint(corrupt)
    assert str(corrupt) in str(info.value)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": NotAllowed()}, unsafe)
    with pytest.raises(SegsslError, match="cannot load checkpoint"):
        load_checkpoint(unsafe)  # weights_only=True refuses arbitrary classes


def draws() -> tuple[list[float], list[float], list[float]]:
    return (
        [random.random(), random.gauss(0, 1), random.gauss(0, 1)],
        np.random.rand(3).tolist() + [float(np.random.standard_normal())],
        torch.rand(3).tolist() + torch.randn(2).tolist(),
    )


def test_rng_round_trip_in_memory() -> None:
    random.gauss(0, 1)  # leave cached gaussians in python's and numpy's generators
    np.random.standard_normal()
    state = capture_rng()
    first = draws()
    draws()  # move on
    restore_rng(state)
    assert draws() == first


def test_rng_state_survives_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    np.random.standard_normal()
    save_atomic({"rng": capture_rng()}, tmp_path / "rng.pt")
    first = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert draws() != first
    restore_rng(load_checkpoint(tmp_path / "rng.pt")["rng"])  # weights_only=True inside
    assert draws() == first


START, END = 1 / 25, 1 / 25e4


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, START),  # starts at peak / 25
        (15, START + (1 - START) * 0.5),  # half-way up the warmup: cosine at pi/2
        (30, 1.0),  # peak exactly at warmup fraction 0.3
        (65, END + (1 - END) * 0.5),  # half-way down
        (100, END),  # ends at peak / 25e4
        (150, END),  # beyond the end: clamped
    ],
)
def test_onecycle(step: int, expected: float) -> None:
    assert lr_factor("onecycle", step, 100, warmup=0.3) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_onecycle_rises_then_falls_monotonically() -> None:
    values = [lr_factor("onecycle", s, 50, warmup=0.2) for s in range(51)]
    peak = values.index(max(values))
    assert peak == 10 and values[peak] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a > b for a, b in zip(values[peak:-1], values[peak + 1:]))
    assert lr_factor("onecycle", 0, 10, warmup=0.0) == pytest.approx(1.0)  # no warmup: start at the peak


@pytest.mark.parametrize(
    ("kind", "step", "total", "expected"),
    [
        ("poly", 0, 100, 1.0),
        ("poly", 50, 100, 0.5**0.9),  # 0.53589
        ("poly", 75, 100, 0.25**0.9),  # 0.28717
        ("poly", 100, 100, 0.0),
        ("cosine", 0, 100, 1.0),
        ("cosine", 25, 100, 0.5 * (1 + math.cos(math.pi / 4))),  # 0.85355
        ("cosine", 50, 100, 0.5),
        ("cosine", 100, 100, 0.0),
        ("constant", 0, 100, 1.0),
        ("constant", 99, 100, 1.0),
    ],
)
def test_poly_cosine_constant(kind: str, step: int, total: int, expected: float) -> None:
    assert lr_factor(kind, step, total) == pytest.approx(expected, abs=1e-12)


def test_poly_power_and_unknown_kind() -> None:
    assert lr_factor("poly", 50, 100, power=2.0) == pytest.approx(0.25)
    assert lr_factor("poly", 50, 100, power=1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown scheduler 'step'"):
        lr_factor("step", 0, 10)
