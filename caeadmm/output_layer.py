"""The decoder's last layer as a Numba kernel (the coder's kernels: coding/kernels.py).

`output_layer_sum` is the decoder's last layer as `CAE.synthesis_uint8` computes it on the
CPU: a 1x1 convolution in float64, summed over the input channels in a fixed order, one
multiply and one add per term, each rounded (no fused multiply-add: numba leaves them apart
unless asked for fastmath), so that it gives the bits of the torch expression it replaces
(`out = bias; for c: out += features[c] * weight[:, c]`) in one pass over the features,
row by row, without their float64 copy.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def output_layer_sum(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float32 features (B, C, H, W), float64 weight (O, C) and bias (O,) -> float64
    (B, O, H, W): bias[o] + sum over c in order 0..C-1 of float64(features[b, c]) * weight[o, c]."""
    batch, channels, height, width = features.shape
    outputs = weight.shape[0]
    out = np.empty((batch, outputs, height, width), np.float64)
    for b in range(batch):
        for y in range(height):
            for o in range(outputs):
                row = out[b, o, y]
                row[:] = bias[o]
                for c in range(channels):
                    w = weight[o, c]
                    src = features[b, c, y]
                    for x in range(width):
                        row[x] = row[x] + np.float64(src[x]) * w
    return out
