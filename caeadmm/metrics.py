"""Image quality and rate metrics, computed the same way for every codec.

All metrics compare two uint8 RGB images of shape (H, W, 3) on the full image, in the 8-bit
range (data_range = 255), as the evaluation protocol (docs/evaluation.md) asks:

- PSNR on 8-bit RGB: 10 log10(255^2 / MSE), the MSE taken over every pixel and channel.
  Identical images give `math.inf`; averaging code (caeadmm.rd) caps it, see `PSNR_CAP_DB`.
- SSIM and MS-SSIM from pytorch-msssim (11x11 Gaussian window, sigma 1.5, float32, the same
  call CompressAI's reference numbers use).
- bpp = 8 * (bytes of the whole file) / (H * W).

Small images. pytorch-msssim's 5-scale MS-SSIM needs a shorter side above 160 pixels
((11 - 1) * 2^4). Below that we use as many scales as fit: L scales need a shorter side above
10 * 2^(L - 1) (so 81-160 px: 4 scales, 41-80: 3, 21-40: 2, 11-20: 1), with the first L
standard weights renormalised to sum to 1; one scale is plain SSIM (negative values clipped to 0,
as MS-SSIM does). Below 11 pixels the Gaussian window shrinks to the largest odd size that fits
(1 for a 1-pixel side), for SSIM and MS-SSIM alike. Kodak (768 x 512) always gets 5 scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim_5
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

DATA_RANGE = 255.0
WIN_SIZE = 11
WIN_SIGMA = 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# Averages and JSON need finite numbers: a PSNR (or MS-SSIM in dB) above this counts as this
# much when averaged. No lossy operating point comes near it.
PSNR_CAP_DB = 100.0


class MetricInputError(ValueError):
    """The two images cannot be compared (wrong dtype, shape or size)."""


def _check_pair(reference: np.ndarray, decoded: np.ndarray) -> None:
    for name, img in (("reference", reference), ("decoded", decoded)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise MetricInputError(f"{name} image must be a uint8 numpy array")
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
            raise MetricInputError(f"{name} image must have shape (H, W, 3), got {img.shape}")
    if reference.shape != decoded.shape:
        raise MetricInputError(
            f"images differ in size: reference {reference.shape}, decoded {decoded.shape}"
        )


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels; `math.inf` for identical images."""
    _check_pair(reference, decoded)
    diff = reference.astype(np.int32) - decoded.astype(np.int32)
    mse = float(np.mean(np.square(diff, dtype=np.int64), dtype=np.float64))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]


def _window_size(short_side: int) -> int:
    """The standard window, or the largest odd window that fits a short side below 11 px."""
    if short_side >= WIN_SIZE:
        return WIN_SIZE
    return short_side if short_side % 2 == 1 else short_side - 1


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales an image of this size gets (5 for anything above 160 px)."""
    short_side = min(height, width)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and short_side > (WIN_SIZE - 1) * 2**scales:
        scales += 1
    return scales


def _gauss_window(win_size: int, channels: int) -> torch.Tensor:
    return _fspecial_gauss_1d(win_size, WIN_SIGMA).repeat(channels, 1, 1, 1)


def ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Single-scale SSIM (mean over channels) on the full image.

    Calls pytorch-msssim's per-image term directly: its public `ssim` squeezes away a side of
    length 1, so it cannot take a 1-pixel-high image. Same numbers as `pytorch_msssim.ssim`.
    """
    _check_pair(reference, decoded)
    x, y = _to_tensor(reference), _to_tensor(decoded)
    win = _gauss_window(_window_size(min(reference.shape[:2])), x.shape[1])
    ssim_per_channel, _ = _ssim(x, y, data_range=DATA_RANGE, win=win, size_average=False)
    return float(ssim_per_channel.mean())


def _ms_ssim_fewer_scales(x: torch.Tensor, y: torch.Tensor, scales: int, win_size: int) -> float:
    """MS-SSIM with `scales` levels: pytorch-msssim's own per-level terms, renormalised weights."""
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype)
    weights = weights / weights.sum()
    win = _gauss_window(win_size, x.shape[1])
    terms = []
    for level in range(scales):
        ssim_per_channel, cs = _ssim(x, y, data_range=DATA_RANGE, win=win, size_average=False)
        if level < scales - 1:
            terms.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=padding)
            y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim_per_channel))
    stacked = torch.stack(terms, dim=0)  # (level, batch, channel)
    return float(torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean())


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM on the full image: 5 scales where they fit, else the fallback in the module doc."""
    _check_pair(reference, decoded)
    x, y = _to_tensor(reference), _to_tensor(decoded)
    height, width = reference.shape[:2]
    scales = ms_ssim_scales(height, width)
    if scales == len(MS_SSIM_WEIGHTS):
        return float(_ms_ssim_5(x, y, data_range=DATA_RANGE, win_size=WIN_SIZE))
    return _ms_ssim_fewer_scales(x, y, scales, _window_size(min(height, width)))


def bpp(n_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a whole file: 8 * bytes / (H * W)."""
    if height <= 0 or width <= 0:
        raise MetricInputError(f"image has no pixels: {height} x {width}")
    return 8.0 * n_bytes / (height * width)


def quality_metrics(reference: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """PSNR, MS-SSIM and SSIM of one decoded image, keyed as in the result rows."""
    return {
        "psnr": psnr(reference, decoded),
        "ms_ssim": ms_ssim(reference, decoded),
        "ssim": ssim(reference, decoded),
    }
