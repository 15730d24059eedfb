"""The benchmark runner end to end on the demo data: rows run once, are skipped when stored,
and the report computes the share of the gap closed from the stored results."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from segssl.benchmark.report import gap_closed, markdown, write_report
from segssl.benchmark.suite import (
    MethodEntry, Row, Suite, collect_result, commit_id, load_suite, record_segment, row_command, row_overrides, rows,
    still_rising, threads_per_row,
)
from segssl.cli.benchmark import main
from segssl.config import load_config, params_from_dict
from segssl.errors import ConfigError
from segssl.methods import METHODS

from .helpers import terminate_after_first_step, tiny_config


def _result(method: str, label: str, test_miou: float, seed: int = 0, val_miou: float | None = None) -> dict:
    val = test_miou if val_miou is None else val_miou
    return {"row": {"method": method, "label": label, "seed": seed}, "best_val_miou": val, "best_step": 2,
            "test": {"miou": test_miou}, "train_seconds": 60.0, "diagnostics": {"mask_ratio": 0.5, "pl_acc": 0.8}}


def _suite() -> Suite:
    return Suite(name="t", configs={"supervised": MethodEntry("a"), "fixmatch": MethodEntry("b")}, labeled={"1/8": 2})


def _line(table: str, start: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(start))


def test_report_gap_closed_by_hand() -> None:
    found = [_result("supervised", "all", 0.60), _result("supervised", "1/8", 0.40), _result("fixmatch", "1/8", 0.55)]
    table = markdown(_suite(), found, "cmd")
    assert "| 75% |" in _line(table, "| fixmatch")  # (0.55 - 0.40) / (0.60 - 0.40)
    assert "| 0% |" in _line(table, "| supervised | 1/8")
    assert "0.50 | 0.80 | 1 |" in _line(table, "| fixmatch")  # diagnostics and minutes
    assert gap_closed(0.5, 0.4, 0.4) is None  # no gap: no share


def test_report_gap_closed_on_best_val_beside_test() -> None:
    found = [_result("supervised", "all", 0.60, val_miou=0.543), _result("supervised", "1/8", 0.40, val_miou=0.404),
             _result("fixmatch", "1/8", 0.45, val_miou=0.469)]
    row = _line(markdown(_suite(), found, "cmd"), "| fixmatch")
    assert "| 25% | 47% |" in row  # test (0.45-0.40)/(0.60-0.40); val: the reference's (0.469-0.404)/(0.543-0.404)


def test_report_spread_over_seeds_and_missing_rows() -> None:
    found = [_result("supervised", "all", 0.60), _result("supervised", "1/8", 0.40),
             _result("fixmatch", "1/8", 0.50, seed=0), _result("fixmatch", "1/8", 0.60, seed=1)]
    table = markdown(_suite(), found, "cmd")
    row = _line(table, "| fixmatch")
    assert "0.550 ± 0.071" in row  # sample sd of 0.50 and 0.60
    assert "75% ± 35%" in row  # shares 50% and 100%
    partial = markdown(_suite(), found[:1], "cmd")
    assert "Not run yet (2): supervised__1of8__s0, fixmatch__1of8__s0" in partial


def test_report_shows_progress_of_interrupted_rows(tmp_path: Path) -> None:
    work = tmp_path / "t" / "fixmatch__1of8__s0"
    work.mkdir(parents=True)
    work.joinpath("metrics.jsonl").write_text("\n".join(json.dumps(m) for m in (
        {"step": 300, "split": "val", "miou": 0.2}, {"step": 600, "split": "val", "miou": 0.31},
        {"step": 900, "split": "val", "miou": 0.3}, {"step": 940, "split": "train", "loss": 1.0})) + "\n")
    table = markdown(_suite(), [_result("supervised", "all", 0.6)], "cmd", work_root=tmp_path)
    assert "Interrupted, resumable (1): fixmatch__1of8__s0 (step 940, best val mIoU 0.310 @ 600)" in table
    assert "Not run yet (1): supervised__1of8__s0" in table


def test_report_lists_interrupted_extra_seeds_and_runs_stopped_before_their_first_log(tmp_path: Path) -> None:
    extra = tmp_path / "t" / "fixmatch__1of8__s2"  # a seed beyond the suite's list, run with --seeds 2
    extra.mkdir(parents=True)
    extra.joinpath("metrics.jsonl").write_text(json.dumps({"step": 280, "split": "train", "loss": 1.0}) + "\n")
    early = tmp_path / "t" / "supervised__1of8__s0"
    (early / "checkpoints").mkdir(parents=True)
    (early / "checkpoints" / "last.pt").write_bytes(b"x")
    done = tmp_path / "t" / "supervised__all__s3"  # a finished extra seed: in the table, not in the list
    done.mkdir(parents=True)
    done.joinpath("metrics.jsonl").write_text(json.dumps({"step": 3000, "split": "train", "loss": 1.0}) + "\n")
    (tmp_path / "t" / "notes").mkdir()  # not a row directory
    found = [_result("supervised", "all", 0.6), _result("supervised", "all", 0.6, seed=3)]
    table = markdown(_suite(), found, "cmd", work_root=tmp_path)
    assert ("Interrupted, resumable (2): supervised__1of8__s0 (checkpoint saved before the first log record); "
            "fixmatch__1of8__s2 (step 280)." in table)
    assert "Not run yet (1): fixmatch__1of8__s0" in table


def test_still_rising_rule() -> None:
    assert still_rising([(100, 0.3), (400, 0.5), (500, 0.52)], steps=500) is True
    assert still_rising([(100, 0.3), (400, 0.5), (500, 0.503)], steps=500) is False
    assert still_rising([(500, 0.5)], steps=500) is None


def test_rows_filters_and_order(tmp_path: Path) -> None:
    suite = Suite(name="t", configs={"supervised": MethodEntry("a"), "fixmatch": MethodEntry("b")},
                  labeled={"1/8": 2, "1/4": 4}, seeds=[0, 1])
    keys = [r.key for r in rows(suite, ["fixmatch", "supervised"], ["1/8", "all"])]
    assert keys == ["fixmatch__1of8__s0", "fixmatch__1of8__s1", "supervised__all__s0", "supervised__all__s1",
                    "supervised__1of8__s0", "supervised__1of8__s1"]
    assert [r.key for r in rows(suite, ["fixmatch"], ["1/4"], seeds=[2])] == ["fixmatch__1of4__s2"]
    with pytest.raises(ConfigError, match="--labels 1/3"):
        rows(suite, labels=["1/3"])
    with pytest.raises(ConfigError, match="--only cps"):
        rows(suite, only=["cps"])


def test_suite_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "configs": {"supervised": "configs/demo.yaml"}, "labeled": {"a": 1}, "seed": 1}))
    with pytest.raises(ConfigError, match="unknown key.*seed"):
        load_suite(path)
    path.write_text(yaml.safe_dump({"name": "s", "configs": {"supervised": "configs/nope.yaml"}, "labeled": {"a": 1}}))
    with pytest.raises(ConfigError, match="config of 'supervised' not found: configs/nope.yaml"):
        load_suite(path)
    path.write_text(yaml.safe_dump({"name": "s", "configs": {"supervised": "configs/demo.yaml"}, "labeled": {"ref": "datasets/nope.txt"}}))
    with pytest.raises(ConfigError, match="labeled.ref: list file not found: datasets/nope.txt"):
        load_suite(path)
    path.write_text(yaml.safe_dump({"name": "s", "configs": {"supervised": {"config": "configs/demo.yaml", "set": ["method.name=fixmatch"]}},
                                    "labeled": {"a": 1}}))
    assert load_suite(path).configs["supervised"].overrides == ["method.name=fixmatch"]


def test_id_list_subset_has_its_own_lower_bound_and_its_id_count_on_the_curve() -> None:
    from segssl.benchmark.suite import subset_sizes

    suite = Suite(name="t", configs={"supervised": MethodEntry("a"), "fixmatch": MethodEntry("b")},
                  labeled={"1/8": 2, "1/8ref": "datasets/camvid/reference_draw_46.txt"})
    found = [_result("supervised", "all", 0.60), _result("supervised", "1/8", 0.40), _result("fixmatch", "1/8", 0.45),
             _result("supervised", "1/8ref", 0.50), _result("fixmatch", "1/8ref", 0.55)]
    table = markdown(suite, found, "cmd")
    assert "| 50% |" in _line(table, "| fixmatch | 1/8ref")  # (0.55 - 0.50) / (0.60 - 0.50), not against 1/8's 0.40
    assert "| 25% |" in _line(table, "| fixmatch | 1/8 ")
    assert subset_sizes(suite) == {"1/8": 2.0, "1/8ref": 46.0}  # the list file holds 46 ids
    command = row_command(suite, Row("fixmatch", "1/8ref", 0), Path("w"), [])
    assert "data.split.labeled=datasets/camvid/reference_draw_46.txt" in command


def test_real_suites_load() -> None:
    suites = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "suites").glob("*.yaml"))
    assert suites
    for path in suites:
        suite = load_suite(path)
        assert suite.upper_method in suite.configs and suite.labeled


def test_real_suite_rows_resolve_to_valid_configs() -> None:
    """Every committed row's config, its `set` overrides and the suite's overrides form a valid
    config with method params its method accepts: a typo fails here, not hours into a sweep."""
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "suites").glob("*.yaml")):
        suite = load_suite(path)
        for row in rows(suite):
            cfg = load_config(suite.configs[row.method].config, row_overrides(suite, row, []))
            params_from_dict(METHODS.get(cfg.method.name).Params, cfg.method.params, "method.params")


def test_write_report_files(tmp_path: Path) -> None:
    runs = tmp_path / "t" / "runs"
    runs.mkdir(parents=True)
    for r in (_result("supervised", "all", 0.60), _result("supervised", "1/8", 0.40), _result("fixmatch", "1/8", 0.55)):
        (runs / f"{Row(r['row']['method'], r['row']['label'], 0).key}.json").write_text(json.dumps(r))
    write_report(_suite(), tmp_path / "t", "python tools/benchmark.py --suite x")
    assert (tmp_path / "t" / "results.md").read_text().startswith("# t")
    cells = json.loads((tmp_path / "t" / "results.json").read_text())["cells"]
    assert [(c["method"], c["label"], c["test_miou"]) for c in cells] == [
        ("supervised", "all", [0.6]), ("supervised", "1/8", [0.4]), ("fixmatch", "1/8", [0.55])]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "t" / "label_efficiency.png").stat().st_size > 1000


def test_parallel_rows_split_the_cores_unless_the_caller_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert threads_per_row(1) is None  # one row: torch's own default (all cores)
    assert (threads_per_row(2), threads_per_row(4), threads_per_row(3)) == (8, 4, 5)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads_per_row(4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_row(2) is None  # inherited as set


@pytest.mark.slow
def test_suite_runs_rows_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = max(1, (os.cpu_count() or 1) // 2)
    config = tiny_config(tmp_path, **{"train.max_steps": 2, "train.eval_every": 2})
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "configs": {
        "supervised": str(config), "fixmatch": {"config": str(config), "set": ["method.name=fixmatch"]}}, "labeled": {"half": 8}}))
    args = ["--suite", str(suite), "--results", str(tmp_path / "results"), "--work-root", str(tmp_path / "work"),
            "--jobs", "2", "--only", "supervised"]
    assert main(args) == 0
    stored = sorted(p.name for p in (tmp_path / "results" / "tiny" / "runs").iterdir())
    assert stored == ["supervised__all__s0.json", "supervised__half__s0.json"]
    result = json.loads((tmp_path / "results" / "tiny" / "runs" / stored[1]).read_text())
    assert result["steps"] == 2 and 0 <= result["test"]["miou"] <= 1 and "data.split.labeled=8" in result["command"]
    assert result["val_curve"] == [[2, result["best_val_miou"]]] or result["val_curve"][-1][0] == 2
    log = (tmp_path / "work" / "tiny" / "supervised__half__s0.log").read_text()  # --jobs 2: one log per row
    assert f"device: cpu ({threads} threads)" in log and f"{threads} torch threads" in result["machine"]
    assert result["commit"] == commit_id()
    assert main(args[:-2] + ["--labels", "half"]) == 0  # runs the fixmatch row only: the others are stored
    out = capsys.readouterr().out
    assert out.count("skip ") == 1 and "run fixmatch__half__s0" in out
    fixmatch = json.loads((tmp_path / "results" / "tiny" / "runs" / "fixmatch__half__s0.json").read_text())
    assert "method.name=fixmatch" in fixmatch["command"] and fixmatch["diagnostics"]["mask_ratio"] is not None
    assert (tmp_path / "results" / "tiny" / "results.md").read_text().startswith("# tiny")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to look for orphaned processes")
def test_sigterm_to_the_runner_stops_the_row_with_a_checkpoint_and_the_sweep(tmp_path: Path) -> None:
    """Stopping a sweep must neither orphan its training process nor move on to the next row."""
    config = tiny_config(tmp_path, **{"train.max_steps": 100000, "train.eval_every": 100000})
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "configs": {"supervised": str(config)}, "labeled": {"half": 8}}))
    work = tmp_path / "work"
    first = work / "tiny" / "supervised__all__s0"
    returncode, err = terminate_after_first_step("benchmark.py", [
        "--suite", str(suite), "--results", str(tmp_path / "results"), "--work-root", str(work)], first)
    assert returncode == 143, err[-2000:]
    assert "resume" in err and "Traceback" not in err
    assert torch.load(first / "checkpoints" / "last.pt", weights_only=False)["step"] >= 1
    assert not _processes_mentioning(str(work))  # the training process saved and exited with the runner
    assert not (work / "tiny" / "supervised__half__s0").exists()  # the sweep stopped, not moved on
    assert not (tmp_path / "results" / "tiny" / "runs").exists() or not any((tmp_path / "results" / "tiny" / "runs").iterdir())


def test_real_suite_rows_build_valid_configs() -> None:
    """Every row of every committed suite gives a config train.py accepts, method params included."""
    from segssl.benchmark.suite import REPO
    from segssl.cli.train import build_config, parse_args
    from segssl.config import params_from_dict
    from segssl.methods import METHODS

    for path in sorted((REPO / "benchmarks" / "suites").glob("*.yaml")):
        suite = load_suite(path)
        for row in rows(suite):
            argv = row_command(suite, row, Path("/nonexistent/work"), [])[2:]
            cfg = build_config(parse_args([a if not a.startswith("configs/") else str(REPO / a) for a in argv]))
            method = METHODS.get(cfg.method.name)
            params_from_dict(method.Params, cfg.method.params, f"method '{cfg.method.name}'")
            assert cfg.train.max_steps >= 2000, (path.name, row.key)


def test_row_command_stores_work_dir_relative_to_the_repository() -> None:
    from segssl.benchmark.suite import REPO

    suite = load_suite(REPO / "benchmarks" / "suites" / "camvid_cpu.yaml")
    row = rows(suite, only=["fixmatch"], labels=["1/8ref"])[0]
    inside = row_command(suite, row, REPO / "runs" / "benchmarks" / "x", [])
    assert inside[inside.index("--work-dir") + 1] == "runs/benchmarks/x"
    outside = row_command(suite, row, Path("/elsewhere/x"), [])
    assert outside[outside.index("--work-dir") + 1] == "/elsewhere/x"


def test_a_row_resumed_at_another_commit_names_every_commit(tmp_path: Path) -> None:
    work = tmp_path / "work" / "fixmatch__half__s0"
    assert [s["commit"] for s in record_segment(work, "aaa", "m1")] == ["aaa"]
    # no last.pt yet: the next segment starts from step 0, so the first one trained nothing that counts
    assert [s["commit"] for s in record_segment(work, "bbb", "m1")] == ["bbb"]
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "last.pt").write_bytes(b"")
    segments = record_segment(work, "ccc", "m2")
    assert [(s["commit"], s["machine"]) for s in segments] == [("bbb", "m1"), ("ccc", "m2")]
    (work / "summary.json").write_text(json.dumps(
        {"best": {"metric": "miou", "step": 2, "value": 0.5}, "steps": 2, "seconds": 1.0, "test": {"miou": 0.4}}))
    (work / "metrics.jsonl").write_text(json.dumps({"step": 2, "split": "val", "miou": 0.5}) + "\n")
    row = Row("fixmatch", "half", 0)
    result = collect_result(_suite(), row, work, ["train.py"], 1.0, "ccc", 1, segments)
    assert result["commit"] == "bbb+ccc" and [s["commit"] for s in result["segments"]] == ["bbb", "ccc"]
    single = collect_result(_suite(), row, work, ["train.py"], 1.0, "ccc", 1, segments[1:])
    assert single["commit"] == "ccc" and "segments" not in single
