"""Whole images through the network in windows of bounded memory, with the result of one pass.

CAE.compress and CAE.decompress run here. An image of up to ONE_WINDOW_PIXELS (padded)
pixels goes through the network in one pass, which is also the fastest way; a larger one in
overlapping windows of at most (TILE + 2 halo)^2 pixels. The halo covers the receptive field
derived from the layers (CAE.encoder_reach, CAE.decoder_reach), windows at the image's border
end at the true border (so the network's reflection padding sees what it sees on the whole
image), and of each window only its core, whose inputs all lie inside it, is kept: the result
is that of one pass over the whole image. The largest buffers are the image, the output image
and the symbols.

Pixels: uint8 v becomes v / 255 for the network; the network's output x in [0, 1] becomes
round(255 x) (half to even). A grayscale image (H, W) is replicated to RGB for the network,
and decoded into (H, W) as the rounded mean of the three decoded channels.

Determinism: PyTorch runs a float32 CPU convolution on oneDNN, whose result at a position
depends only on the inputs it reads (not on the tensor's shape, the position or the thread
count: tests/test_image_codec.py), except that a small input (about 20,000 values) with a
kernel of at most 3 x 3 goes to PyTorch's own im2col + BLAS path, whose float rounding differs. So a
window smaller than SMALL_WINDOW pixels runs as a batch of two copies of itself, which always
takes oneDNN; then every window gives the bits the whole-image pass gives, and the stream
does not depend on TILE or the thread count. Another CPU or a GPU may round a few symbols
differently; any decoder still reads any stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from caeadmm.model import CAE, LATENT_MAX, LATENT_STRIDE, eval_mode, padded_side
from caeadmm.refine import Refinement, refine_window

TILE = 512  # pixels: the core side of a network window (a multiple of 8)
DECODE_TILE = 256  # pixels: the decoder's core side ("auto" beyond one window): a third of
# the activation memory of TILE's windows, at the same speed (docs/bitstream.md, "Memory")
ONE_WINDOW_PIXELS = 1 << 19  # pixels: "auto" runs images up to this size in one window
SMALL_WINDOW = 1 << 16  # pixels: smaller windows run as a batch of two (see above)


def halos(model: CAE) -> tuple[int, int]:
    """(encoder halo, decoder halo) in latent positions."""
    return -(-model.encoder_reach() // LATENT_STRIDE), model.decoder_reach()


def encoder_output(
    image: np.ndarray, model: CAE, kept: torch.Tensor, tile: int | str | None = "auto"
) -> torch.Tensor:
    """The kept channels of the encoder's output for the whole image, before the gain and
    the rounding: float (K, H'/8, W'/8) where H', W' = padded_side(H), padded_side(W);
    computed window by window."""
    rows, cols = (padded_side(n) // LATENT_STRIDE for n in image.shape[:2])
    latent = torch.empty((len(kept), rows, cols))
    halo = halos(model)[0]
    device = device_of(model)
    with inference(model):
        for (r0, r1, s0, s1), (c0, c1, t0, t1) in windows(rows, cols, tile, halo):
            x = window_tensor(image, s0, s1, t0, t1, device)
            y = run(model.encoder, x, x.shape[-2] * x.shape[-1]).float()
            latent[:, r0:r1, c0:c1] = y[0, kept.to(device), r0 - s0 : r1 - s0, c0 - t0 : c1 - t0]
    return latent


def refined(
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
    halo = halos(model)[1]
    device = device_of(model)
    latent = latent.clone()
    with eval_mode(model):
        for (r0, r1, s0, s1), (c0, c1, t0, t1) in windows(rows, cols, tile, halo):
            visible = (min(LATENT_STRIDE * r1, height) - LATENT_STRIDE * r0,
                       min(LATENT_STRIDE * c1, width) - LATENT_STRIDE * c0)
            if min(visible) <= 0:  # a core of padding alone
                continue
            x = window_tensor(image, s0, s1, t0, t1, device)
            window = latent[:, s0:s1, t0:t1].to(device)
            core = (r0 - s0, r1 - s0, c0 - t0, c1 - t0)
            window = refine_window(model, x, window, kept.to(device), core, visible, refine,
                                   quality)
            latent[:, r0:r1, c0:c1] = window[:, core[0] : core[1], core[2] : core[3]].cpu()
    return latent


def window_tensor(
    image: np.ndarray, r0: int, r1: int, c0: int, c1: int, device: torch.device
) -> torch.Tensor:
    """The window's pixels (`window_pixels`) as a (1, 3, h, w) float tensor in [0, 1]."""
    crop = window_pixels(image, r0, r1, c0, c1)
    return torch.from_numpy(crop).permute(2, 0, 1)[None].to(device).float() / 255


def decode(
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
    halo = halos(model)[1]
    device = device_of(model)
    dtype = dtype_of(model)
    shape = (1, model.config.latent_channels)
    with inference(model):
        for (r0, r1, s0, s1), (c0, c1, t0, t1) in windows(rows, cols, tile, halo,
                                                           DECODE_TILE):
            y0, x0 = LATENT_STRIDE * r0, LATENT_STRIDE * c0
            if y0 >= height or x0 >= width:  # a core of padding alone
                continue
            latent = torch.zeros((*shape, s1 - s0, t1 - t0), dtype=dtype, device=device)
            window = torch.from_numpy(symbols[:, s0:s1, t0:t1]).to(device, dtype)
            latent[0, kept.to(device)] = window.clamp(-LATENT_MAX, LATENT_MAX)
            pixels = latent[0, 0].numel() * LATENT_STRIDE**2
            decoded = run(synthesis, latent, pixels)[0]
            y1, x1 = min(LATENT_STRIDE * r1, height), min(LATENT_STRIDE * c1, width)
            top, left = LATENT_STRIDE * (r0 - s0), LATENT_STRIDE * (c0 - t0)
            put(out, y0, x0, decoded[top : top + y1 - y0, left : left + x1 - x0])


def windows(
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
    row_spans = list(spans(rows, row_core, halo))
    col_spans = list(spans(cols, col_core, halo))
    for row_span in row_spans:
        for col_span in col_spans:
            yield row_span, col_span


def spans(n: int, core: int | None, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """Cores of `core` positions covering 0..n, each in a window that reaches `halo` beyond
    it or ends at the true border. All windows have the same length, min(n, core + 2 halo):
    one at the border is moved inward rather than cut, so that no window is needlessly small."""
    core = n if core is None else core
    length = min(n, core + 2 * halo)
    for start in range(0, n, core):
        window = min(max(start - halo, 0), n - length)
        yield start, min(start + core, n), window, window + length


def window_pixels(image: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Pixels of latent rows r0..r1 and columns c0..c1 as (h, w, 3) uint8, with the image
    replicate-padded (its last row and column repeated) wherever the window passes it."""
    height, width = image.shape[:2]
    ys = np.minimum(np.arange(LATENT_STRIDE * r0, LATENT_STRIDE * r1), height - 1)
    xs = np.minimum(np.arange(LATENT_STRIDE * c0, LATENT_STRIDE * c1), width - 1)
    crop = image[np.ix_(ys, xs)]
    return np.repeat(crop[..., None], 3, axis=2) if crop.ndim == 2 else crop


def run(
    network: Callable[[torch.Tensor], torch.Tensor | np.ndarray], x: torch.Tensor, pixels: int
) -> torch.Tensor | np.ndarray:
    """network(x) for a batch of one; a window under SMALL_WINDOW pixels runs as a batch of
    two copies so that every convolution takes oneDNN (see the module docstring)."""
    if pixels < SMALL_WINDOW and x.device.type == "cpu":
        return network(torch.cat([x, x]))[:1]
    return network(x)


def put(out: np.ndarray, y0: int, x0: int, pixels: np.ndarray) -> None:
    """Write decoded RGB pixels into `out` at (y0, x0); into a grayscale `out` as the rounded
    mean of the three channels."""
    h, w = pixels.shape[:2]
    if out.ndim == 2:
        pixels = ((pixels.astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)
    out[y0 : y0 + h, x0 : x0 + w] = pixels


@contextmanager
def inference(model: CAE) -> Iterator[None]:
    """Inference mode with the model in eval mode (BatchNorm running statistics), restored."""
    with eval_mode(model), torch.inference_mode():
        yield


def device_of(model: CAE) -> torch.device:
    return next(model.parameters()).device


def dtype_of(model: CAE) -> torch.dtype:
    return next(model.parameters()).dtype
