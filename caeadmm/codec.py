"""Whole images to .cae streams and back (the format: docs/bitstream.md).

Channel-masked models (`prune_structure: channel`, or no mask) use the "predicted" layout:
the mask is the same at every latent position, so the network runs over the whole image,
replicate-padded at the bottom and right to a multiple of 8 (at least 16), the kept latent
channels (K, h, w) are coded as the residuals of a linear prediction from each symbol's
causal neighbours and the channels before it, with a Huffman table per group of channels
(coding.encode_planes), and the decoder reconstructs the whole image and crops the padding.
The "channels" layout is the same latent without the prediction (coding.encode_channels;
written before "predicted" existed, and still read). Models with any other mask
(`prune_structure: slot`) keep the "tiles" layout of version 1: independent P x P tiles,
each coded as its kept mask slots, all with one Huffman table (coding.encode).

Bounded memory: an image of up to ONE_WINDOW_PIXELS (padded) pixels goes through the
network in one pass, which is also the fastest way; a larger one in overlapping windows of
at most (TILE + 2 halo)^2 pixels. The halo covers the receptive field derived from the
layers (`encoder_reach`, `decoder_reach`), windows at the image's border end at the true
border (so the network's reflection padding sees what it sees on the whole image), and of
each window only its core, whose inputs all lie inside it, is kept: the result is that of
one pass over the whole image.
The largest buffers are the image, the output image and the symbols (one byte each while
encoding, four while decoding).

Pixels: uint8 v becomes v / 255 for the network; the network's output x in [0, 1] becomes
round(255 x) (half to even). Grayscale input (H, W) is replicated to RGB for the network and
recorded as mode L; decompress then returns (H, W), the rounded mean of the three decoded
channels. Everything else is (H, W, 3) RGB.

Determinism: PyTorch runs a float32 CPU convolution on oneDNN, whose result at a position
depends only on the inputs it reads (not on the tensor's shape, the position or the thread
count: tests/test_image_codec.py), except that a small input (about 20,000 values) with a kernel of
at most 3 x 3 goes to PyTorch's own im2col + BLAS path, whose float rounding differs. So a
window smaller than SMALL_WINDOW pixels runs as a batch of two copies of itself, which always
takes oneDNN; then every window gives the bits the whole-image pass gives, and the stream
does not depend on TILE or the thread count. Another CPU or a GPU may round a few symbols
differently; any decoder still reads any stream.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import coding
from caeadmm import bitstream, png
from caeadmm.bitstream import (
    DEFAULT_MAX_PIXELS,
    LATENT_STRIDE,
    WHOLE_IMAGE_LAYOUTS,
    BitstreamError,
    CaeHeader,
    ModelMismatchError,
    padded_side,
)
from caeadmm.files import write_atomic
from caeadmm.images import load_rgb
from caeadmm.model import CAE, LATENT_MAX, channel_support, eval_mode, quantize
from caeadmm.refine import Refinement, refine_window
from coding.format import unpack_header

TILE = 512  # pixels: the core side of a network window (a multiple of 8)
DECODE_TILE = 256  # pixels: the decoder's core side ("auto" beyond one window): a third of
# the activation memory of TILE's windows, at the same speed (docs/bitstream.md, "Memory")
ONE_WINDOW_PIXELS = 1 << 19  # pixels: "auto" runs images up to this size in one window
SMALL_WINDOW = 1 << 16  # pixels: smaller windows run as a batch of two (see above)
GPU_BATCH_TILES = 32  # "tiles" layout on a GPU: tiles per network call
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}


def compress(
    image: np.ndarray,
    model: CAE,
    *,
    tile: int | str | None = "auto",
    layout: str | None = None,
    refine: Refinement | None = None,
    quality: float | None = None,
    target_bpp: float | None = None,
) -> bytes:
    """Encode a uint8 image, (H, W, 3) RGB or (H, W) grayscale, into a .cae stream.

    tile: core side in pixels of the windows the network runs over (a multiple of 8; None:
    one window for the whole image; "auto": one window up to ONE_WINDOW_PIXELS, else TILE).
    It bounds memory and does not change the stream.
    layout: None picks "predicted" when the model's mask allows it, else "tiles";
    "channels" codes the same latent without the prediction and "tiles" forces independent
    tiles (version 1's layout), both for comparisons.
    refine: optimize the latent for this image before rounding (caeadmm.refine; whole-image
    layouts only): slower encoding, the same decoder.
    quality: a variable-rate model's quality, in [0, quality_levels - 1] (rounded to what the
    stream records, bitstream.quantize_quality); needed by such a model, refused by others.
    target_bpp: instead of a quality, the highest quality whose stream has at most this many
    bits per pixel (search_quality); the lowest quality when none fits.
    """
    if layout not in (None, "tiles", *WHOLE_IMAGE_LAYOUTS):
        raise ValueError(
            f"layout must be None, 'tiles', 'channels' or 'predicted', got {layout!r}"
        )
    image, mode = _check_image(image)
    height, width = image.shape[:2]
    kept = kept_channels(model)
    if layout in WHOLE_IMAGE_LAYOUTS and kept is None:
        raise ValueError(f"the {layout!r} layout needs a mask that is the same at every "
                         "latent position (prune_structure: channel)")
    fingerprint = model.fingerprint()[: bitstream.FINGERPRINT_BYTES]
    channels = model.config.latent_channels
    variable = _check_quality(model, quality, target_bpp)
    if variable and (kept is None or layout == "tiles"):
        raise ValueError("a variable-rate model's streams need a whole-image layout")
    if kept is None or layout == "tiles":
        if refine is not None and refine.steps > 0:
            raise ValueError("latent refinement needs a whole-image layout "
                             "('predicted' or 'channels')")
        symbols, layout = _encode_tiles(image, model), "tiles"
        kept_count, tile_size = int(_kept_slots(model).sum()), model.config.patch_size
    else:
        kept_count, tile_size, layout = len(kept), 0, layout or "predicted"
        latent = _encoder_output(image, model, kept, tile)
        if target_bpp is not None:
            quality = search_quality(latent, model, kept, layout, target_bpp, height * width)
        elif quality is not None:
            quality = bitstream.quantize_quality(quality)
        latent = _with_gain(latent, model, kept, quality)
        if refine is not None and refine.steps > 0:
            latent = _refined(image, model, kept, latent, tile, refine, quality)
        symbols = quantize(latent, stochastic=False).to(torch.int8).numpy()
    payload = _encode_payload(symbols, layout)
    header = CaeHeader(
        width=width, height=height, mode=mode, layout=layout, latent_channels=channels,
        kept=kept_count, fingerprint=fingerprint, payload_length=len(payload),
        tile_size=tile_size, quality=quality,
    )
    return bitstream.pack(header, payload)


def search_quality(
    latent: torch.Tensor,
    model: CAE,
    kept: torch.Tensor,
    layout: str,
    target_bpp: float,
    pixels: int,
) -> float:
    """The highest quality (a multiple of 1/bitstream.QUALITY_SCALE) whose stream of this
    encoder output `latent` (K, h, w, before the gain) takes at most `target_bpp` bits per
    pixel of an image of `pixels` pixels, header included; quality 0 when none does.

    Bisection: the rate grows with the quality (tests/test_variable_rate.py), and the encoder
    runs once, since the quality only scales its output (CAE.gain)."""
    if not target_bpp > 0:
        raise ValueError(f"target bpp must be positive, got {target_bpp}")

    def bpp(quality: float) -> float:
        symbols = quantize(_with_gain(latent, model, kept, quality), stochastic=False)
        payload = _encode_payload(symbols.to(torch.int8).numpy(), layout)
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
    symbols = _as_int8(decode_payload(header, payload))
    shape = (header.height, header.width) + (() if header.mode == "L" else (3,))
    out = np.empty(shape, np.uint8)
    if header.layout in WHOLE_IMAGE_LAYOUTS:
        latent = symbols.reshape(header.kept, *header.latent_size)
        _decode_channels(latent, model, kept_channels(model), tile, out, header.quality)
    else:
        _decode_tiles(symbols, model, out)
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


def _encode_payload(symbols: np.ndarray, layout: str) -> bytes:
    """The coded payload: "predicted" symbols (K, h, w) as prediction residuals
    (coding.encode_planes), "channels" symbols with a Huffman table per group of channels
    (coding.encode_channels over (K, h w)), "tiles" symbols with one table."""
    if layout == "predicted":
        return coding.encode_planes(symbols)
    if layout == "channels":
        kept, rows, cols = symbols.shape
        return coding.encode_channels(symbols.reshape(kept, rows * cols))
    return coding.encode(symbols.ravel())


def decode_payload(header: CaeHeader, payload: bytes) -> np.ndarray:
    """The payload's symbols, checked against the header: (K, h w) for the whole-image
    layouts, (tiles, K) for "tiles". The header bounds the symbol count before anything is
    decoded or allocated; any disagreement, or a coding.CorruptStreamError, raises
    BitstreamError."""
    try:
        if header.layout in WHOLE_IMAGE_LAYOUTS:
            rows, cols = header.latent_size
            # The bound admits the position count of a stream with no kept channels too.
            limit = max(header.n_symbols, rows * cols)
            if header.layout == "predicted":
                planes = coding.decode_planes(payload, max_symbols=limit)
                if planes.shape != (header.kept, rows, cols):
                    raise BitstreamError(
                        f"payload holds {' x '.join(map(str, planes.shape))} symbols, the "
                        f"header implies {header.kept} x {rows} x {cols}"
                    )
                return planes.reshape(header.kept, rows * cols)
            symbols = coding.decode_channels(payload, max_symbols=limit)
            if symbols.shape != (header.kept, rows * cols):
                raise BitstreamError(
                    f"payload holds {symbols.shape[0]} channels x {symbols.shape[1]} "
                    f"positions, the header implies {header.kept} x {rows * cols}"
                )
            return symbols
        # The payload's own symbol count (its first bytes) is checked before anything is
        # decoded: a crafted count must not size an allocation.
        count = unpack_header(payload)[0].count
        if count != header.n_symbols:
            raise BitstreamError(
                f"payload holds {count} symbols, the header implies {header.n_symbols}"
            )
        rows, cols = header.tiles
        return coding.decode(payload).reshape(rows * cols, header.kept)
    except coding.CorruptStreamError as exc:
        raise BitstreamError(f"corrupt payload: {exc}") from exc


# -- receptive fields ----------------------------------------------------------------------


def encoder_reach(model: CAE) -> int:
    """Pixels each way an encoder output reads: latent position j (per axis) depends on input
    pixels 8 j - reach .. 8 j + reach and no others. Derived from the layers: every
    convolution (centred by its padding) adds its half kernel times the stride so far."""
    reach, stride = 0, 1
    for layer in _centred_convs(model.encoder):
        reach += (layer.kernel_size[0] - 1) // 2 * layer.dilation[0] * stride
        stride *= layer.stride[0]
    if stride != LATENT_STRIDE:
        raise ValueError(f"encoder stride {stride}, the format needs {LATENT_STRIDE}")
    return reach


def decoder_reach(model: CAE) -> int:
    """Latent positions each way a decoded pixel reads beyond its own: the pixels of latent
    position j depend on latent positions j - reach .. j + reach only. Each convolution adds
    its half kernel in latent units (divided by the pixel-shuffle factor so far), rounded up."""
    reach, scale = Fraction(0), 1
    for layer in model.decoder.modules():
        if isinstance(layer, nn.Conv2d):
            if layer.stride != (1, 1):
                raise ValueError("a strided convolution in the decoder: derive its reach by hand")
            reach += Fraction((layer.kernel_size[0] - 1) // 2 * layer.dilation[0], scale)
        elif isinstance(layer, nn.PixelShuffle):
            scale *= layer.upscale_factor
    if scale != LATENT_STRIDE:
        raise ValueError(f"decoder upscales by {scale}, the format needs {LATENT_STRIDE}")
    return math.ceil(reach)


def _centred_convs(network: nn.Module) -> Iterator[nn.Conv2d]:
    """The convolutions in execution order, checked to be square and centred (reflection pad
    plus own padding = half the kernel), the form the reach formulas assume."""
    pad = 0
    for layer in network.modules():
        if isinstance(layer, nn.ReflectionPad2d):
            pad = layer.padding[0]
        elif isinstance(layer, nn.Conv2d):
            k, d = layer.kernel_size[0], layer.dilation[0]
            total = pad + layer.padding[0]
            if layer.kernel_size[1] != k or k % 2 == 0 or total != (k - 1) // 2 * d:
                raise ValueError(f"{layer} is not square and centred: derive its reach by hand")
            pad = 0
            yield layer


def _halos(model: CAE) -> tuple[int, int]:
    """(encoder halo, decoder halo) in latent positions."""
    return -(-encoder_reach(model) // LATENT_STRIDE), decoder_reach(model)


# -- the whole-image layouts ("predicted", "channels"), in windows ----------------------------


def kept_channels(model: CAE) -> torch.Tensor | None:
    """Indices of the kept latent channels (all for an unpruned model), or None when the
    mask is not channel-structured (not the same at every latent position)."""
    mask = getattr(model, "mask", None)
    if mask is None:
        return torch.arange(model.config.latent_channels)
    support = channel_support(mask.cpu())
    return None if support is None else torch.nonzero(support).flatten()


def _encoder_output(
    image: np.ndarray, model: CAE, kept: torch.Tensor, tile: int | str | None = "auto"
) -> torch.Tensor:
    """The kept channels of the encoder's output for the whole image, before the gain and
    the rounding: float (K, H'/8, W'/8) where H', W' = padded_side(H), padded_side(W);
    computed window by window."""
    rows, cols = (padded_side(n) // LATENT_STRIDE for n in image.shape[:2])
    latent = torch.empty((len(kept), rows, cols))
    halo = _halos(model)[0]
    device = _device(model)
    with _inference(model):
        for (r0, r1, s0, s1), (c0, c1, t0, t1) in _windows(rows, cols, tile, halo):
            x = _window_tensor(image, s0, s1, t0, t1, device)
            y = _run(model.encoder, x, x.shape[-2] * x.shape[-1]).float()
            latent[:, r0:r1, c0:c1] = y[0, kept.to(device), r0 - s0 : r1 - s0, c0 - t0 : c1 - t0]
    return latent


def _with_gain(
    latent: torch.Tensor, model: CAE, kept: torch.Tensor, quality: float | None
) -> torch.Tensor:
    """The encoder output (K, h, w) times the model's gain of the kept channels at `quality`
    (CAE.gain; elementwise, so the same bits as CAE.analysis): the values that get rounded."""
    gain = model.gain(quality)
    if gain is None:
        return latent
    return latent * gain.detach().reshape(-1)[kept.to(gain.device)].cpu()[:, None, None]


def _refined(
    image: np.ndarray,
    model: CAE,
    kept: torch.Tensor,
    latent: torch.Tensor,
    tile: int | str | None,
    refine: Refinement,
    quality: float | None = None,
) -> torch.Tensor:
    """`latent` (K, h, w, on the CPU) refined core by core over the decoder's windows, each
    core with the latent around it as refined so far (caeadmm.refine.refine_window)."""
    rows, cols = latent.shape[-2:]
    height, width = image.shape[:2]
    halo = _halos(model)[1]
    device = _device(model)
    latent = latent.clone()
    with eval_mode(model):
        for (r0, r1, s0, s1), (c0, c1, t0, t1) in _windows(rows, cols, tile, halo):
            visible = (min(LATENT_STRIDE * r1, height) - LATENT_STRIDE * r0,
                       min(LATENT_STRIDE * c1, width) - LATENT_STRIDE * c0)
            if min(visible) <= 0:  # a core of padding alone
                continue
            x = _window_tensor(image, s0, s1, t0, t1, device)
            window = latent[:, s0:s1, t0:t1].to(device)
            core = (r0 - s0, r1 - s0, c0 - t0, c1 - t0)
            window = refine_window(model, x, window, kept.to(device), core, visible, refine,
                                   quality)
            latent[:, r0:r1, c0:c1] = window[:, core[0] : core[1], core[2] : core[3]].cpu()
    return latent


def _window_tensor(
    image: np.ndarray, r0: int, r1: int, c0: int, c1: int, device: torch.device
) -> torch.Tensor:
    """The window's pixels (`_window_pixels`) as a (1, 3, h, w) float tensor in [0, 1]."""
    crop = _window_pixels(image, r0, r1, c0, c1)
    return torch.from_numpy(crop).permute(2, 0, 1)[None].to(device).float() / 255


def _decode_channels(
    symbols: np.ndarray,
    model: CAE,
    kept: torch.Tensor,
    tile: int | str | None,
    out: np.ndarray,
    quality: float | None = None,
) -> None:
    """Decode (K, h, w) symbols window by window into `out`, (H, W, 3) or (H, W) for L; a
    variable-rate model's decoder at `quality`."""
    synthesis = partial(model.synthesis_uint8, quality=quality)
    _, rows, cols = symbols.shape
    height, width = out.shape[:2]
    halo = _halos(model)[1]
    device = _device(model)
    dtype = _dtype(model)
    shape = (1, model.config.latent_channels)
    with _inference(model):
        for (r0, r1, s0, s1), (c0, c1, t0, t1) in _windows(rows, cols, tile, halo,
                                                           DECODE_TILE):
            y0, x0 = LATENT_STRIDE * r0, LATENT_STRIDE * c0
            if y0 >= height or x0 >= width:  # a core of padding alone
                continue
            latent = torch.zeros((*shape, s1 - s0, t1 - t0), dtype=dtype, device=device)
            window = torch.from_numpy(symbols[:, s0:s1, t0:t1]).to(device, dtype)
            latent[0, kept.to(device)] = window.clamp(-LATENT_MAX, LATENT_MAX)
            pixels = latent[0, 0].numel() * LATENT_STRIDE**2
            decoded = _run(synthesis, latent, pixels)[0]
            y1, x1 = min(LATENT_STRIDE * r1, height), min(LATENT_STRIDE * c1, width)
            top, left = LATENT_STRIDE * (r0 - s0), LATENT_STRIDE * (c0 - t0)
            _put(out, y0, x0, decoded[top : top + y1 - y0, left : left + x1 - x0])


def _windows(
    rows: int, cols: int, tile: int | str | None, halo: int, auto_tile: int = TILE
) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Per window ((core rows, window rows), (core columns, window columns)) in latent
    positions, each as (core start, core end, window start, window end), raster order.

    Cores are tile / 8 positions a side ("auto": one window up to ONE_WINDOW_PIXELS, else
    `auto_tile`); on an image thinner than that, a window spans the whole short side and its
    core grows along the long side to the same area (a square core's), so that a thin image
    runs in as few calls and as little halo per pixel as a square one, in the same memory."""
    if tile == "auto":
        tile = None if rows * cols * LATENT_STRIDE**2 <= ONE_WINDOW_PIXELS else auto_tile
    row_core = col_core = None if tile is None else max(1, tile // LATENT_STRIDE)
    if tile is not None and min(rows, cols) < row_core:
        area = row_core * row_core
        if rows < cols:
            row_core, col_core = rows, max(col_core, area // rows)
        else:
            row_core, col_core = max(row_core, area // cols), cols
    row_spans = list(_spans(rows, row_core, halo))
    col_spans = list(_spans(cols, col_core, halo))
    for row_span in row_spans:
        for col_span in col_spans:
            yield row_span, col_span


def _spans(n: int, core: int | None, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """Cores of `core` positions covering 0..n, each in a window that reaches `halo` beyond
    it or ends at the true border. All windows have the same length, min(n, core + 2 halo):
    one at the border is moved inward rather than cut, so that no window is needlessly small."""
    core = n if core is None else core
    length = min(n, core + 2 * halo)
    for start in range(0, n, core):
        window = min(max(start - halo, 0), n - length)
        yield start, min(start + core, n), window, window + length


def _window_pixels(image: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Pixels of latent rows r0..r1 and columns c0..c1 as (h, w, 3) uint8, with the image
    replicate-padded (its last row and column repeated) wherever the window passes it."""
    height, width = image.shape[:2]
    ys = np.minimum(np.arange(LATENT_STRIDE * r0, LATENT_STRIDE * r1), height - 1)
    xs = np.minimum(np.arange(LATENT_STRIDE * c0, LATENT_STRIDE * c1), width - 1)
    crop = image[np.ix_(ys, xs)]
    return np.repeat(crop[..., None], 3, axis=2) if crop.ndim == 2 else crop


def _run(
    network: Callable[[torch.Tensor], torch.Tensor | np.ndarray], x: torch.Tensor, pixels: int
) -> torch.Tensor | np.ndarray:
    """network(x) for a batch of one; a window under SMALL_WINDOW pixels runs as a batch of
    two copies so that every convolution takes oneDNN (see the module docstring)."""
    if pixels < SMALL_WINDOW and x.device.type == "cpu":
        return network(torch.cat([x, x]))[:1]
    return network(x)


def _put(out: np.ndarray, y0: int, x0: int, pixels: np.ndarray) -> None:
    """Write decoded RGB pixels into `out` at (y0, x0); into a grayscale `out` as the rounded
    mean of the three channels."""
    h, w = pixels.shape[:2]
    if out.ndim == 2:
        pixels = ((pixels.astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)
    out[y0 : y0 + h, x0 : x0 + w] = pixels


# -- the "tiles" layout: independent P x P tiles (slot masks, version 1 streams) -------------


def _encode_tiles(image: np.ndarray, model: CAE) -> np.ndarray:
    """The kept slots of every tile, tiles in raster order: int32 (tiles, K)."""
    tile = model.config.patch_size
    step = tile // LATENT_STRIDE
    rows, cols = -(-image.shape[0] // tile), -(-image.shape[1] // tile)
    kept = _kept_slots(model)
    device = _device(model)
    batch = _tiles_per_call(device)
    symbols = []
    with torch.inference_mode():
        for start in range(0, rows * cols, batch):
            positions = (divmod(i, cols) for i in range(start, min(start + batch, rows * cols)))
            crops = [
                _window_pixels(image, r * step, (r + 1) * step, c * step, (c + 1) * step)
                for r, c in positions
            ]
            x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().to(device)
            symbols.append(model.encode(x.float() / 255).cpu()[:, kept].numpy())
    return np.concatenate(symbols)


def _decode_tiles(symbols: np.ndarray, model: CAE, out: np.ndarray) -> None:
    """Decode (tiles, K) symbols tile by tile into `out`, cropping the padding."""
    tile = model.config.patch_size
    height, width = out.shape[:2]
    cols = -(-width // tile)
    kept = _kept_slots(model)
    device = _device(model)
    batch = _tiles_per_call(device)
    latent_shape = model.config.latent_shape()
    with torch.inference_mode():
        for start in range(0, len(symbols), batch):
            chunk = torch.from_numpy(symbols[start : start + batch]).to(torch.int32)
            latent = torch.zeros((len(chunk), *latent_shape), dtype=torch.int32)
            latent[:, kept] = chunk
            latent = latent.clamp(-LATENT_MAX, LATENT_MAX).to(device, _dtype(model))
            pixels = model.synthesis_uint8(model._apply_mask(latent))
            for i, tile_pixels in enumerate(pixels):
                r, c = divmod(start + i, cols)
                y0, x0 = r * tile, c * tile
                _put(out, y0, x0, tile_pixels[: height - y0, : width - x0])


def _kept_slots(model: CAE) -> torch.Tensor:
    """Boolean (C, P/8, P/8) on the CPU: the mask, or every slot for an unpruned model."""
    mask = getattr(model, "mask", None)
    if mask is None:
        return torch.ones(model.config.latent_shape(), dtype=torch.bool)
    return mask.detach().to("cpu", torch.bool)


def _tiles_per_call(device: torch.device) -> int:
    """1 on the CPU (a tile's result then depends on that tile alone), more on a GPU."""
    return 1 if device.type == "cpu" else GPU_BATCH_TILES


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
    quality coded at: None for a fixed-rate model)."""
    if not overwrite and Path(dst).exists():  # before the work, not only at the write
        raise FileExistsError(f"{dst} exists (use --force to overwrite)")
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


@contextmanager
def _inference(model: CAE) -> Iterator[None]:
    """Inference mode with the model in eval mode (BatchNorm running statistics), restored."""
    with eval_mode(model), torch.inference_mode():
        yield


def _device(model: CAE) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: CAE) -> torch.dtype:
    return next(model.parameters()).dtype


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
        kept = kept_channels(model)
        if kept is None:
            raise BitstreamError("a whole-image stream, but the model's mask is not the same "
                                 "at every latent position")
        expected, found = (channels, len(kept)), (header.latent_channels, header.kept)
        what = "{} channels, {} kept"
    else:
        expected = (model.config.patch_size, channels, int(_kept_slots(model).sum()))
        found = (header.tile_size, header.latent_channels, header.kept)
        what = "tile {}, {} channels, {} kept slots"
    if found != expected:
        raise BitstreamError(
            f"header says {what.format(*found)}; the model has {what.format(*expected)}"
        )
