"""Metrics on cases whose answer is known, and the small-image fallback of MS-SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_msssim
import torch

from caeadmm import metrics


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: structure for SSIM to see, any size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 3 + y, y * 2 + 40, (x + y) % 200 + 20], axis=-1)
    return np.clip(base + rng.integers(-15, 16, (height, width, 3)), 0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, amplitude: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amplitude, amplitude + 1, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (40, 31), (200, 170)])
def test_identical_images_are_perfect(shape):
    img = _image(*shape)
    assert metrics.psnr(img, img) == math.inf
    assert metrics.ms_ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("error", [1, 5, 17])
def test_uniform_error_gives_exact_psnr(error):
    img = np.full((9, 13, 3), 100, dtype=np.uint8)
    img[::2] = 60  # not flat, but every pixel is shifted by the same amount
    shifted = img + np.uint8(error)
    expected = 10 * math.log10(255**2 / error**2)
    assert metrics.psnr(img, shifted) == pytest.approx(expected, abs=1e-12)


def test_psnr_is_symmetric_and_uses_all_channels():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[..., 2] = 30  # one channel off by 30: MSE = 900 / 3
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 300.0))
    assert metrics.psnr(b, a) == metrics.psnr(a, b)


def test_large_images_use_pytorch_msssim_unchanged():
    a = _image(200, 170)
    b = _noisy(a)
    expected_ms = pytorch_msssim.ms_ssim(_tensor(a), _tensor(b), data_range=255).item()
    expected_ssim = pytorch_msssim.ssim(_tensor(a), _tensor(b), data_range=255).item()
    assert metrics.ms_ssim(a, b) == pytest.approx(expected_ms, abs=1e-7)
    assert metrics.ssim(a, b) == pytest.approx(expected_ssim, abs=1e-7)
    assert 0.5 < metrics.ms_ssim(a, b) < 1.0


@pytest.mark.parametrize(
    ("short_side", "scales"),
    [(1, 1), (11, 1), (20, 1), (21, 2), (40, 2), (41, 3), (80, 3), (81, 4), (160, 4), (161, 5),
     (512, 5)],
)
def test_scale_count_follows_the_documented_thresholds(short_side, scales):
    assert metrics.ms_ssim_scales(short_side, 1000) == scales
    assert metrics.ms_ssim_scales(1000, short_side) == scales


def test_one_scale_ms_ssim_is_ssim():
    a = _image(15, 30)
    b = _noisy(a)
    assert metrics.ms_ssim(a, b) == pytest.approx(max(metrics.ssim(a, b), 0.0), abs=1e-6)


@pytest.mark.parametrize("shape", [(100, 90), (33, 50), (8, 8), (1, 9), (2, 2)])
def test_small_images_get_a_sane_value(shape):
    a = _image(*shape)
    b = _noisy(a, amplitude=40)
    for value in (metrics.ms_ssim(a, b), metrics.ssim(a, b)):
        assert math.isfinite(value) and value < 1.0
    # More distortion never scores better.
    worse = _noisy(a, amplitude=120, seed=2)
    assert metrics.ms_ssim(a, worse) < metrics.ms_ssim(a, b)


def test_fallback_is_close_to_five_scales_just_above_the_limit():
    """4 renormalised scales at 160 px and 5 scales at 161 px must tell the same story."""
    a = _image(161, 161)
    b = _noisy(a)
    five = metrics.ms_ssim(a, b)
    four = metrics.ms_ssim(a[:160, :160], b[:160, :160])
    assert abs(five - four) < 0.02


def test_bpp():
    assert metrics.bpp(1000, 100, 80) == 1.0
    assert metrics.bpp(0, 1, 1) == 0.0
    with pytest.raises(metrics.MetricInputError):
        metrics.bpp(10, 0, 5)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)),
        (np.zeros((0, 4, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)),
    ],
)
def test_bad_inputs_raise_our_error(a, b):
    for function in (metrics.psnr, metrics.ssim, metrics.ms_ssim):
        with pytest.raises(metrics.MetricInputError):
            function(a, b)


def test_quality_metrics_keys():
    a = _image(30, 30)
    assert set(metrics.quality_metrics(a, _noisy(a))) == {"psnr", "ms_ssim", "ssim"}
