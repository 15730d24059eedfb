"""Audit outputs: ``report.csv`` / ``regions.csv`` (ranked), a self-contained ``report.html``
(thumbnails inlined as base64 PNG: opens offline, no server) and suggested masks."""
from __future__ import annotations

import base64
import csv
import html
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..data.adapters.base import Adapter, Item
from ..engine.inference import index_mask_dtype
from ..engine.outputs import Display, palette_lut
from ..errors import SegsslError
from .oof import oof_path
from .pipeline import ItemResult, load_item, valid_of
from .scoring import REGION_TYPES, AuditParams, ImageAudit, audit_image, suggest_mask

TYPE_COLOURS = {"missing": (0, 255, 255), "extra": (255, 0, 255), "wrong_class": (255, 255, 0), "boundary": (0, 255, 0)}
THUMB_WIDTH = 240


def _name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def describe_region(region: dict[str, Any], class_names: Sequence[str]) -> str:
    x0, y0, x1, y1 = region["bbox"]
    return (f"{region['type']} {_name(class_names, region['given_class'])}->{_name(class_names, region['pred_class'])} "
            f"{region['score']:.3f} @{x0},{y0},{x1},{y1}")


def write_csv(results: list[ItemResult], path: Path, class_names: Sequence[str], top_regions: int = 3) -> None:
    """One row per item, most suspicious first; ``top_regions`` are described inline."""
    extra_keys = sorted({k for r in results for k in r.extra})
    with _atomic(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "id", "image_score", "suspicion_mean", "regions", *REGION_TYPES, "top_regions", "fold", *extra_keys])
        for rank, r in enumerate(results, 1):
            counts = [sum(reg["type"] == t for reg in r.regions) for t in REGION_TYPES]
            top = "; ".join(describe_region(reg, class_names) for reg in r.regions[:top_regions])
            writer.writerow([rank, r.id, f"{r.score:.6f}", f"{r.suspicion_mean:.6f}", len(r.regions), *counts, top, r.fold,
                             *[_fmt(r.extra.get(k)) for k in extra_keys]])


def write_regions_csv(results: list[ItemResult], path: Path, class_names: Sequence[str]) -> None:
    with _atomic(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "id", "region", "type", "given_class", "pred_class", "area", "flagged", "score", "x0", "y0", "x1", "y1"])
        for rank, r in enumerate(results, 1):
            for index, reg in enumerate(r.regions, 1):
                writer.writerow([rank, r.id, index, reg["type"], _name(class_names, reg["given_class"]),
                                 _name(class_names, reg["pred_class"]), reg["area"], reg["flagged"], f"{reg['score']:.6f}", *reg["bbox"]])


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.6f}" if isinstance(value, float) else str(value)


class _atomic:
    """Write to a temporary name, rename when complete: a killed run leaves no half report."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(f".tmp-{path.name}")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ HTML


def _png(rgb: np.ndarray, nearest: bool = False) -> str:
    height, width = rgb.shape[:2]
    if width > THUMB_WIDTH:
        size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:  # pragma: no cover - PNG encoding of uint8 RGB does not fail
        raise SegsslError("cannot encode a thumbnail")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def heat_map(audit: ImageAudit) -> np.ndarray:
    """Suspicion in the inferno colour map, each region outlined in its type's colour."""
    heat = cv2.applyColorMap(np.rint(audit.suspicion * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1].copy()
    thickness = max(1, round(heat.shape[1] / THUMB_WIDTH))  # still visible once shrunk to a thumbnail
    for region in audit.regions:
        contours, _ = cv2.findContours(region.flag.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(heat, contours, -1, TYPE_COLOURS[region.type], thickness)
    return heat


def thumbnails(adapter: Adapter, item: Item, oof_dir: Path, params: AuditParams, lut: np.ndarray) -> dict[str, str]:
    sample, probs = load_item(adapter, item, oof_dir)
    valid = valid_of(sample)
    audit = audit_image(probs, sample["mask"], valid, params)
    given = lut[sample["mask"]]
    given[~valid] = 96  # "don't care" in grey
    return {"image": _png(Display(sample["image"]).rgb(sample["image"])), "given": _png(given, nearest=True),
            "prediction": _png(lut[audit.pred], nearest=True), "suspicion": _png(heat_map(audit))}


def write_html(results: list[ItemResult], adapter: Adapter, items: list[Item], oof_dir: Path, params: AuditParams,
               path: Path, top: int = 50, title: str = "segssl label audit") -> None:
    by_id = {str(it["id"]): it for it in items}
    names = list(adapter.class_names)
    lut = palette_lut(adapter.default_palette(), adapter.num_classes)
    legend = " ".join(f'<span style="color:rgb{c}">&#9632; {t}</span>' for t, c in TYPE_COLOURS.items())
    rows = []
    for rank, r in enumerate(results[:top], 1):
        thumbs = thumbnails(adapter, by_id[r.id], oof_dir, params, lut)
        regions = "".join(f"<li>{html.escape(describe_region(reg, names))}</li>" for reg in r.regions[:8])
        more = f"<li>... {len(r.regions) - 8} more (regions.csv)</li>" if len(r.regions) > 8 else ""
        extra = "".join(f"<br>{html.escape(k)}: {_fmt(v)}" for k, v in sorted(r.extra.items()))
        cells = "".join(f'<td><img src="{thumbs[k]}" alt="{k}"></td>' for k in ("image", "given", "prediction", "suspicion"))
        rows.append(f"<tr><td>{rank}</td><td><b>{html.escape(r.id)}</b><br>score {r.score:.3f}<br>"
                    f"mean suspicion {r.suspicion_mean:.3f}<br>fold {r.fold}{extra}<ul>{regions}{more}</ul></td>{cells}</tr>")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}} ul{{padding-left:1.2em;margin:4px 0}}
img{{image-rendering:pixelated;max-width:{THUMB_WIDTH}px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(results)} images ranked by image score (sum of region scores: the expected number of mislabeled regions); the top {min(top, len(results))} are shown.
Suspicion = p(predicted) - p(given label) from out-of-fold predictions (flip TTA). Region outlines: {legend}.
Full lists: report.csv, regions.csv.</p>
<table><tr><th>#</th><th>item</th><th>image</th><th>given mask</th><th>out-of-fold prediction</th><th>suspicion</th></tr>
{''.join(rows)}
</table></body></html>
"""
    with _atomic(path) as tmp:
        tmp.write_text(page)


# ------------------------------------------------------------------ suggestions


def data_files(adapter: Adapter, items: list[Item], root: Optional[str]) -> tuple[list[Path], Optional[Path]]:
    """Files an item names (image, mask, ...) and the data root: suggestions may go near none of them."""
    files = [Path(v) for it in items for k, v in it.items() if k != "id" and isinstance(v, str) and Path(v).is_file()]
    return files, Path(root) if root else None


def write_suggestions(results: list[ItemResult], adapter: Adapter, items: list[Item], oof_dir: Path, params: AuditParams,
                      out_dir: Path, min_score: float, data_root: Optional[str]) -> int:
    """Corrected index masks (PNG, class indices) where only the flagged pixels of regions scoring
    ``min_score`` or more take the predicted class. Invalid pixels carry the adapter's
    ``ignore_index`` (255 when it has none). Returns the number of masks written."""
    from ..cli.infer import check_separate

    files, root = data_files(adapter, items, data_root)
    check_separate(out_dir, files, root)
    by_id = {str(it["id"]): it for it in items}
    dtype = index_mask_dtype(adapter.num_classes)
    fill = adapter.ignore_index if adapter.ignore_index is not None and adapter.ignore_index <= np.iinfo(dtype).max else np.iinfo(dtype).max
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with _atomic(out_dir / "suggestions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "file", "changed_pixels", "regions_replaced"])
        for r in results:
            replaced = [reg for reg in r.regions if reg["score"] >= min_score]
            if not replaced:
                continue
            sample, probs = load_item(adapter, by_id[r.id], oof_dir)
            valid = valid_of(sample)
            mask, changed = suggest_mask(sample["mask"], audit_image(probs, sample["mask"], valid, params), min_score)
            mask = np.where(valid, mask, fill).astype(dtype)
            target = out_dir / oof_path(Path("."), r.id).with_suffix(".png").name
            if not cv2.imwrite(str(target), mask):
                raise SegsslError(f"cannot write {target}")
            writer.writerow([r.id, target.name, changed, len(replaced)])
            written += 1
    return written
