"""Whole images to .cae streams and back: the model's symbols in the format's container.

`compress` checks the image, picks the layout and codes the symbols; the network side is the
model's (caeadmm.model.CAE.compress, decompress: the whole image through the network in
windows of bounded memory, caeadmm.windows), the container and the payloads the format's
(caeadmm.bitstream; docs/bitstream.md is the specification).

Layouts: a channel-masked model (`prune_structure: channel`, or no mask; every shipped one)
writes "predicted": the mask is the same at every latent position, so the network runs over
the whole image, replicate-padded at the bottom and right to a multiple of 8 (at least 16),
and the kept latent channels (K, h, w) are coded as the residuals of a linear prediction
(coding.encode_planes); the decoder reconstructs the whole image and crops the padding. A
model with any other mask (`prune_structure: slot`) writes the "tiles" layout of version 1
(caeadmm.legacy). Streams of the "channels" layout are read.

Grayscale input (H, W) is replicated to RGB for the network and recorded as mode L;
decompress then returns (H, W). Everything else is (H, W, 3) RGB.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from caeadmm import bitstream, legacy, png
from caeadmm.bitstream import (
    DEFAULT_MAX_PIXELS,
    WHOLE_IMAGE_LAYOUTS,
    BitstreamError,
    CaeHeader,
    ModelMismatchError,
)
from caeadmm.files import write_atomic
from caeadmm.images import load_rgb
from caeadmm.model import CAE, LATENT_MAX, quantize
from caeadmm.refine import Refinement

GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}


def compress(
    image: np.ndarray,
    model: CAE,
    *,
    tile: int | str | None = "auto",
    refine: Refinement | None = None,
    quality: float | None = None,
    target_bpp: float | None = None,
) -> bytes:
    """Encode a uint8 image, (H, W, 3) RGB or (H, W) grayscale, into a .cae stream.

    tile: core side in pixels of the windows the network runs over (a multiple of 8; None:
    one window for the whole image; "auto": one window up to windows.ONE_WINDOW_PIXELS, else
    windows.TILE). It bounds memory and does not change the stream.
    refine: optimize the latent for this image before rounding (caeadmm.refine; whole-image
    layouts only): slower encoding, the same decoder.
    quality: a variable-rate model's quality, in [0, quality_levels - 1] (rounded to what the
    stream records, bitstream.quantize_quality); needed by such a model, refused by others.
    target_bpp: instead of a quality, the highest quality whose stream has at most this many
    bits per pixel (search_quality); the lowest quality when none fits.
    """
    image, mode = _check_image(image)
    height, width = image.shape[:2]
    kept = model.kept_channels()
    variable = _check_quality(model, quality, target_bpp)
    if kept is None:  # a slot mask: "tiles", the one layout such a model has
        if variable:
            raise ValueError("a variable-rate model's streams need a whole-image layout")
        if refine is not None and refine.steps > 0:
            raise ValueError("latent refinement needs a whole-image layout ('predicted' or "
                             "'channels')")
        return legacy.tiles_stream(image, model)
    latent = None
    if target_bpp is not None:
        latent = model.image_latent(image, tile)
        quality = search_quality(latent, model, target_bpp, height * width)
    elif quality is not None:
        quality = bitstream.quantize_quality(quality)
    symbols = model.compress(image, quality, tile=tile, refine=refine, latent=latent)
    payload = bitstream.encode_payload(symbols, "predicted")
    header = CaeHeader(
        width=width, height=height, mode=mode, layout="predicted",
        latent_channels=model.config.latent_channels, kept=len(symbols),
        fingerprint=model.fingerprint()[: bitstream.FINGERPRINT_BYTES],
        payload_length=len(payload), quality=quality,
    )
    return bitstream.pack(header, payload)


def search_quality(latent: torch.Tensor, model: CAE, target_bpp: float, pixels: int) -> float:
    """The highest quality (a multiple of 1/bitstream.QUALITY_SCALE) whose stream of this
    image's kept encoder output `latent` (K, h, w, before the gain: CAE.image_latent) takes
    at most `target_bpp` bits per pixel of an image of `pixels` pixels, header included;
    quality 0 when none does.

    Bisection: the rate grows with the quality (tests/test_variable_rate.py), and the encoder
    runs once, since the quality only scales its output (CAE.gained)."""
    if not target_bpp > 0:
        raise ValueError(f"target bpp must be positive, got {target_bpp}")

    def bpp(quality: float) -> float:
        gained = model.gained(latent, quality)[model.stream_channels(quality)]
        symbols = quantize(gained, stochastic=False)
        payload = bitstream.encode_payload(symbols.to(torch.int8).numpy(), "predicted")
        return 8 * (bitstream.HEADER_BYTES + len(payload)) / pixels

    low, high = 0.0, float(model.config.quality_levels - 1)
    if bpp(high) <= target_bpp:
        return high
    if bpp(low) > target_bpp:
        return low
    step = 1 / bitstream.QUALITY_SCALE
    while high - low > step:
        middle = bitstream.quantize_quality((low + high) / 2)
        if middle in (low, high):
            break
        low, high = (middle, high) if bpp(middle) <= target_bpp else (low, middle)
    return low


def _check_quality(model: CAE, quality: float | None, target_bpp: float | None) -> bool:
    """Whether `model` is a variable-rate model; ValueError unless exactly one of quality and
    target_bpp is given for one, and neither for a fixed-rate model."""
    levels = model.config.quality_levels
    if not levels:
        if quality is not None or target_bpp is not None:
            raise ValueError("--quality and --target-bpp are for variable-rate models; this "
                             "model has one rate (choose another model instead)")
        return False
    if (quality is None) == (target_bpp is None):
        raise ValueError("a variable-rate model needs a quality or a target bpp (one of them)")
    if quality is not None and not 0 <= quality <= levels - 1:
        raise ValueError(f"quality must be in [0, {levels - 1}] for this model, got {quality}")
    return True


def decompress(
    data: bytes,
    model: CAE,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    tile: int | str | None = "auto",
) -> np.ndarray:
    """Decode a .cae stream into uint8 pixels: (H, W, 3) RGB, or (H, W) for mode L streams.

    Raises BitstreamError for any malformed stream, ModelMismatchError (a BitstreamError)
    when `model` is not the one that wrote it; both before any image-sized allocation.
    """
    header, payload = bitstream.parse(data, max_pixels)
    _check_model(header, model)
    # The network clamps symbols to +-LATENT_MAX: int8 from here on, a quarter of the int32
    # that the payload decodes into, which is freed before the output is allocated.
    symbols = _as_int8(bitstream.decode_payload(header, payload))
    shape = (header.height, header.width) + (() if header.mode == "L" else (3,))
    out = np.empty(shape, np.uint8)
    if header.layout in WHOLE_IMAGE_LAYOUTS:
        latent = symbols.reshape(header.kept, *header.latent_size)
        model.decompress(latent, out, header.quality, tile=tile)
    else:
        legacy.decode_tiles(symbols, model, out)
    return out


def _as_int8(symbols: np.ndarray) -> np.ndarray:
    """Symbols clamped to +-LATENT_MAX (what the network reads) as int8, in blocks (no
    int32-sized temporary)."""
    out = np.empty(symbols.shape, np.int8)
    flat, dst = symbols.reshape(-1), out.reshape(-1)
    for start in range(0, flat.size, 1 << 22):
        block = flat[start : start + (1 << 22)]
        dst[start : start + block.size] = np.clip(block, -LATENT_MAX, LATENT_MAX)
    return out


# -- files: the form the CLI and the batch job share ------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file for `compress`: (H, W) if the file is grayscale, else (H, W, 3).

    Pixels come from images.load_rgb (the project's one decoder); only the file's mode is
    looked up here, so that grayscale files round-trip as grayscale. An alpha channel is
    composited over white and dropped, with a warning.
    """
    rgb = load_rgb(path)
    with Image.open(path) as img:
        gray = img.mode in GRAY_MODES
        alpha = img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    if alpha:
        warnings.warn(f"{path}: alpha channel dropped (composited over white)", stacklevel=2)
    return rgb[..., 0].copy() if gray else rgb


def save_image(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False) -> None:
    """Write pixels in the format the file extension names (PNG, TIFF, ...), atomically."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r} (try .png)")
    if fmt == "PNG" and image.shape[0] * image.shape[1] > png.LARGE_PIXELS:
        write_atomic(path, lambda fh: png.write_png(fh, image), overwrite=overwrite)
        return  # in the memory of a few rows (Pillow's needs 2.5 times the image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    write_atomic(path, buffer.getvalue(), overwrite=overwrite)


def compress_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model: CAE,
    *,
    overwrite: bool = False,
    refine: Refinement | None = None,
    quality: float | None = None,
    target_bpp: float | None = None,
) -> tuple[int, float, float | None]:
    """Compress an image file into a .cae file; returns (bytes written, bits per pixel, the
    quality coded at: None for a fixed-rate model). An existing `dst` is the caller's to
    judge before the work (caeadmm.cli.common.check_existing, caeadmm.outputs); without
    `overwrite` the atomic write refuses one that appeared meanwhile (FileExistsError)."""
    image = load_image(src)
    data = compress(image, model, refine=refine, quality=quality, target_bpp=target_bpp)
    write_atomic(dst, data, overwrite=overwrite)
    used = bitstream.read_header(data, max_pixels=None).quality
    return len(data), 8 * len(data) / (image.shape[0] * image.shape[1]), used


# -- helpers ------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> tuple[np.ndarray, str]:
    """(image as (H, W, 3) or (H, W) uint8, its mode "RGB" or "L"); ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"images must be (H, W, 3) RGB or (H, W) grayscale, got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: {image.shape}")
    return image, "L" if image.ndim == 2 else "RGB"


def _check_model(header: CaeHeader, model: CAE) -> None:
    """The stream must come from this model; check the fingerprint, then the shapes it
    implies (a crafted header with a matching fingerprint must not size buffers either)."""
    given = model.fingerprint()
    if not given.startswith(header.fingerprint):
        raise ModelMismatchError(header.fingerprint, given)
    levels = model.config.quality_levels
    if (header.quality is not None) != bool(levels):
        raise BitstreamError("a variable-rate stream needs a variable-rate model, and back")
    if header.quality is not None and header.quality > levels - 1:
        raise BitstreamError(f"quality {header.quality} is beyond the model's {levels - 1}")
    channels = model.config.latent_channels
    if header.layout in WHOLE_IMAGE_LAYOUTS:
        kept = model.kept_channels()
        if kept is None:
            raise BitstreamError("a whole-image stream, but the model's mask is not the same "
                                 "at every latent position")
        held = len(model.stream_channels(header.quality))
        expected, found = (channels, held), (header.latent_channels, header.kept)
        what = "{} channels, {} kept"
    else:
        expected = (model.config.patch_size, channels, int(legacy.kept_slots(model).sum()))
        found = (header.tile_size, header.latent_channels, header.kept)
        what = "tile {}, {} channels, {} kept slots"
    if found != expected:
        raise BitstreamError(
            f"header says {what.format(*found)}; the model has {what.format(*expected)}"
        )
