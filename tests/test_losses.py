"""The loss: the distortion's window choice, terms and weights, warm-up, small patches; the
rate term and compute_loss."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_msssim import ms_ssim, ssim

from caeadmm.config import ConfigError, ModelConfig, TrainConfig
from caeadmm.losses import (
    LossConfigError,
    bits_per_pixel,
    compute_loss,
    distortion,
    ms_ssim_window,
    psnr,
)


@pytest.mark.parametrize(
    "side, window", [(33, 3), (64, 3), (128, 7), (129, 9), (160, 9), (161, 11), (768, 11)]
)
def test_ms_ssim_window_is_the_largest_odd_one_that_fits(side, window):
    assert ms_ssim_window(side) == window
    assert (window - 1) * 16 < side


@pytest.mark.parametrize("side", [1, 16, 32])
def test_ms_ssim_window_refuses_tiny_patches(side):
    with pytest.raises(LossConfigError, match="w_msssim=0"):
        ms_ssim_window(side)


def pair(side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, side, side, generator=g)
    x_hat = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x_hat, x


@pytest.mark.parametrize("side", [64, 128])
def test_distortion_is_the_weighted_sum_of_its_terms_at_training_patch_sizes(side):
    x_hat, x = pair(side)
    x_hat.requires_grad_(True)
    loss, terms = distortion(x_hat, x)
    with torch.no_grad():
        mse = float((x_hat - x).square().mean())
        expected_msssim = float(ms_ssim(x_hat, x, data_range=1.0, win_size=ms_ssim_window(side)))
        expected_ssim = float(ssim(x_hat, x, data_range=1.0, win_size=11))
        expected_psnr = float(psnr(x_hat, x).mean())
    assert terms["mse"] == pytest.approx(mse)
    assert terms["msssim"] == pytest.approx(expected_msssim, rel=1e-5)
    assert terms["ssim"] == pytest.approx(expected_ssim, rel=1e-5)
    expected = (
        1000 * (1 - expected_msssim) + 1000 * (1 - expected_ssim) + 1e4 * mse
        + (45 - expected_psnr)
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, x_hat)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_warm_up_loss_is_weighted_mse_alone_but_reports_every_term():
    x_hat, x = pair(64)
    loss, terms = distortion(x_hat, x, w_mse=7.0, mse_only=True)
    assert float(loss) == pytest.approx(7.0 * float((x_hat - x).square().mean()))
    assert 0 < terms["msssim"] < 1 and 0 < terms["ssim"] < 1


def test_weights_are_configurable_and_zero_weights_drop_terms():
    x_hat, x = pair(64)
    loss, terms = distortion(x_hat, x, w_msssim=0, w_ssim=2.0, w_mse=0, w_psnr=0)
    assert float(loss) == pytest.approx(2.0 * (1 - float(terms["ssim"])), rel=1e-6)
    loss, terms = distortion(x_hat, x, w_msssim=0, w_ssim=0, w_mse=0, w_psnr=3.0, psnr_ref=40)
    assert float(loss) == pytest.approx(3.0 * (40 - float(terms["psnr"])), rel=1e-6)


def test_psnr_is_per_image_and_finite_for_identical_images():
    x = torch.rand(2, 3, 16, 16)
    y = x.clone()
    y[1] = (y[1] + 0.1).clamp(0, 1)
    values = psnr(y, x)
    assert values[0] == pytest.approx(100.0)  # MSE floored at 1e-10
    assert values[1] == pytest.approx(-10 * math.log10(float((y[1] - x[1]).square().mean())))


def test_small_patches_need_w_msssim_zero():
    x_hat, x = pair(32)
    with pytest.raises(LossConfigError, match="w_msssim=0"):
        distortion(x_hat, x)
    loss, terms = distortion(x_hat, x, w_msssim=0)
    assert math.isnan(terms["msssim"]) and math.isfinite(float(loss))


def rate_config(rate_lambda: float, **weights: float) -> TrainConfig:
    model = ModelConfig.from_preset("tiny", entropy_model="factorized")
    return TrainConfig(model=model, rate_lambda=rate_lambda, **weights)


@pytest.mark.parametrize("mse_only", [False, True])
def test_lambda_zero_is_todays_loss_bit_for_bit(mse_only):
    x_hat, x = pair(64)
    cfg = TrainConfig(w_mse=3e3, w_ssim=10.0)
    grads = []
    losses = []
    for bits in (None, torch.tensor([100.0, 300.0], requires_grad=True)):
        prediction = x_hat.clone().requires_grad_(True)
        if bits is None:
            loss, _ = distortion(
                prediction, x, w_msssim=cfg.w_msssim, w_ssim=cfg.w_ssim, w_mse=cfg.w_mse,
                w_psnr=cfg.w_psnr, psnr_ref=cfg.psnr_ref, mse_only=mse_only,
            )
        else:
            loss, terms = compute_loss(prediction, x, cfg, bits=bits, mse_only=mse_only)
            assert terms["bpp"] == pytest.approx(200.0 / 64**2)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, prediction)[0])
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(grads[0], grads[1])
    no_bits, _ = compute_loss(x_hat, x, cfg, mse_only=mse_only)
    assert torch.equal(no_bits, losses[0])


def test_rate_term_adds_lambda_times_bits_per_pixel():
    x_hat, x = pair(64)
    bits = torch.tensor([1000.0, 3000.0], requires_grad=True)
    cfg = rate_config(0.5)
    loss, terms = compute_loss(x_hat, x, cfg, bits=bits)
    bpp = 2000.0 / (64 * 64)
    assert float(bits_per_pixel(bits.detach(), x)) == pytest.approx(bpp)
    assert terms["bpp"] == pytest.approx(bpp)
    assert float(loss.detach()) == pytest.approx(float(terms["distortion"]) + 0.5 * bpp, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, bits)
    assert torch.allclose(grad, torch.full((2,), 0.5 / (2 * 64 * 64)))


def test_rate_lambda_needs_bits_and_an_entropy_model():
    x_hat, x = pair(64)
    with pytest.raises(LossConfigError, match="bits"):
        compute_loss(x_hat, x, rate_config(1.0))
    with pytest.raises(ConfigError, match="entropy_model"):
        TrainConfig(rate_lambda=1.0)
    with pytest.raises(ConfigError, match="rate_lambda"):
        rate_config(-1.0)
    assert TrainConfig.from_dict(rate_config(2.0).to_dict()).rate_lambda == 2.0
