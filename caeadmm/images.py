"""Decoding any image Pillow reads into 8-bit RGB, the one input form of the whole project.

Used by the data pipeline, the codec CLI and the evaluation, so that every part sees the
same pixels for the same file. Rules:
- EXIF orientation is applied; animated files give their first frame.
- L, P, CMYK, YCbCr, LAB, HSV become RGB through Pillow's conversions; I;16 / I (16- or
  32-bit integer) are scaled to 8 bits (16-bit: value / 257, rounded); F (float) is read
  as [0, 1] when its maximum is at most 1, else as [0, 255], and clipped.
- Alpha (LA, RGBA, PA, P with transparency) is composited over white, then dropped.
- Decompression bombs (more than `max_pixels`, Pillow's MAX_IMAGE_PIXELS by default) and
  anything Pillow cannot decode raise ImageLoadError with the reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm", ".pgm",
    ".pnm", ".jp2", ".j2k", ".avif", ".tga",
)


class ImageLoadError(ValueError):
    """An input file could not be turned into an RGB image; the message says why."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        if arr.max(initial=0) > 65535:
            scale = arr.max() / 255.0
        gray = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_rgb(source: str | os.PathLike | bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes into a uint8 array of shape (H, W, 3)."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if limit is not None and w * h > limit:
                    raise ImageLoadError(
                        f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of {limit}"
                    )
                img.seek(0)
                img = ImageOps.exif_transpose(img)
                img.load()
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"decompression bomb: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageLoadError(f"not found: {exc.filename}") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"unreadable: {exc}") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(f"is a directory: {exc.filename}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageLoadError("not an image Pillow can identify") from exc
    # RuntimeError: Pillow's AVIF plugin raises it for damaged files (e.g. a missing item).
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, RuntimeError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from exc


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and directory trees into a sorted list of image files (by extension)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*"))
            out.extend(q for q in found if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Network output (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), round(255 x) (half to even)."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
