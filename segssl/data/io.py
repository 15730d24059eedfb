"""Reading image and mask files into numpy arrays, with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as H x W x C (RGB order for colour), keeping its bit depth."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot decode image file: {path}")
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def read_mask(path: str | Path, colour: bool = False) -> np.ndarray:
    """Read a mask: H x W index values, or H x W x 3 RGB when ``colour`` (palette masks)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    flag = cv2.IMREAD_COLOR if colour else cv2.IMREAD_UNCHANGED
    mask = cv2.imread(str(path), flag)
    if mask is None:
        raise DataError(f"cannot decode mask file: {path}")
    if colour:
        return cv2.cvtColor(mask, cv2.COLOR_BGR2RGB)
    if mask.ndim == 3:
        # an index mask saved with identical channels is common; anything else is ambiguous
        if mask.shape[2] >= 3 and np.array_equal(mask[:, :, 0], mask[:, :, 1]) and np.array_equal(
            mask[:, :, 0], mask[:, :, 2]
        ):
            return mask[:, :, 0]
        raise DataError(
            f"mask file {path} has {mask.shape[2]} differing channels; "
            "for colour-coded masks give the adapter a palette"
        )
    return mask


def adapt_channels(image: np.ndarray, in_channels: int, path: str | Path) -> np.ndarray:
    """Match an image to the declared channel count (gray <-> RGB only; else an error)."""
    channels = image.shape[2]
    if channels == in_channels:
        return image
    if in_channels == 1 and channels in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    if in_channels == 3 and channels == 1:
        return np.repeat(image, 3, axis=2)
    if in_channels == 3 and channels == 4:
        return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"image {path} has {channels} channels, the dataset declares {in_channels}")


def read_id_list(path: str | Path) -> list[str]:
    """Item ids from a list file: one per line, first token; "#" comments and blank lines skipped.

    A token naming an image file (``dir/img_001.png``) gives its stem; anything else is an id
    as written, so ids containing dots (``case.001``) survive.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = Path(line.split()[0]).name
        ids.append(Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name)
    return ids


def list_images(folder: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(extensions)}) in folder: {folder}")
    return files
