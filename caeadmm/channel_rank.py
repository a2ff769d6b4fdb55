"""The order in which a nested variable-rate model drops its channels as the quality falls.

A model with `lowest_quality_channels` uses, at each quality, the kept channels of lowest
`CAE.channel_rank` (docs/variable-rate.md, "Nested channel supports"). When such a model
starts from weights that have no ranking (a fixed-rate model), `rank_channels` orders the
kept channels by what each costs the reconstruction when it alone is zeroed, on a batch of
training patches at the top quality: the channel whose loss hurts most is kept longest.
"""

from __future__ import annotations

import torch

from caeadmm.model import CAE, eval_mode


@torch.no_grad()
def rank_channels(net: CAE, batch: torch.Tensor) -> torch.Tensor:
    """(C,) ranks for `net.channel_rank`: 0 .. K-1 over the K kept channels, most important
    first, then the pruned channels (K .. C-1). batch: (B, 3, P, P) images in [0, 1]."""
    top = net.config.quality_levels - 1
    kept = net.kept_channels()
    if kept is None:
        raise ValueError("nested supports need a mask that keeps whole channels")
    with eval_mode(net):
        latent = net.encode(batch, top).float()  # the top quality holds every kept channel

        def error(dropped: int) -> float:
            trial = latent.clone()
            trial[:, dropped] = 0
            return float(torch.mean((net.synthesis(trial, top) - batch) ** 2))

        cost = torch.tensor([error(int(c)) for c in kept])
    order = kept[torch.argsort(cost, descending=True, stable=True)]
    kept_set = set(kept.tolist())
    pruned = [c for c in range(net.config.latent_channels) if c not in kept_set]
    ranks = torch.empty(net.config.latent_channels, dtype=torch.long)
    ranks[torch.cat([order, torch.tensor(pruned, dtype=torch.long)])] = torch.arange(len(ranks))
    return ranks
