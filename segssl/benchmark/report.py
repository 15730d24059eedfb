"""Suite report: Markdown table, aggregate JSON and label-efficiency plot from stored row results."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..engine.logger import read_metrics
from .suite import Row, Suite, rows, subset_sizes, val_curve


def load_results(runs: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def _mean(values: list[float]) -> Optional[float]:
    return statistics.mean(values) if values else None


def _sd(values: list[float]) -> Optional[float]:
    return statistics.stdev(values) if len(values) > 1 else None


def gap_closed(value: float, lower: float, upper: float) -> Optional[float]:
    """Share of the lower-to-upper gap a method closes: (method - lower) / (upper - lower)."""
    return (value - lower) / (upper - lower) if upper > lower else None


@dataclass
class Cell:
    """All seeds of one (method, labeled subset)."""
    method: str
    label: str
    runs: list[dict[str, Any]]

    def test(self, key: str = "miou") -> list[float]:
        return [r["test"][key] for r in self.runs if r["test"].get(key) is not None]

    def val(self) -> list[float]:
        return [r["best_val_miou"] for r in self.runs]

    def diagnostic(self, key: str) -> Optional[float]:
        return _mean([r["diagnostics"][key] for r in self.runs if (r.get("diagnostics") or {}).get(key) is not None])


def cells(suite: Suite, found: list[dict[str, Any]]) -> list[Cell]:
    """Cells in the suite's row order (upper bound first, then by labeled subset and method)."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in found:
        by.setdefault((r["row"]["method"], r["row"]["label"]), []).append(r)
    order = list(dict.fromkeys((row.method, row.label) for row in rows(suite)))
    order += [k for k in by if k not in order]
    return [Cell(m, lab, by[(m, lab)]) for m, lab in order if (m, lab) in by]


def _fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _gap_text(values: list[float], lower: Optional[float], upper: Optional[float]) -> str:
    """Mean ± sd over seeds of the gap share, '-' where a bound is missing or not below the other."""
    if not values or lower is None or upper is None or upper <= lower:
        return "-"
    shares = [gap_closed(v, lower, upper) or 0.0 for v in values]  # never None: upper > lower
    sd = _sd(shares)
    return f"{statistics.mean(shares):.0%}" + (f" ± {sd:.0%}" if sd is not None else "")


def progress(work: Path) -> Optional[str]:
    """'step N, best val mIoU v @ s' of an unfinished row's run directory (None if it never started)."""
    logs = read_metrics(work / "metrics.jsonl") if (work / "metrics.jsonl").is_file() else []
    if not logs:  # a run stopped before its first log record still resumes from the checkpoint it saved
        return "checkpoint saved before the first log record" if (work / "checkpoints" / "last.pt").is_file() else None
    val = val_curve(logs)
    best_step, best_value = max(val, key=lambda sv: sv[1]) if val else (0, 0.0)
    best = f", best val mIoU {best_value:.3f} @ {best_step}" if val else ""
    return f"step {max(m['step'] for m in logs)}{best}"


def extra_seed_runs(suite: Suite, found: list[dict[str, Any]], work_root: Optional[Path]) -> list[str]:
    """Unfinished run directories of seeds beyond the suite's list (``--seeds 2``), which ``rows`` does not
    name: without them an interrupted extra seed would vanish from the report until it finishes."""
    if work_root is None or not (work_root / suite.name).is_dir():
        return []
    known = {r.key for r in rows(suite)}
    known |= {Row(f["row"]["method"], f["row"]["label"], f["row"]["seed"]).key for f in found}
    methods = {suite.upper_method, *suite.configs}
    return [d.name for d in sorted((work_root / suite.name).iterdir())
            if d.is_dir() and d.name not in known and d.name.split("__")[0] in methods]


def markdown(suite: Suite, found: list[dict[str, Any]], command: str, work_root: Optional[Path] = None) -> str:
    table = cells(suite, found)
    upper = next((c for c in table if c.method == suite.upper_method and c.label == "all"), None)
    upper_test = _mean(upper.test()) if upper else None
    upper_val = _mean(upper.val()) if upper else None
    has_dice = any(c.test("mdice") for c in table)
    head = ["method", "labeled", "seeds", "checkpoint: best val mIoU @ step", "test mIoU (mean ± sd)"]
    head += ["test mDice"] if has_dice else []
    head += ["gap closed (test)", "gap closed (best val)", "mask ratio", "PL acc", "train min"]
    lines = [f"# {suite.name}", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in table:
        tests = cell.test()
        lower = next((c for c in table if c.method == suite.upper_method and c.label == cell.label), None)
        bounded = cell.label != "all" and lower is not None
        gap_test = _gap_text(tests, _mean(lower.test()), upper_test) if bounded else "-"  # type: ignore[union-attr]
        gap_val = _gap_text(cell.val(), _mean(lower.val()), upper_val) if bounded else "-"  # type: ignore[union-attr]
        sd = _sd(tests)
        cols = [cell.method, cell.label, str(len(cell.runs)),
                ", ".join(f"{r['best_val_miou']:.3f} @ {r['best_step']}" + (" (still rising)" if r.get("val_still_rising") else "")
                          for r in cell.runs),
                _fmt(_mean(tests)) + (f" ± {sd:.3f}" if sd is not None else "")]
        cols += [_fmt(_mean(cell.test("mdice")))] if has_dice else []
        cols += [gap_test, gap_val, _fmt(cell.diagnostic("mask_ratio"), ".2f"), _fmt(cell.diagnostic("pl_acc"), ".2f"),
                 _fmt(_mean([r["train_seconds"] / 60 for r in cell.runs]), ".0f")]
        lines.append("| " + " | ".join(cols) + " |")
    missing = [r.key for r in rows(suite) if not any(
        f["row"]["method"] == r.method and f["row"]["label"] == r.label and f["row"]["seed"] == r.seed for f in found)]
    commits = sorted({r.get("commit", "?") for r in found})
    machines = sorted({r.get("machine", "?") for r in found})
    lines += [
        "",
        f"Lower bound: `{suite.upper_method}` on the same labeled subset; upper bound: `{suite.upper_method}` on all "
        "training labels. Every number comes from the row's best-validation-mIoU checkpoint, tested once; "
        "the gap share on best val mIoU is the figure the plain reference script reports. "
        "Mask ratio / PL acc: share of unlabeled pixels given a pseudo-label and their accuracy against the hidden "
        "ground truth, averaged over the last fifth of training. \"still rising\": best val mIoU in the last fifth "
        "of training beat the earlier best by more than 0.005.",
        "",
        f"Report built by `{command}`; each row's own train command is in `runs/<row>.json`."
        + (f" Commits: {', '.join(commits)}. Machines: {'; '.join(machines)}." if found else " No finished rows yet."),
    ]
    unfinished = missing + extra_seed_runs(suite, found, work_root)
    if unfinished:
        started = {key: progress(work_root / suite.name / key) for key in unfinished} if work_root else {}
        running = [f"{key} ({state})" for key, state in started.items() if state]
        waiting = [key for key in missing if not started.get(key)]
        if running:
            lines += ["", f"Interrupted, resumable ({len(running)}): {'; '.join(running)}."]
        if waiting:
            lines += ["", f"Not run yet ({len(waiting)}): {', '.join(waiting)}."]
    return "\n".join(lines)


def aggregate(suite: Suite, found: list[dict[str, Any]]) -> dict[str, Any]:
    return {"suite": suite.name, "cells": [
        {"method": c.method, "label": c.label, "seeds": [r["row"]["seed"] for r in c.runs],
         "test_miou": c.test(), "test_mdice": c.test("mdice"), "best_val_miou": c.val(),
         "best_step": [r["best_step"] for r in c.runs]} for c in cells(suite, found)]}


def plot(suite: Suite, found: list[dict[str, Any]], path: Path) -> Optional[str]:
    """Label-efficiency curves, one line per method against the labeled subset's size: best val mIoU
    (what selection saw) beside test mIoU of that checkpoint, since the two can disagree (CamVid's
    test split is mostly a sequence no training image comes from). Every subset is a point, an
    id-list subset (a reference script's own draw) at its number of ids.

    Returns why no plot was written (matplotlib is the optional ``bench`` extra), else None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'segssl[bench]')"
    table = cells(suite, found)
    sizes = subset_sizes(suite)
    counts = all(size >= 1 for size in sizes.values())
    upper = next((c for c in table if c.method == suite.upper_method and c.label == "all"), None)
    methods = list(dict.fromkeys(c.method for c in table if c.label != "all"))
    # more methods than one palette's 10 colours: tab10, then tab20's light shades
    colours = [*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors[1::2]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, (title, values) in zip(axes, (("best val mIoU", Cell.val), ("test mIoU (best-val checkpoint)", Cell.test))):
        for i, method in enumerate(methods):
            points = sorted((sizes[c.label], _mean(values(c))) for c in table
                            if c.method == method and c.label in sizes and values(c))
            if points:
                lower = method == suite.upper_method
                ax.plot([x for x, _ in points], [y for _, y in points], marker="s" if lower else "o",
                        color="black" if lower else colours[i % len(colours)], label=method, linewidth=2 if lower else 1)
        if upper and values(upper):
            ax.axhline(_mean(values(upper)), color="gray", linestyle="--", label=f"{suite.upper_method}, all labels")
        ax.set_xscale("log")
        ax.set_xlim(min(sizes.values()) / 1.3, max(sizes.values()) * 1.3)
        ax.set_xticks(list(sizes.values()), [f"{k}\n({v:g})" for k, v in sizes.items()], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("labeled training images" if counts else "labeled share of the training split")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{suite.name}: mIoU, mean over seeds")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_report(suite: Suite, folder: Path, command: str, work_root: Optional[Path] = None) -> str:
    """Write results.md, results.json and label_efficiency.png into the suite's results folder
    (``work_root``: where unfinished rows' run directories are, to report their progress)."""
    found = load_results(folder / "runs")
    table = markdown(suite, found, command, work_root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(table + "\n")
    (folder / "results.json").write_text(json.dumps(aggregate(suite, found), indent=2) + "\n")
    note = plot(suite, found, folder / "label_efficiency.png") if found else "no plot: no finished rows"
    return table + (f"\n\n{note}" if note else f"\n\nplot: {folder / 'label_efficiency.png'}")


__all__ = ["aggregate", "cells", "gap_closed", "load_results", "markdown", "plot", "write_report"]
