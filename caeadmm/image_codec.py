"""Whole images to .cae streams and back, tile by tile (DESIGN.md section 2, "Whole images").

compress: pad the image to a multiple of the tile size P by repeating its edge pixels
(replicate padding: defined for every size down to 1x1, and a flat border costs few bits),
encode the tiles `batch_tiles` at a time (bounded memory for any image size), keep only the
mask's slots of every tile, and code all kept symbols in one `coding` stream.
decompress reverses it: decode the stream, scatter each tile's symbols into a zero latent,
decode the tiles `batch_tiles` at a time and crop the padding.

Symbol order in the stream: tiles in raster order (left to right, then top to bottom);
within a tile, the kept slots in C order of the (C, P/8, P/8) mask (channel, row, column).

Pixels: uint8 v becomes v / 255 for the network; the network's output x in [0, 1] becomes
round(255 x) (half to even). Grayscale input (H, W) is replicated to RGB for the network and
recorded as mode L; decompress then returns (H, W), the rounded mean of the three decoded
channels. Everything else is (H, W, 3) RGB.

Determinism: the same input, model and machine give identical bytes (eval mode, deterministic
rounding, contiguous NCHW tensors, any thread count). The convolution library's float
results for a tile can differ in the last bits with the size of the batch it runs in, enough
to flip a rounded symbol now and then; so on the CPU tiles run one at a time (batch_tiles=1,
within about 10 % of batching there: bench/codec.py), and each tile's symbols and pixels
depend on that tile alone. On a GPU tiles run in batches of 32 for speed: still deterministic
for a given image. Other hardware may round a few symbols differently; any decoder still
reads any stream.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import coding
from caeadmm import bitstream
from caeadmm.bitstream import DEFAULT_MAX_PIXELS, BitstreamError, Header, ModelMismatchError
from caeadmm.files import write_atomic
from caeadmm.images import load_rgb, to_uint8
from caeadmm.model import CAE
from coding.format import unpack_header

GPU_BATCH_TILES = 32
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def compress(image: np.ndarray, model: CAE, *, batch_tiles: int | None = None) -> bytes:
    """Encode a uint8 image, (H, W, 3) RGB or (H, W) grayscale, into a .cae stream.

    batch_tiles: tiles per network call; None: 1 on the CPU, GPU_BATCH_TILES on a GPU.
    """
    rgb, mode = _as_rgb(image)
    height, width = rgb.shape[:2]
    tile = model.config.patch_size
    padded = _pad(rgb, tile)
    kept = _kept_slots(model)
    device = _device(model)
    batch_tiles = batch_tiles or _default_batch(device)
    symbols = []
    with torch.inference_mode():
        for batch in _tile_batches(padded, tile, batch_tiles):
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)
            latent = model.encode(x.float() / 255)
            symbols.append(latent.cpu()[:, kept].numpy())
    payload = coding.encode(np.concatenate(symbols).ravel())
    header = Header(
        width=width, height=height, mode=mode, tile_size=tile,
        latent_channels=model.config.latent_channels, kept_per_tile=int(kept.sum()),
        fingerprint=model.fingerprint()[: bitstream.FINGERPRINT_BYTES],
        payload_length=len(payload),
    )
    return bitstream.pack(header, payload)


def decompress(
    data: bytes,
    model: CAE,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    batch_tiles: int | None = None,
) -> np.ndarray:
    """Decode a .cae stream into uint8 pixels: (H, W, 3) RGB, or (H, W) for mode L streams.

    Raises BitstreamError for any malformed stream, ModelMismatchError (a BitstreamError)
    when `model` is not the one that wrote it; both before any image-sized allocation.
    """
    header, payload = bitstream.parse(data, max_pixels)
    kept = _kept_slots(model)
    _check_model(header, model, kept)
    try:
        # The payload's own symbol count (its first bytes) is checked before anything is
        # decoded: a crafted count must not size an allocation.
        count = unpack_header(payload)[0].count
        if count != header.n_symbols:
            raise BitstreamError(
                f"payload holds {count} symbols, the header implies {header.n_symbols}"
            )
        symbols = coding.decode(payload)
    except coding.CorruptStreamError as exc:
        raise BitstreamError(f"corrupt payload: {exc}") from exc
    rows, cols = header.tiles
    tile = header.tile_size
    symbols = symbols.reshape(rows * cols, header.kept_per_tile)
    out = np.empty((rows * tile, cols * tile, 3), dtype=np.uint8)
    device = _device(model)
    batch_tiles = batch_tiles or _default_batch(device)
    latent_shape = model.config.latent_shape()
    with torch.inference_mode():
        for start in range(0, rows * cols, batch_tiles):
            chunk = torch.from_numpy(symbols[start : start + batch_tiles])
            latent = torch.zeros((len(chunk), *latent_shape), dtype=torch.int32)
            latent[:, kept] = chunk
            pixels = to_uint8(model.decode(latent.to(device)))
            for i, tile_pixels in enumerate(pixels):
                r, c = divmod(start + i, cols)
                out[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = tile_pixels
    image = out[: header.height, : header.width]
    if header.mode == "L":
        return ((image.astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)
    return np.ascontiguousarray(image)


# -- files: the form the CLI and the batch job share ------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file for `compress`: (H, W) if the file is grayscale, else (H, W, 3).

    Pixels come from images.load_rgb (the project's one decoder); only the file's mode is
    looked up here, so that grayscale files round-trip as grayscale.
    """
    rgb = load_rgb(path)
    with Image.open(path) as img:
        gray = img.mode in GRAY_MODES
    return rgb[..., 0].copy() if gray else rgb


def save_image(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False) -> None:
    """Write pixels in the format the file extension names (PNG, TIFF, ...), atomically."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r} (try .png)")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    write_atomic(path, buffer.getvalue(), overwrite=overwrite)


def compress_file(
    src: str | os.PathLike, dst: str | os.PathLike, model: CAE, *, overwrite: bool = False
) -> tuple[int, float]:
    """Compress an image file into a .cae file; returns (bytes written, bits per pixel)."""
    if not overwrite and Path(dst).exists():  # before the work, not only at the write
        raise FileExistsError(f"{dst} exists (use --force to overwrite)")
    image = load_image(src)
    data = compress(image, model)
    write_atomic(dst, data, overwrite=overwrite)
    return len(data), 8 * len(data) / (image.shape[0] * image.shape[1])


# -- helpers ------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray) -> tuple[np.ndarray, str]:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        mode, image = "L", np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 3:
        mode = "RGB"
    else:
        raise ValueError(f"images must be (H, W, 3) RGB or (H, W) grayscale, got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: {image.shape}")
    return image, mode


def _pad(image: np.ndarray, tile: int) -> np.ndarray:
    """Replicate the last row and column up to the next multiple of the tile size."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, -h % tile), (0, -w % tile), (0, 0)), mode="edge")


def _tile_batches(padded: np.ndarray, tile: int, batch_tiles: int) -> Iterator[np.ndarray]:
    """(B, P, P, 3) batches of tiles in raster order; only one batch is copied at a time."""
    cols = padded.shape[1] // tile
    n = (padded.shape[0] // tile) * cols
    for start in range(0, n, batch_tiles):
        yield np.stack([
            padded[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            for r, c in (divmod(i, cols) for i in range(start, min(start + batch_tiles, n)))
        ])


def _kept_slots(model: CAE) -> torch.Tensor:
    """Boolean (C, P/8, P/8) on the CPU: the mask, or every slot for an unpruned model."""
    mask = getattr(model, "mask", None)
    if mask is None:
        return torch.ones(model.config.latent_shape(), dtype=torch.bool)
    return mask.detach().to("cpu", torch.bool)


def _device(model: CAE) -> torch.device:
    return next(model.parameters()).device


def _default_batch(device: torch.device) -> int:
    return 1 if device.type == "cpu" else GPU_BATCH_TILES


def _check_model(header: Header, model: CAE, kept: torch.Tensor) -> None:
    """The stream must come from this model; check the fingerprint, then the shapes it
    implies (a crafted header with a matching fingerprint must not size buffers either)."""
    given = model.fingerprint()
    if not given.startswith(header.fingerprint):
        raise ModelMismatchError(header.fingerprint, given)
    expected = (model.config.patch_size, model.config.latent_channels, int(kept.sum()))
    found = (header.tile_size, header.latent_channels, header.kept_per_tile)
    if found != expected:
        raise BitstreamError(
            f"header says tile {found[0]}, {found[1]} channels, {found[2]} kept slots; "
            f"the model has {expected[0]}, {expected[1]}, {expected[2]}"
        )
