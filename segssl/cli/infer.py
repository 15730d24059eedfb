"""segssl-infer: predict masks for folders, lists, rasters and volumes with a trained run.

  python tools/infer.py --run RUN_DIR --input DIR|FILE|LIST.txt --output DIR [options]

Input: a folder (searched recursively, hidden files skipped; --glob narrows it), one file, or
a .txt/.lst file naming one path per line (relative to the list's folder). Outputs mirror
each input's relative path under --output, which may neither lie inside an input folder nor
contain an input:
  PNG/JPEG/BMP image -> index-mask PNG
  TIFF/GeoTIFF       -> index-mask GeoTIFF on the input's grid (CRS, transform, nodata)
  NIfTI volume       -> index-mask NIfTI with the input's affine and header (2-D slices along --axis)
with --color, --overlay and --confidence adding <stem>_color, <stem>_overlay and <stem>_conf.
Rasters over --max-pixels are read and predicted window by window (bounded memory).
Inputs get the preprocessing the run's adapter applied in training, from the steps recorded
in the run: NIfTI reorientation to RAS+ and intensity (CT window, percentiles, z-score; masks
are written back on the input's voxel grid), raster band selection, scale and band statistics
(the training split's). Steps that cannot be reproduced for an input are reported and that
file is skipped (e.g. data.params.scale over --max-pixels, a 2-D image for a NIfTI run).
summary.csv and summary.json list every file: status, size, mean confidence, class fractions.
A file that cannot be read is reported and skipped; the exit status is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Optional

from tqdm import tqdm

from ..engine.sources import INPUT_SUFFIXES, input_kind, split_suffix
from ..errors import SegsslError
from .common import run_cli

if TYPE_CHECKING:  # the engine imports torch: kept out of --help
    from ..engine.batch import Job
    from ..engine.outputs import OutputOptions

log = logging.getLogger("segssl")
LIST_SUFFIXES = (".txt", ".lst")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="segssl-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run directory written by segssl-train")
    p.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint file")
    p.add_argument("--input", required=True, help="image/raster/volume file, folder, or list file (.txt/.lst)")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--glob", help="only files matching this pattern, e.g. '*.tif' or 'city_*/*.png'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="mixed precision on CUDA (default auto)")
    p.add_argument("--batch-size", type=int, default=4, help="same-size images per forward pass (default 4)")
    p.add_argument("--tta", action="store_true", help="average predictions over horizontal/vertical flips")
    p.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size (Gaussian blending)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap in [0, 1) (default 0.25)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="larger images are predicted window by window, never whole (default 4096*4096)")
    p.add_argument("--axis", type=int, choices=[0, 1, 2],
                   help="NIfTI slice axis (default: the training axis of a nifti run, in RAS+ when it reoriented; else 2)")
    p.add_argument("--color", action="store_true", help="also write colour masks with the run's palette")
    p.add_argument("--overlay", action="store_true", help="also write the mask blended over the image")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--display-bands", type=int, nargs="+", metavar="B", help="1 or 3 bands (1-based) shown in overlays")
    p.add_argument("--confidence", choices=["png", "npy"], help="max softmax probability: 8-bit image or float32 .npy")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose outputs all exist (resume)")
    p.add_argument("--workers", type=int, default=2, help="reader threads (default 2)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.workers < 1 or args.max_pixels < 0:
        p.error("--batch-size and --workers must be >= 1, --max-pixels >= 0")
    if not 0 <= args.overlap < 1 or not 0 <= args.alpha <= 1:
        p.error("--overlap must be in [0, 1) and --alpha in [0, 1]")
    if args.window and min(args.window) < 1:
        p.error("--window sizes must be positive")
    return args


def find_inputs(path: Path, pattern: Optional[str] = None) -> tuple[Path, list[Path]]:
    """(root that relative output paths start from, input files) for a folder, file or list."""
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _from_list(path)
    if path.is_file():
        return path.parent, [path]
    return path, _walk(path, pattern)


def _walk(path: Path, pattern: Optional[str]) -> list[Path]:
    if not path.is_dir():
        raise SegsslError(f"input not found: {path}")
    files = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .ipynb_checkpoints, our temporaries
        for name in sorted(names):
            file = Path(folder) / name
            rel = file.relative_to(path).as_posix()
            if name.startswith(".") or input_kind(file) is None:
                continue
            if pattern and not fnmatchcase(rel if "/" in pattern else name, pattern):
                continue
            files.append(file)
    if not files:
        raise SegsslError(f"no inputs ({', '.join(INPUT_SUFFIXES)}) under {path}" + (f" matching {pattern!r}" if pattern else ""))
    return files


def _from_list(list_file: Path) -> tuple[Path, list[Path]]:
    base = list_file.parent
    files: dict[Path, None] = {}  # ordered, without duplicates
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SegsslError(f"cannot read list file {list_file}: {exc}") from None
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            files[Path(os.path.normpath(base / line))] = None  # lexical: no '..' left in any path
    if not files:
        raise SegsslError(f"list file {list_file} names no files")
    root = Path(os.path.commonpath([f.parent for f in files]))
    return root, list(files)


def check_separate(output: Path, files: list[Path], input_folder: Optional[Path] = None) -> None:
    """The output folder may neither lie inside the input folder (or a listed file's folder)
    nor contain an input."""
    out = output.resolve()
    for folder in sorted({f.parent for f in files} | ({input_folder} if input_folder else set())):
        real = folder.resolve()
        if out == real or real in out.parents:
            raise SegsslError(f"output folder {output} must not be inside the input folder {folder}")
    for file in files:
        if out in file.resolve().parents:
            raise SegsslError(f"output folder {output} must not contain the input file {file}")


def plan_jobs(root: Path, files: list[Path], opts: OutputOptions) -> list[Job]:
    from ..engine.batch import Job
    from ..engine.outputs import output_names

    jobs = []
    for file in files:
        rel, kind = file.relative_to(root), input_kind(file)
        if kind is None:
            error = f"unsupported file type '{split_suffix(file.name)[1]}' of {file}; expected one of {', '.join(INPUT_SUFFIXES)}"
            jobs.append(Job(file, rel, "image", {}, error=error))
        else:
            jobs.append(Job(file, rel, kind, output_names(rel, kind, opts)))
    # a.png and a.jpg would both write a.png: such inputs keep their suffix in the output name
    for group in _clashes(jobs):
        for job in group:
            job.names = output_names(job.rel, job.kind, opts, keep_suffix=True)
    for group in _clashes(jobs):  # still clashing (a_color.png vs a.png --color): first one wins
        for job in group[1:]:
            job.error, job.names = f"output name of {job.path} clashes with that of {group[0].path}", {}
    return jobs


def _clashes(jobs: list[Job]) -> list[list[Job]]:
    owners: dict[Path, list[Job]] = defaultdict(list)
    for job in jobs:
        for name in job.names.values():
            owners[name].append(job)
    return [group for group in owners.values() if len(group) > 1]


def main(argv: list[str] | None = None) -> int:
    from ..engine.batch import BatchInference, BatchOptions
    from ..engine.inference import ImagePredictor, load_run, resolve_amp, resolve_device
    from ..engine.outputs import OutputOptions
    from ..engine.summary import Summary

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = resolve_device(args.device)
    input_path, output = Path(args.input).absolute(), Path(args.output).absolute()
    root, files = find_inputs(input_path, args.glob)
    check_separate(output, files, input_path if input_path.is_dir() else None)
    outputs = OutputOptions(color=args.color, overlay=args.overlay, confidence=args.confidence, alpha=args.alpha,
                            display_bands=tuple(args.display_bands) if args.display_bands else None)
    jobs = plan_jobs(root, files, outputs)
    run = load_run(args.run, args.checkpoint, device)
    window = (args.window[0], args.window[1]) if args.window else None
    predictor = ImagePredictor(run, device, tta=args.tta, window=window, overlap=args.overlap,
                               amp_dtype=resolve_amp(args.amp, device))
    output.mkdir(parents=True, exist_ok=True)
    info = {"run": args.run, "checkpoint": str(Path(run.checkpoint or "").absolute()), "step": run.step, "device": str(device),
            "tta": args.tta, "window": list(window) if window else None, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    summary = Summary(output, [str(n) for n in run.meta.get("class_names") or range(run.meta["num_classes"])], info)
    todo = []
    for job in jobs:
        if args.skip_existing and job.names and all((output / p).exists() for p in job.names.values()):
            summary.skipped(str(job.path), job.names["mask"].as_posix())
        else:
            todo.append(job)
    options = BatchOptions(outputs=outputs, batch_size=args.batch_size, window=window, overlap=args.overlap,
                           max_pixels=args.max_pixels, axis=args.axis if args.axis is not None else predictor.slice_axis,
                           workers=args.workers)
    with tqdm(total=len(todo), desc="infer", unit="img", dynamic_ncols=True, smoothing=0.05) as bar:
        try:
            BatchInference(predictor, output, options, summary, bar).run(todo)
        finally:
            summary.write()  # also after Ctrl-C: the summary lists what was finished
    failed = summary.counts()["failed"]
    skipped = len(jobs) - len(todo)
    print(f"wrote {len(todo) - failed} masks to {output}" + (f", skipped {skipped} existing" if skipped else "")
          + (f"; {failed} failed (see {output / 'summary.csv'})" if failed else ""))
    return 1 if failed else 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
