"""ADMM on the latent: projection, k, penalty, accumulation, convergence, state."""

from __future__ import annotations

import pytest
import torch

from caeadmm.admm import ADMM, ADMMError, project_top_k, project_top_k_channels


def brute_force_top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: rank slots by (-|v|, flat index) in plain Python, keep the first k."""
    flat = values.reshape(-1).tolist()
    order = sorted(range(len(flat)), key=lambda i: (-abs(flat[i]), i))
    kept = set(order[:k])
    out = [v if i in kept else 0.0 for i, v in enumerate(flat)]
    return torch.tensor(out, dtype=values.dtype).reshape(values.shape)


@pytest.mark.parametrize("seed", range(6))
def test_projection_equals_brute_force_top_k_with_ties_and_negatives(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 4, 5)
    # Small integers: many ties in magnitude (v and -v), zeros and negatives.
    values = torch.randint(-4, 5, shape, generator=g).float()
    for k in (0, 1, 7, 30, 59, 60):
        projected, kept = project_top_k(values, k)
        assert torch.equal(projected, brute_force_top_k(values, k))
        assert int(kept.sum()) == k
        assert torch.equal(projected[~kept], torch.zeros(60 - k))


def test_projection_keeps_largest_magnitude_not_largest_signed_value():
    values = torch.tensor([-5.0, 1.0, 2.0, -0.5])
    projected, _ = project_top_k(values, 2)
    assert projected.tolist() == [-5.0, 0.0, 2.0, 0.0]


def test_projection_of_continuous_values_has_exactly_k_non_zeros():
    values = torch.randn(32, 8, 8, generator=torch.Generator().manual_seed(1))
    projected, kept = project_top_k(values, 205)
    assert int((projected != 0).sum()) == 205
    assert torch.equal(kept, projected != 0)
    assert projected.abs()[kept].min() >= values.abs()[~kept].max()


@pytest.mark.parametrize(
    "shape, ratio, k",
    [((32, 16, 16), 0.9, 819), ((10,), 0.25, 8), ((10,), 0.35, 7), ((2, 2, 2), 0.0, 8)],
)
def test_k_is_rounded_half_up(shape, ratio, k):
    assert ADMM(shape, ratio, rho=1.0, structure="slot").k == k


@pytest.mark.parametrize(
    "shape, ratio, k_channels",
    [((32, 16, 16), 0.9, 3), ((32, 16, 16), 0.375, 20), ((8, 2, 2), 0.5, 4)],
)
def test_channel_structure_keeps_whole_channels(shape, ratio, k_channels):
    admm = ADMM(shape, ratio, rho=1.0)
    assert admm.structure == "channel"
    assert admm.k_groups == k_channels
    assert admm.k == k_channels * shape[1] * shape[2]


def brute_force_top_k_channels(values: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: rank channels by (-sum of squares, index) in plain Python, keep k whole."""
    energies = [sum(v * v for v in ch.reshape(-1).tolist()) for ch in values]
    order = sorted(range(len(energies)), key=lambda c: (-energies[c], c))
    out = torch.zeros_like(values)
    for c in order[:k]:
        out[c] = values[c]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_channel_projection_equals_brute_force_with_ties_and_negatives(seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-2, 3, (6, 2, 2), generator=g).float()  # many equal energies
    values[1] = -values[0]  # a tie between a channel and its negative
    for k in range(7):
        projected, kept = project_top_k_channels(values, k)
        assert torch.equal(projected, brute_force_top_k_channels(values, k))
        assert int(kept.sum()) == 4 * k
        assert torch.equal(kept.all(dim=(1, 2)), kept.any(dim=(1, 2)))  # whole channels


def test_channel_projection_ranks_by_energy_not_by_signed_sum():
    values = torch.tensor([[[-3.0, 3.0]], [[1.0, 1.0]], [[0.0, -2.0]]])  # sums 0, 2, -2
    projected, _ = project_top_k_channels(values, 1)
    assert torch.equal(projected[0], values[0]) and not projected[1:].any()


@pytest.mark.parametrize("ratio, rho", [(1.0, 1.0), (-0.1, 1.0), (0.99, 1.0), (0.5, -1.0)])
def test_invalid_settings_are_refused(ratio, rho):
    with pytest.raises(ADMMError):
        ADMM((4, 2, 2), ratio, rho)  # 0.99 of 16 slots keeps none


def sums_of(latents: torch.Tensor) -> torch.Tensor:
    """What `pending()` holds after accumulating `latents`: [sum, sum of squares]."""
    latents = latents.double()
    return torch.stack([latents.sum(dim=0), latents.square().sum(dim=0)])


def test_sums_divide_by_the_number_of_latents_summed():
    admm = ADMM((2, 2, 2), pruning_ratio=0.5, rho=1.0, structure="slot")
    a, b = torch.randn(3, 2, 2, 2), torch.randn(5, 2, 2, 2)
    admm.accumulate(a)
    admm.accumulate(b)
    sums, count = admm.pending()
    assert count == 8
    both = torch.cat([a, b])
    assert torch.allclose(sums, sums_of(both), atol=1e-6)
    admm.update(sums, count)
    # First update (U = 0): support = the 4 slots of largest E[c^2], Z = c_bar there.
    _, expected_support = project_top_k(both.square().mean(dim=0).sqrt(), 4)
    c_bar = both.mean(dim=0)
    assert torch.equal(admm.support, expected_support)
    assert torch.allclose(admm.Z, c_bar * expected_support, atol=1e-6)
    assert torch.allclose(admm.U, c_bar * ~expected_support, atol=1e-6)
    assert admm.pending()[1] == 0 and not admm.pending()[0].any()


def test_support_follows_energy_not_the_mean():
    """A slot whose latents are +-3 (mean 0) carries information; a constant 1 does not."""
    admm = ADMM((2,), pruning_ratio=0.5, rho=1.0, structure="slot")
    latents = torch.tensor([[3.0, 1.0], [-3.0, 1.0]])
    admm.update(sums_of(latents), 2)
    assert admm.support.tolist() == [True, False]


def test_update_accepts_all_reduced_tensors_as_a_distributed_caller_passes_them():
    admm = ADMM((4,), pruning_ratio=0.5, rho=1.0)
    latents = torch.tensor([[4.0, -8.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    admm.update(sums_of(latents), torch.tensor(2))
    assert admm.Z.tolist() == [2.0, -4.0, 0.0, 0.0]
    with pytest.raises(ADMMError, match="sums have shape"):
        admm.update(torch.zeros(4, dtype=torch.float64), 2)


def test_penalty_pulls_only_the_pruned_slots_to_zero_and_is_off_before_a_projection():
    admm = ADMM((2, 3), pruning_ratio=0.5, rho=4.0, structure="slot")
    latent = torch.randn(5, 2, 3, requires_grad=True)
    before = admm.penalty(latent)
    assert float(before.detach()) == 0.0
    before.backward()  # differentiable even when off
    admm.update(sums_of(torch.randn(3, 2, 3) * 3), 3)
    penalty = admm.penalty(latent)
    # Z_i = c_i + U on the support, 0 elsewhere: the residual c_i - Z_i + U is c_i + U off it.
    residual = (latent.detach() + admm.U) * ~admm.support
    per_image_sq_norm = residual.square().flatten(1).sum(dim=1)
    assert torch.allclose(penalty, 0.5 * 4.0 * per_image_sq_norm.mean() / 6)
    (grad,) = torch.autograd.grad(penalty, latent)
    assert torch.allclose(grad, 4.0 * residual / (5 * 6))
    assert not grad[:, admm.support].any()


def test_update_with_nothing_accumulated_and_mask_before_any_projection_are_refused():
    admm = ADMM((2, 2), pruning_ratio=0.5, rho=1.0)
    with pytest.raises(ADMMError, match="no ADMM projection"):
        admm.mask()
    with pytest.raises(ADMMError, match="count was 0"):
        admm.update(*admm.pending())
    with pytest.raises(ADMMError, match="latents must be"):
        admm.accumulate(torch.zeros(1, 3, 3))


@pytest.mark.parametrize("structure", ["slot", "channel"])
def test_toy_problem_converges_to_k_sparse_latents(structure):
    """Latents = a trainable tensor plus noise, pulled toward a fixed random target; the
    penalty and the dual drive every latent onto one support of k slots."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 6, 6)
    target = torch.randn(shape, generator=g) * 2
    theta = target.clone().requires_grad_(True)
    admm = ADMM(shape, pruning_ratio=0.75, rho=4.0, structure=structure)
    opt = torch.optim.SGD([theta], lr=20.0)
    outside, supports = [], []  # latent energy outside the best support, before each update
    for _ in range(20):  # ADMM intervals
        for _ in range(5):  # training steps per interval
            latents = theta + 0.1 * torch.randn((16, *shape), generator=g)
            loss = 0.5 * (latents - target).square().mean() + admm.penalty(latents)
            opt.zero_grad()
            loss.backward()
            opt.step()
            admm.accumulate(latents)
        sums, count = admm.pending()
        outside.append(admm.energy_outside(sums[1] / count))
        admm.update(sums, count)
        supports.append(admm.support.clone())
    # Without the penalty the energy off the best support stays at its first value (a
    # quarter or more of the total); with it, it falls to the noise floor (0.1^2 per pruned
    # slot, under 1 %) and the support settles.
    assert outside[0] > 0.2
    assert max(outside[-3:]) < 0.01
    assert all(torch.equal(s, supports[-1]) for s in supports[-5:])
    assert int(admm.mask().sum()) == admm.k == 36
    if structure == "channel":
        kept = admm.mask().all(dim=(1, 2))
        assert int(kept.sum()) == 1 and torch.equal(admm.mask().any(dim=(1, 2)), kept)


def test_state_dict_round_trip_is_exact_including_pending_sums():
    admm = ADMM((2, 3, 3), pruning_ratio=0.6, rho=2.5)
    admm.accumulate(torch.randn(4, 2, 3, 3))
    admm.update(*admm.pending())
    admm.accumulate(torch.randn(2, 2, 3, 3))
    other = ADMM((2, 3, 3), pruning_ratio=0.6, rho=2.5)
    other.load_state_dict(admm.state_dict())
    for name in ("Z", "U", "support"):
        assert torch.equal(getattr(other, name), getattr(admm, name))
    assert other.updates == admm.updates == 1
    assert torch.equal(other.pending()[0], admm.pending()[0])
    assert other.pending()[1] == 2
    with pytest.raises(ADMMError, match="does not fit"):
        ADMM((2, 3, 3), pruning_ratio=0.1, rho=2.5).load_state_dict(admm.state_dict())
    with pytest.raises(ADMMError, match="does not fit"):
        ADMM((2, 3, 3), pruning_ratio=0.6, rho=2.5, structure="slot").load_state_dict(
            admm.state_dict()
        )
