"""Learned per-channel probability models of the quantized latent: the rate term.

Each latent channel c gets its own density p_c over the integers, shared by every position.
The probability of an integer (or, in training, noisy) value y is the density's mass on
[y - 1/2, y + 1/2], F_c(y + 1/2) - F_c(y - 1/2), bounded below by LIKELIHOOD_BOUND so that
log2 stays finite; the estimated size of a latent is the sum of -log2 p over its kept slots.
Two families (docs/rate.md compares them):

- "factorized": F_c is the sigmoid of a small monotone MLP (Balle et al. 2018, appendix
  6.1: the density of the "factorized prior"); it can take skewed, zero-heavy or
  multimodal shapes.
- "laplacian": a zero-mean Laplacian with a learned per-channel scale: one parameter per
  channel, no freedom of shape.

`adaptive_bits` estimates what a coder that adapts its tables to each image spends (with
`zero_context`, also what its zero-run tokens save).
`probability_tables` gives each channel's probability of every symbol in the coder's range
(inference: estimating code tables); `fit` fits a model to given symbols, `fit_counts` to
their per-channel histograms (`symbol_counts`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from caeadmm.layers import lower_bound

# Smallest probability a symbol gets: at most ~30 bits for a symbol the model deems impossible.
LIKELIHOOD_BOUND = 1e-9
KINDS = ("factorized", "laplacian")
# The stretches of a channel's density `adaptive_bits` tries per image: 1/4 .. 2.
ADAPTIVE_SCALES = tuple(2.0 ** (k / 4) for k in range(-8, 5))


class EntropyModel(nn.Module):
    """Per-channel discrete probabilities of a latent (B, C, h, w); subclasses give the CDF
    (in logit form, so that both tails stay accurate)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def cdf_logits(
        self, values: torch.Tensor, channels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """logit F_c(v) for values (C, N), channel by channel: shape (C, N). `channels` (a bool
        index of the C channels): values holds those channels' rows only."""
        raise NotImplementedError

    def _interval_mass(
        self, values: torch.Tensor, half: float = 0.5, channels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """F_c(v + half) - F_c(v - half) for values (C, N) (half 1/2: the mass of an integer).

        Computed on the side of the median where both CDF values are far from 1, so that two
        numbers close to 1 never cancel: above the median it is (1 - F(l)) - (1 - F(u)) =
        sigmoid(-l) - sigmoid(-u). (At the median exactly l + u = 0 and either side is right;
        torch.sign would give 0 there, and a zero probability.)
        """
        lower = self.cdf_logits(values - half, channels)
        upper = self.cdf_logits(values + half, channels)
        sign = torch.where(lower + upper > 0, -1.0, 1.0).to(lower.dtype).detach()
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()

    def likelihoods(self, latent: torch.Tensor) -> torch.Tensor:
        """Probability of each entry of a latent (B, C, h, w) under its channel's model."""
        if latent.dim() != 4 or latent.shape[1] != self.channels:
            raise ValueError(
                f"latent must be (B, {self.channels}, h, w), got {tuple(latent.shape)}"
            )
        values = latent.transpose(0, 1).reshape(self.channels, -1)
        probs = lower_bound(self._interval_mass(values), LIKELIHOOD_BOUND)
        shape = (self.channels, latent.shape[0], *latent.shape[2:])
        return probs.reshape(shape).transpose(0, 1)

    def bits(self, latent: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Estimated bits of each image's latent (B,), counting only the slots where `mask`
        (bool, broadcastable to (C, h, w); None: all) is True."""
        bits = -torch.log2(self.likelihoods(latent))
        if mask is not None:
            bits = bits * mask.to(bits.dtype)
        return bits.flatten(1).sum(dim=1)

    def adaptive_bits(
        self, latent: torch.Tensor, max_symbol: int, mask: torch.Tensor | None = None,
        zero_context: bool = False, counted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Estimated bits of each image's latent (B,) when each channel's density is first
        moved to the image's mean of that channel and stretched by the best of
        ADAPTIVE_SCALES: P(y) = F_c(m + (y - mu + 1/2) / s) - F_c(m + (y - mu - 1/2) / s), m
        the density's mean over -max_symbol..max_symbol, mu the mean of the channel's kept
        slots in this image. What a coder that adapts its tables to each image (as the
        per-image Huffman tables of the codec do) can spend, the two numbers per channel and
        image it would be told not counted (docs/history/rate-ablation.md measures it).
        Differentiable in the latent; `mask` as in `bits`.

        zero_context: each channel's slots are split in two by whether the kept symbol before
        them in the coder's scan order (channel by channel, row by row; the first counts as
        after a non-zero) rounds to zero, and each part gets its own mean and stretch: an
        order-1 estimate that sees what the coder's zero-run tokens gain on runs of zeros,
        which no order-0 estimate can.

        counted: (B, C, 1, 1), 0 for the channels an image's stream leaves out (a nested
        variable-rate model's channels beyond its quality's support, all zero): not counted,
        while the scan order stays `mask`'s.
        """
        if latent.dim() != 4 or latent.shape[1] != self.channels:
            raise ValueError(
                f"latent must be (B, {self.channels}, h, w), got {tuple(latent.shape)}"
            )
        weight = torch.ones_like(latent)
        if mask is not None:
            weight = weight * mask.to(latent.dtype)
        if not zero_context:
            return self._adapted_bits(latent, [_counted(weight, counted)], max_symbol)
        kept = weight[0].flatten() > 0
        zero = torch.round(latent.detach()).flatten(1)[:, kept] == 0
        after_zero = torch.zeros_like(latent, dtype=torch.bool).flatten(1)
        after_zero[:, kept] = F.pad(zero[:, :-1], (1, 0))
        after_zero = after_zero.reshape(latent.shape).to(latent.dtype)
        weight = _counted(weight, counted)
        return self._adapted_bits(
            latent, [weight * after_zero, weight * (1 - after_zero)], max_symbol
        )

    def _adapted_bits(
        self, latent: torch.Tensor, parts: list[torch.Tensor], max_symbol: int
    ) -> torch.Tensor:
        """adaptive_bits of the slots where one of the disjoint `parts` (each (B, C, h, w),
        0 or 1) is 1, each part of each channel and image with its own mean and stretch. One
        pass of the density over the latent, however many parts, and over the channels with a
        slot in some part only (a pruned channel costs nothing)."""
        active = sum(parts).sum(dim=(0, 2, 3)) > 0
        latent, parts = latent[:, active], [weight[:, active] for weight in parts]
        batch, channels, height, width = latent.shape
        centre = torch.zeros_like(latent)
        for weight in parts:
            part_mean = (latent * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1)
            centre = centre + weight * part_mean[:, :, None, None]
        grid = torch.arange(-max_symbol, max_symbol + 1, dtype=torch.float64)
        mean = (self.probability_tables(max_symbol)[active] * grid).sum(dim=1).to(latent.dtype)
        offset = (latent - centre).transpose(0, 1).reshape(channels, batch * height * width)
        parts = [w.transpose(0, 1).reshape(channels, batch, height * width) for w in parts]
        best: list[torch.Tensor | None] = [None] * len(parts)
        for scale in ADAPTIVE_SCALES:
            mass = self._interval_mass(mean[:, None] + offset / scale, 0.5 / scale, active)
            bits = -torch.log2(lower_bound(mass, LIKELIHOOD_BOUND))
            bits = bits.reshape(channels, batch, height * width)
            for k, weight in enumerate(parts):
                per_channel = (bits * weight).sum(dim=2)  # (C, B)
                best[k] = per_channel if best[k] is None else torch.minimum(best[k], per_channel)
        return sum(b.sum(dim=0) for b in best)

    @torch.no_grad()
    def probability_tables(self, max_symbol: int) -> torch.Tensor:
        """(C, 2 max_symbol + 1) float64: each channel's probability of every symbol from
        -max_symbol to max_symbol, the mass beyond the range folded into the end symbols (the
        quantizer clamps there); rows sum to 1. Unbounded by LIKELIHOOD_BOUND."""
        dtype = next(self.parameters()).dtype
        symbols = torch.arange(-max_symbol, max_symbol + 1, dtype=dtype)
        values = symbols.expand(self.channels, -1)
        table = self._interval_mass(values).double()
        table[:, 0] += torch.sigmoid(self.cdf_logits(values[:, :1] - 0.5))[:, 0].double()
        table[:, -1] += torch.sigmoid(-self.cdf_logits(values[:, -1:] + 0.5))[:, 0].double()
        return table / table.sum(dim=1, keepdim=True)


class FactorizedDensity(EntropyModel):
    """F_c = sigmoid(f_c(v)), f_c a 1 -> 3 -> 3 -> 3 -> 1 MLP per channel whose weights are
    kept positive (softplus) and whose nonlinearities x + tanh(a) tanh(x) are increasing
    (|tanh(a)| < 1), so f_c is monotone and F_c is a valid CDF."""

    def __init__(
        self, channels: int, hidden: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0
    ):
        super().__init__(channels)
        widths = (1, *hidden, 1)
        # Scaled so that the initial density is spread over about [-init_scale, init_scale].
        scale = init_scale ** (1 / (len(widths) - 1))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for k in range(len(widths) - 1):
            start = math.log(math.expm1(1 / scale / widths[k + 1]))
            shape = (channels, widths[k + 1], widths[k])
            self.weights.append(nn.Parameter(torch.full(shape, start)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[k + 1], 1) - 0.5))
            if k < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[k + 1], 1)))

    def cdf_logits(
        self, values: torch.Tensor, channels: torch.Tensor | None = None
    ) -> torch.Tensor:
        pick = slice(None) if channels is None else channels
        x = values.unsqueeze(1)  # (C, 1, N)
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.matmul(F.softplus(weight[pick]), x) + bias[pick]
            if k < len(self.factors):
                x = x + torch.tanh(self.factors[k][pick]) * torch.tanh(x)
        return x.squeeze(1)


class DiscretizedLaplacian(EntropyModel):
    """A zero-mean Laplacian per channel with a learned scale b_c: logit F_c(v) in closed form,
    F(v) = 1/2 exp(v / b) below 0 and 1 - 1/2 exp(-v / b) above."""

    def __init__(self, channels: int, init_scale: float = 2.0):
        super().__init__(channels)
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(init_scale)))

    def cdf_logits(
        self, values: torch.Tensor, channels: torch.Tensor | None = None
    ) -> torch.Tensor:
        scale = self.log_scale.exp() if channels is None else self.log_scale[channels].exp()
        t = values.abs() / scale.unsqueeze(1)
        # logit(1 - e^-t / 2) = log(2 e^t - 1) = t + log(2 - e^-t); odd in v.
        return torch.sign(values) * (t + torch.log(2 - torch.exp(-t)))


def build(kind: str, channels: int) -> EntropyModel:
    """The entropy model of a given kind ("factorized" or "laplacian") for C channels."""
    if kind == "factorized":
        return FactorizedDensity(channels)
    if kind == "laplacian":
        return DiscretizedLaplacian(channels)
    raise ValueError(f"unknown entropy model {kind!r}; known: {list(KINDS)}")


def symbol_counts(symbols: torch.Tensor, max_symbol: int) -> torch.Tensor:
    """Histograms (C, 2 max_symbol + 1) of integer symbols (N, C), one row per channel, the
    symbols clamped to [-max_symbol, max_symbol] as the quantizer clamps them."""
    if symbols.dim() != 2:
        raise ValueError(f"symbols must be (N, C), got {tuple(symbols.shape)}")
    size = 2 * max_symbol + 1
    shifted = symbols.long().clamp(-max_symbol, max_symbol) + max_symbol
    offsets = torch.arange(symbols.shape[1]) * size
    flat = (shifted + offsets).flatten()
    return torch.bincount(flat, minlength=size * symbols.shape[1]).reshape(-1, size)


def count_bits(model: EntropyModel, counts: torch.Tensor) -> torch.Tensor:
    """Estimated bits of the symbols whose histograms (C, 2 m + 1) over -m..m are `counts`,
    per channel (C,): sum of count x -log2 P_c(symbol), differentiable in the model."""
    max_symbol = (counts.shape[1] - 1) // 2
    dtype = next(model.parameters()).dtype
    grid = torch.arange(-max_symbol, max_symbol + 1, dtype=dtype)
    grid = grid.expand(model.channels, -1)[None, :, :, None]  # a (1, C, S, 1) "latent"
    bits = -torch.log2(model.likelihoods(grid))[0, :, :, 0]
    return (bits * counts.to(dtype)).sum(dim=1)


def fit_counts(model: EntropyModel, counts: torch.Tensor, steps: int = 500,
               lr: float = 0.05) -> float:
    """Fit `model` to symbol histograms (C, 2 m + 1) over -m..m by minimising their
    estimated bits with Adam (only the model's parameters move); returns the final estimate
    in bits. A channel with no counts does not enter the objective."""
    if counts.dim() != 2 or counts.shape[0] != model.channels or counts.shape[1] % 2 != 1:
        raise ValueError(
            f"counts must be ({model.channels}, 2 m + 1), got {tuple(counts.shape)}"
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        count_bits(model, counts).sum().backward()
        optimizer.step()
    with torch.no_grad():
        return float(count_bits(model, counts).sum())


def fit(model: EntropyModel, symbols: torch.Tensor, max_symbol: int, steps: int = 500,
        lr: float = 0.05) -> float:
    """Fit `model` to integer symbols (N, C) (one column per channel) by minimising their
    estimated bits with Adam; returns the final estimate in bits. Works on each channel's
    histogram, so the cost does not grow with N."""
    if symbols.dim() != 2 or symbols.shape[1] != model.channels:
        raise ValueError(f"symbols must be (N, {model.channels}), got {tuple(symbols.shape)}")
    return fit_counts(model, symbol_counts(symbols, max_symbol), steps, lr)


def _counted(weight: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
    return weight if counted is None else weight * counted.to(weight.dtype)
