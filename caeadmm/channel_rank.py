"""The order in which a nested variable-rate model drops its channels as the quality falls.

A model with `lowest_quality_channels` uses, at each quality, the kept channels of lowest
`CAE.channel_rank` (docs/variable-rate.md, "Nested channel supports"). When such a model
starts from weights that have no ranking (a fixed-rate model), `rank_channels` orders the
kept channels by what each costs the reconstruction when it alone is zeroed, on a batch of
training patches at the top quality: the channel whose loss hurts most is kept longest.

`grow_nested` starts a nested model from a family of fixed-rate models instead: the weights
of the lowest-rate member, so that quality 0 starts where that member is, and the channels
ranked in the order the family adds them.
"""

from __future__ import annotations

import dataclasses

import torch

from caeadmm.checkpoint import load_into
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


@torch.no_grad()
def grow_nested(family: list[CAE], quality_levels: int) -> CAE:
    """A nested variable-rate CAE from `family`, fixed-rate models of one lineage ordered by
    rate, each keeping whole channels: the first one's weights; the last one's channels
    kept; ranked by the member that first keeps them (the first one's channels first, then
    each next member's new ones, by index), so each quality's support starts near the member
    of its channel count; `lowest_quality_channels` the first one's count.

    The decoder's input weights of the added channels start at zero, so that at the start
    every quality decodes as the first member does and training teaches the decoder the
    added channels one by one (their encoder weights are the lineage's)."""
    supports = [model.kept_channels() for model in family]
    if any(support is None for support in supports):
        raise ValueError("every model of the family must keep whole channels")
    low, top = supports[0].tolist(), supports[-1].tolist()
    if not set(low) <= set(top):
        raise ValueError(f"the last model's channels {top} do not hold the first's {low}")
    order = list(low)
    for support in supports[1:]:
        order += [c for c in support.tolist() if c in top and c not in order]
    base = family[0]
    config = dataclasses.replace(base.config, quality_levels=quality_levels,
                                 lowest_quality_channels=len(low))  # fmt: skip
    net = CAE(config)
    load_into(net, base.state_dict())  # the level gains and the ranks start fresh
    mask = torch.zeros(config.latent_shape(), dtype=torch.bool)
    mask[order] = True
    net.set_mask(mask)
    pruned = [c for c in range(config.latent_channels) if c not in order]
    net.channel_rank[torch.tensor(order + pruned)] = torch.arange(config.latent_channels)
    added = [c for c in range(config.latent_channels) if c not in low]
    first = next(m for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    first.weight[:, added] = 0  # the decoder's first layer: a 1x1 convolution of the latent
    return net.eval()
