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
