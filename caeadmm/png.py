"""A PNG writer for large images in the memory of a few rows.

Pillow's PNG encoder needs the whole image as a Pillow image (4 bytes a pixel for RGB) and,
written to a buffer, the whole file as well: about 2.5 times the decoded array for a
maximal image. `write_png` takes the uint8 array as it is and writes the file block of rows
by block of rows (Paeth filter on every row, zlib level 6), so what it adds is a few MB.
`codec.save_image` uses it for PNG outputs of over LARGE_PIXELS pixels.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

LARGE_PIXELS = 1 << 24  # save_image writes larger PNGs with write_png
BLOCK_BYTES = 1 << 21  # image bytes per block of rows (at least one row)
SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAETH = 4  # the PNG filter type byte


def write_png(fh: BinaryIO, image: np.ndarray) -> None:
    """Write uint8 (H, W, 3) RGB or (H, W) grayscale pixels to `fh` as a PNG file."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3
                                                           and image.shape[2] == 3)):
        raise ValueError(f"write_png takes uint8 (H, W, 3) or (H, W), got {image.dtype} "
                         f"{image.shape}")
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else 3
    row_bytes = width * channels
    fh.write(SIGNATURE)
    _chunk(fh, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 0,
                                    0, 0, 0))
    compressor = zlib.compressobj(6)
    above = np.zeros(row_bytes, np.uint8)  # the row before the first: zeros, as PNG says
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for y0 in range(0, height, step):
        rows = image[y0 : y0 + step].reshape(-1, row_bytes)
        lines = np.empty((len(rows), row_bytes + 1), np.uint8)
        lines[:, 0] = PAETH
        lines[:, 1:] = rows - _paeth(rows, above, channels)  # uint8: modulo 256
        data = compressor.compress(lines)
        if data:
            _chunk(fh, b"IDAT", data)
        above = rows[-1]
    _chunk(fh, b"IDAT", compressor.flush())
    _chunk(fh, b"IEND", b"")


def _paeth(rows: np.ndarray, above: np.ndarray, channels: int) -> np.ndarray:
    """The Paeth predictor of every byte of `rows` (n, row bytes) from the raw bytes left of
    it (a), above it (b, the previous row: `above` for the first) and above-left (c)."""
    b = np.concatenate([above[None], rows[:-1]]).astype(np.int16)
    a = np.zeros_like(b)
    a[:, channels:] = rows[:, :-channels]
    c = np.zeros_like(b)
    c[:, channels:] = b[:, :-channels]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def _chunk(fh: BinaryIO, kind: bytes, body: bytes) -> None:
    fh.write(struct.pack(">I", len(body)) + kind)
    fh.write(body)
    fh.write(struct.pack(">I", zlib.crc32(body, zlib.crc32(kind))))
