"""The benchmark runner end to end on the demo data: rows run once, are skipped when stored,
and the report computes the share of the gap closed from the stored results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from segssl.cli.benchmark import Row, Suite, main, report

from .helpers import tiny_config


def _result(method: str, label: str, test_miou: float) -> dict:
    return {"row": {"method": method, "label": label, "seed": 0}, "best_val_miou": test_miou, "best_step": 2,
            "test": {"miou": test_miou}, "train_seconds": 1.0}


def test_report_gap_closed_by_hand(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for method, label, value in (("supervised", "all", 0.60), ("supervised", "1/8", 0.40), ("fixmatch", "1/8", 0.55)):
        (runs / f"{Row(method, label, 0).key}.json").write_text(json.dumps(_result(method, label, value)))
    suite = Suite(name="t", configs={"supervised": "a", "fixmatch": "b"}, labeled={"1/8": 2})
    table = report(suite, runs)
    fixmatch_row = next(line for line in table.splitlines() if line.startswith("| fixmatch"))
    assert "| 75% |" in fixmatch_row  # (0.55 - 0.40) / (0.60 - 0.40)
    assert "| 0% |" in next(line for line in table.splitlines() if line.startswith("| supervised | 1/8"))


@pytest.mark.slow
def test_suite_runs_rows_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, **{"train.max_steps": 2, "train.eval_every": 2})
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "configs": {"supervised": str(config)}, "labeled": {"half": 8}}))
    args = ["--suite", str(suite), "--results", str(tmp_path / "results"), "--work-root", str(tmp_path / "work")]
    assert main(args) == 0
    stored = sorted(p.name for p in (tmp_path / "results" / "tiny" / "runs").iterdir())
    assert stored == ["supervised__all__s0.json", "supervised__half__s0.json"]
    result = json.loads((tmp_path / "results" / "tiny" / "runs" / stored[1]).read_text())
    assert result["steps"] == 2 and 0 <= result["test"]["miou"] <= 1 and "data.split.labeled=8" in result["command"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("skip ") == 2
    assert (tmp_path / "results" / "tiny" / "results.md").read_text().startswith("# tiny")
