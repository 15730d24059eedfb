"""segssl-infer: predict index masks for a folder of images with a trained run.

  python tools/infer.py --run RUN_DIR --input DIR --output DIR [--checkpoint best|last|PATH]
                        [--tta] [--window H W] [--device cpu|cuda] [--skip-existing]

Writes OUTPUT/<relative path of the input>.png (same stem) holding class indices. A file that
cannot be read is reported and skipped; the exit status is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from ..data.io import IMAGE_EXTENSIONS
from ..errors import SegsslError
from .common import run_cli

log = logging.getLogger("segssl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segssl-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run directory written by segssl-train")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint file")
    parser.add_argument("--input", required=True, help="image file or folder (searched recursively)")
    parser.add_argument("--output", required=True, help="output folder (created; never the input folder)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--tta", action="store_true", help="average predictions over horizontal/vertical flips")
    parser.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size for large images")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default 0.25)")
    parser.add_argument("--skip-existing", action="store_true", help="skip inputs whose mask already exists")
    return parser.parse_args(argv)


def find_inputs(path: Path) -> tuple[Path, list[Path]]:
    """(base folder, files) for a file or a folder searched recursively."""
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise SegsslError(f"input not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SegsslError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return path, files


def main(argv: list[str] | None = None) -> int:
    from ..engine.inference import ImagePredictor, index_mask_dtype, load_run

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    input_path, output = Path(args.input).resolve(), Path(args.output).resolve()
    base, files = find_inputs(input_path)
    if output == base or base in output.parents:
        raise SegsslError(f"output folder {output} must not be inside the input folder {base}")
    run = load_run(args.run, args.checkpoint, device)
    predictor = ImagePredictor(run, device, tta=args.tta, window=tuple(args.window) if args.window else None, overlap=args.overlap)
    dtype = index_mask_dtype(run.meta["num_classes"])
    failures: list[dict[str, str]] = []
    written = skipped = 0
    for path in tqdm(files, desc="infer", unit="img", dynamic_ncols=True):
        target = output / path.relative_to(base).with_suffix(".png")
        if args.skip_existing and target.exists():
            skipped += 1
            continue
        try:
            probs = predictor.probabilities(predictor.load(path))
        except SegsslError as exc:
            failures.append({"file": str(path), "error": str(exc)})
            tqdm.write(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        mask = probs.argmax(0).cpu().numpy().astype(dtype)
        tmp = target.with_name(f".{target.name}.tmp.png")
        if not cv2.imwrite(str(tmp), mask):
            raise SegsslError(f"cannot write {target}")
        tmp.replace(target)  # a killed job never leaves a half-written mask behind
        written += 1
    (output / "failures.json").write_text(json.dumps(failures, indent=2)) if failures else None
    print(f"wrote {written} masks to {output}" + (f", skipped {skipped} existing" if skipped else "")
          + (f"; {len(failures)} failed (see {output / 'failures.json'})" if failures else ""))
    return 1 if failures else 0


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(entry())
