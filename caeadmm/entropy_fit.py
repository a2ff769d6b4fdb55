"""The final phase of a run with `entropy_fit_steps`: the entropy model fitted alone.

During training the density (caeadmm.entropy_model) chases a moving latent (and, with mixed
rounding, sees noisy values, not integers), so at the end its estimate lags the symbols the
coder writes (docs/rate.md). `fit_entropy_model` fits it, the network frozen, to the
per-channel histograms of the symbols of the run's last ENTROPY_FIT_BATCHES batches.

In a distributed run the histograms are summed over the ranks by the `all_reduce` the
caller passes (caeadmm.train_loop.sum_over_ranks); every rank then fits the same counts
from the same parameters, so all end with the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from caeadmm.entropy_model import count_bits, fit_counts, symbol_counts
from caeadmm.model import CAE, LATENT_MAX

# The final fit uses the symbols of this many last training batches.
ENTROPY_FIT_BATCHES = 64
# Adam's rate of the final fit.
ENTROPY_FIT_LR = 0.01


@torch.no_grad()
def latent_counts(
    net: CAE,
    batches: Iterable[torch.Tensor],
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-channel histograms (C, 2 LATENT_MAX + 1) of the symbols `net.encode` gives for
    the batches (inference rounding, exactly what the codec writes); a pruned channel's row
    stays empty. `all_reduce` sums them over the ranks of a process group (None: this
    process's alone)."""
    device = next(net.parameters()).device
    kept = torch.ones(net.config.latent_channels, dtype=torch.bool, device=device)
    if net.mask is not None:
        kept = net.mask.flatten(1).any(dim=1)
    counts = torch.zeros(net.config.latent_channels, 2 * LATENT_MAX + 1, dtype=torch.float64,
                         device=device)  # fmt: skip
    for batch in batches:
        symbols = net.encode(batch.to(device))
        columns = symbols.transpose(0, 1).flatten(1).T  # (N, C)
        counts += symbol_counts(columns.cpu(), LATENT_MAX).to(device, torch.float64)
    counts[~kept] = 0
    if all_reduce is not None:
        counts = all_reduce(counts)
    return counts.cpu()


def fit_entropy_model(
    net: CAE,
    batches: Iterable[torch.Tensor],
    steps: int,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Fit the entropy model alone, the network frozen, to the symbols of `batches` (summed
    over the ranks by `all_reduce`, see `latent_counts`) for `steps` Adam steps.

    Returns bits per kept symbol of the estimate before and after, and the order-0 entropy of
    the histograms (the floor of any per-channel density), with the symbol count."""
    counts = latent_counts(net, batches, all_reduce)
    total = float(counts.sum())
    if total == 0:
        return {"symbols": 0.0}
    entropy = net.entropy.cpu()
    with torch.no_grad():
        before = float(count_bits(entropy, counts.float()).sum())
    after = fit_counts(entropy, counts.float(), steps, lr=ENTROPY_FIT_LR)
    net.entropy.to(next(net.parameters()).device)
    p = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    floor = float(-(counts * torch.log2(torch.where(p > 0, p, 1))).sum())
    return {"symbols": total, "bits_before": before / total, "bits_after": after / total,
            "entropy_bits": floor / total}  # fmt: skip
