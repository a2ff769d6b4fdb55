"""The layouts this version reads but does not choose for a channel-masked model.

"tiles" (version 1's layout, and version 2's layout 0): independent P x P tiles, each coded
as the kept slots of its mask, all tiles with one Huffman table. It is still the only layout
of a model whose mask differs between latent positions (`prune_structure: slot`), so
caeadmm.codec writes it for such a model (`tiles_stream`); for every other model it is
read (`decode_tiles`), and written only by benches and tests that compare the layouts.

"channels" (layout 1, before "predicted" existed): the whole-image latent of "predicted"
without the prediction. Decode-only: its network side is the whole-image decoder of
CAE.decompress, and its payload (a Huffman table per group of channels) is read by
caeadmm.bitstream.decode_payload with the other layouts' payloads.
"""

from __future__ import annotations

import numpy as np
import torch

from caeadmm import bitstream
from caeadmm.model import CAE, LATENT_MAX, LATENT_STRIDE
from caeadmm.windows import device_of, dtype_of, put, window_pixels

GPU_BATCH_TILES = 32  # "tiles" layout on a GPU: tiles per network call


def tiles_stream(image: np.ndarray, model: CAE) -> bytes:
    """The "tiles" stream of a checked uint8 image, (H, W, 3) or (H, W) (mode L)."""
    payload = bitstream.encode_payload(encode_tiles(image, model), "tiles")
    header = bitstream.CaeHeader(
        width=image.shape[1], height=image.shape[0], mode="L" if image.ndim == 2 else "RGB",
        layout="tiles", latent_channels=model.config.latent_channels,
        kept=int(kept_slots(model).sum()),
        fingerprint=model.fingerprint()[: bitstream.FINGERPRINT_BYTES],
        payload_length=len(payload), tile_size=model.config.patch_size,
    )
    return bitstream.pack(header, payload)


def encode_tiles(image: np.ndarray, model: CAE) -> np.ndarray:
    """The kept slots of every tile, tiles in raster order: int32 (tiles, K)."""
    tile = model.config.patch_size
    step = tile // LATENT_STRIDE
    rows, cols = -(-image.shape[0] // tile), -(-image.shape[1] // tile)
    kept = kept_slots(model)
    device = device_of(model)
    batch = _tiles_per_call(device)
    symbols = []
    with torch.inference_mode():
        for start in range(0, rows * cols, batch):
            positions = (divmod(i, cols) for i in range(start, min(start + batch, rows * cols)))
            crops = [
                window_pixels(image, r * step, (r + 1) * step, c * step, (c + 1) * step)
                for r, c in positions
            ]
            x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().to(device)
            symbols.append(model.encode(x.float() / 255).cpu()[:, kept].numpy())
    return np.concatenate(symbols)


def decode_tiles(symbols: np.ndarray, model: CAE, out: np.ndarray) -> None:
    """Decode (tiles, K) symbols tile by tile into `out`, cropping the padding."""
    tile = model.config.patch_size
    height, width = out.shape[:2]
    cols = -(-width // tile)
    kept = kept_slots(model)
    device = device_of(model)
    batch = _tiles_per_call(device)
    latent_shape = model.config.latent_shape()
    with torch.inference_mode():
        for start in range(0, len(symbols), batch):
            chunk = torch.from_numpy(symbols[start : start + batch]).to(torch.int32)
            latent = torch.zeros((len(chunk), *latent_shape), dtype=torch.int32)
            latent[:, kept] = chunk
            latent = latent.clamp(-LATENT_MAX, LATENT_MAX).to(device, dtype_of(model))
            pixels = model.synthesis_uint8(model._apply_mask(latent))
            for i, tile_pixels in enumerate(pixels):
                r, c = divmod(start + i, cols)
                y0, x0 = r * tile, c * tile
                put(out, y0, x0, tile_pixels[: height - y0, : width - x0])


def kept_slots(model: CAE) -> torch.Tensor:
    """Boolean (C, P/8, P/8) on the CPU: the mask, or every slot for an unpruned model."""
    mask = getattr(model, "mask", None)
    if mask is None:
        return torch.ones(model.config.latent_shape(), dtype=torch.bool)
    return mask.detach().to("cpu", torch.bool)


def _tiles_per_call(device: torch.device) -> int:
    """1 on the CPU (a tile's result then depends on that tile alone), more on a GPU."""
    return 1 if device.type == "cpu" else GPU_BATCH_TILES
