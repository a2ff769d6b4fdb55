"""Synthetic symbols like a sparse latent's, for the coder's tests and benchmarks."""

from __future__ import annotations

import numpy as np


def sparse_laplacian(n: int, zeros: float, scale: float = 4.0, seed: int = 0) -> np.ndarray:
    """n rounded Laplacian values (int32) with extra zeros mixed in until a share `zeros`
    of them are zero (or more, where the Laplacian alone already gives more)."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.laplace(0.0, scale, n)).astype(np.int32)
    if n == 0:
        return x
    natural = np.mean(x == 0)
    if natural < zeros:
        x[rng.random(n) < (zeros - natural) / (1 - natural)] = 0
    return x


CHANNEL_ZEROS = (0.2, 0.5, 0.8, 0.9, 0.97)  # shares of zeros the channels cycle through


def channel_laplacians(channels: int, positions: int, seed: int = 0) -> np.ndarray:
    """(channels, positions) int32 symbols like a latent with per-channel statistics: channel c
    is `sparse_laplacian` with CHANNEL_ZEROS[c % 5] zeros and a scale drawn log-uniformly
    from [0.5, 8]."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.5), np.log(8.0), channels))
    out = np.empty((channels, positions), np.int32)
    for c in range(channels):
        zeros = CHANNEL_ZEROS[c % len(CHANNEL_ZEROS)]
        out[c] = sparse_laplacian(positions, zeros, float(scales[c]), seed=seed * 100_003 + c)
    return out


def smooth_planes(channels: int, height: int, width: int, scale: float = 3.0,
                  seed: int = 0) -> np.ndarray:
    """(channels, height, width) int32 symbols like an image latent's: smooth random fields
    (white noise blurred along both axes), mixed across channels so that they correlate,
    scaled to a standard deviation of about `scale` and rounded."""
    rng = np.random.default_rng(seed)
    fields = rng.normal(size=(channels, height, width))
    for axis in (1, 2):
        for _ in range(4):  # [1, 2, 1] / 4 blur, four times: a smooth field
            fields = (np.roll(fields, 1, axis) + 2 * fields + np.roll(fields, -1, axis)) / 4
    mixed = np.tensordot(rng.normal(size=(channels, channels)) + 2 * np.eye(channels), fields, 1)
    if mixed.size and mixed.std() > 1e-6 * np.abs(mixed).max():  # not a constant
        mixed /= mixed.std()
    noise = rng.normal(0, 0.3, mixed.shape)
    return np.round(scale * mixed + noise).astype(np.int32)
