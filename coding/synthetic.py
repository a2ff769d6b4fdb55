"""Synthetic symbols like a sparse latent's, for the coder's tests and benchmarks."""

from __future__ import annotations

import numpy as np


def sparse_laplacian(n: int, zeros: float, scale: float = 4.0, seed: int = 0) -> np.ndarray:
    """n rounded Laplacian values (int32) with extra zeros mixed in until a share `zeros`
    of them are zero (or more, where the Laplacian alone already gives more)."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.laplace(0.0, scale, n)).astype(np.int32)
    natural = np.mean(x == 0)
    if natural < zeros:
        x[rng.random(n) < (zeros - natural) / (1 - natural)] = 0
    return x
