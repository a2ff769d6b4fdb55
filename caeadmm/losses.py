"""The training loss of CAE-ADMM (docs/method.md, docs/rate.md), built on pytorch-msssim.

    distortion = w_msssim (1 - MS-SSIM) + w_ssim (1 - SSIM) + w_mse MSE + w_psnr (psnr_ref - PSNR)
    loss = distortion + rate_lambda * bpp      (bpp: the entropy model's estimate)

with the paper's weights 1000, 1000, 1e4, 1 and psnr_ref = 45 by default; the warm-up phase
uses w_mse * MSE alone as its distortion. PSNR is per image (peak 1.0), averaged over the
batch, as the evaluation averages it. rate_lambda = 0 (the default) is the paper's loss.

Window choice. pytorch-msssim's `ms_ssim` always downsamples four times and asserts that the
smaller side exceeds (win_size - 1) * 16, i.e. 160 px for the standard 11-tap window. So the
SSIM term uses the standard window (11 taps, sigma 1.5: exactly the evaluation metric), while
the MS-SSIM term keeps the standard five scales and their weights (0.0448, 0.2856, 0.3001,
0.2363, 0.1333) and sigma 1.5 but takes the largest odd window that fits the patch:
11 taps from 161 px, 9 from 129 px, 7 at 128 px (a Gaussian cut at 2 sigma instead of
3.3 sigma, so almost the same filter), 3 at 64 px. Patches of 32 px or less leave no usable
window; with them set w_msssim = 0.
"""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ms_ssim, ssim

from caeadmm.config import TrainConfig

SSIM_WINDOW = 11
MS_SSIM_MAX_WINDOW = 11


class LossConfigError(ValueError):
    """The images are too small for a requested loss term."""


def ms_ssim_window(side: int) -> int:
    """The largest odd window (at most 11) with (window - 1) * 16 < side."""
    window = min(MS_SSIM_MAX_WINDOW, (side - 1) // 16 + 1)
    window -= 1 - window % 2  # make it odd
    if window < 3:
        raise LossConfigError(
            f"MS-SSIM needs images over 32 px (got {side} px); set w_msssim=0 for smaller patches"
        )
    return window


def per_image_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image of a batch, shape (B,)."""
    return (x_hat - x).square().flatten(1).mean(dim=1)


def psnr_of_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of MSEs of images in [0, 1] (peak 1.0); MSE floored at 1e-10."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], shape (B,)."""
    return psnr_of_mse(per_image_mse(x_hat, x))


def distortion(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    *,
    w_msssim: float = 1000.0,
    w_ssim: float = 1000.0,
    w_mse: float = 1e4,
    w_psnr: float = 1.0,
    psnr_ref: float = 45.0,
    mse_only: bool = False,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scalar loss to minimise, the terms' values for logs as detached 0-d tensors: reading
    them waits for the device, so a training loop reads them once per log step).

    With `mse_only` (warm-up) the loss is w_mse * MSE; MS-SSIM and SSIM are still reported
    (computed without gradient) so that logs have the same columns in every phase.
    Weights of 0 skip a term's gradient computation. `weights` (B,): each image's distortion
    counts that much in the loss (the mean over the batch of weight_i * D_i); the logged
    terms stay plain means.
    """
    side = min(x.shape[-2:])
    per_image = weights is not None
    # Each term as one value per image when weighed, else as the batch's value.
    mse = per_image_mse(x_hat, x) if per_image else (x_hat - x).square().mean()
    per_image_psnr = psnr(x_hat, x)
    loss = w_mse * mse
    # Computed whenever the patch allows (for the logs); with gradient only where trained on.
    with torch.set_grad_enabled(torch.is_grad_enabled() and not mse_only):
        ssim_value = None
        if side >= SSIM_WINDOW:
            ssim_value = ssim(x_hat, x, data_range=1.0, win_size=SSIM_WINDOW,
                              size_average=not per_image)  # fmt: skip
        msssim_value = None
        if side > 32 or (w_msssim > 0 and not mse_only):  # the latter raises LossConfigError
            msssim_value = ms_ssim(x_hat, x, data_range=1.0, win_size=ms_ssim_window(side),
                                   size_average=not per_image)  # fmt: skip
    if not mse_only:
        if w_msssim > 0:
            loss = loss + w_msssim * (1.0 - msssim_value)
        if w_ssim > 0:
            if ssim_value is None:
                raise LossConfigError(f"SSIM needs images of at least {SSIM_WINDOW} px")
            loss = loss + w_ssim * (1.0 - ssim_value)
        if w_psnr > 0:
            loss = loss + w_psnr * (psnr_ref - (per_image_psnr if per_image else
                                                per_image_psnr.mean()))  # fmt: skip
    if per_image:
        loss = (weights * loss).mean()
    nan = mse.new_full((), math.nan)
    terms = {
        "mse": mse.detach().mean(),
        "psnr": per_image_psnr.detach().mean(),
        "ssim": ssim_value.detach().mean() if ssim_value is not None else nan,
        "msssim": msssim_value.detach().mean() if msssim_value is not None else nan,
    }
    return loss, terms


def bits_per_pixel(bits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's bits (B,) divided by its pixel count H * W."""
    return bits.mean() / (x.shape[-2] * x.shape[-1])


def compute_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    cfg: TrainConfig,
    *,
    bits: torch.Tensor | None = None,
    mse_only: bool = False,
    lambdas: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(distortion + cfg.rate_lambda * bpp, the terms for logs as in `distortion`), the
    distortion weighted as `cfg` says. `bits` (B,) is the model's rate estimate
    (`model(x, rate=True)`), needed when rate_lambda > 0 and logged as "bpp" whenever given.
    With rate_lambda = 0 the loss is the distortion tensor itself (bit for bit the paper's
    loss, whatever `bits` holds). `lambdas` (B,): a rate weight per image instead (a
    variable-rate model trains each image at its own quality): the loss is then the
    distortion plus the mean over the images of lambda_i * bpp_i, and with
    cfg.quality_balance > 0 each image's D_i + lambda_i * bpp_i is scaled by
    (cfg.rate_lambda / lambda_i) ** cfg.quality_balance.
    """
    weights = None
    if lambdas is not None and cfg.quality_balance > 0:
        weights = (cfg.rate_lambda / lambdas) ** cfg.quality_balance
    loss, terms = distortion(
        x_hat, x, w_msssim=cfg.w_msssim, w_ssim=cfg.w_ssim, w_mse=cfg.w_mse, w_psnr=cfg.w_psnr,
        psnr_ref=cfg.psnr_ref, mse_only=mse_only, weights=weights,
    )
    terms["distortion"] = loss.detach()
    if bits is None:
        if cfg.rate_lambda > 0:
            raise LossConfigError("rate_lambda > 0 needs the rate estimate: pass bits")
        return loss, terms
    bpp = bits_per_pixel(bits, x)
    terms["bpp"] = bpp.detach()
    if lambdas is not None:
        rate = lambdas * bits if weights is None else weights * lambdas * bits
        loss = loss + rate.mean() / (x.shape[-2] * x.shape[-1])
    elif cfg.rate_lambda > 0:
        loss = loss + cfg.rate_lambda * bpp
    return loss, terms
