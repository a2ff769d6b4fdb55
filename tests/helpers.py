"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np
import torch

from caeadmm.config import ModelConfig
from caeadmm.model import CAE


def tiny_model(seed: int = 0, keep: float = 0.5, patch_size: int = 32) -> CAE:
    """A random tiny model whose latents are spread like a trained one's (BatchNorm
    statistics calibrated on noise, a few symbols of each sign), with a random mask."""
    torch.manual_seed(seed)
    model = CAE(ModelConfig(preset="tiny", width=16, n_blocks=1, latent_channels=8,
                            patch_size=patch_size))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: statistics of all batches seen
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, patch_size, patch_size))
    model.encoder[-1][-1].weight.data.fill_(4.0)
    model.set_mask(torch.rand(model.config.latent_shape()) < keep)
    return model.eval()


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: content with both structure and detail."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width, 1), yy * 255 / max(height, 1), (xx + yy) % 97], -1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


test_image.__test__ = False  # a helper, not a test
