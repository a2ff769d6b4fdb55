"""Layers of the rate-aware network: a lower bound that keeps its gradient, and GDN/IGDN.

GDN (Balle, Laparra, Simoncelli 2016) normalises each channel by a learned mix of the
squares of all channels at the same position, y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2);
IGDN multiplies instead of dividing (its approximate inverse, used in the decoder). beta and
gamma must stay non-negative (beta above a floor), so they are stored as square roots and
bounded from below; see docs/rate.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Added under the square root so that gradients stay finite near zero.
PEDESTAL = 2.0**-18


class _LowerBound(torch.autograd.Function):
    """max(x, bound), whose gradient still flows where it would raise x off the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """max(x, bound) elementwise; a bounded entry still gets the gradients that push it up,
    so a parameter stuck at the bound can leave it (a plain clamp would freeze it)."""
    return _LowerBound.apply(x, bound)


def non_negative(stored: torch.Tensor, minimum: float = 0.0) -> torch.Tensor:
    """The value a square-root-stored parameter holds: bound(stored)^2 - PEDESTAL >= minimum."""
    return lower_bound(stored, (minimum + PEDESTAL) ** 0.5).square() - PEDESTAL


def stored_non_negative(value: torch.Tensor) -> torch.Tensor:
    """The stored form of a non-negative value (the inverse of `non_negative`)."""
    return (value + PEDESTAL).clamp_min(PEDESTAL).sqrt()


class GDN(nn.Module):
    """Generalized divisive normalization over channels (inverse=True: IGDN)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.beta = nn.Parameter(stored_non_negative(torch.ones(channels)))
        self.gamma = nn.Parameter(stored_non_negative(gamma_init * torch.eye(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = non_negative(self.beta, self.beta_min)
        gamma = non_negative(self.gamma)
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * (norm.sqrt() if self.inverse else norm.rsqrt())
