"""ADMM on the latent: projection, k, penalty, accumulation, convergence, state."""

from __future__ import annotations

import pytest
import torch

from caeadmm.admm import ADMM, ADMMError, project_top_k


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
    assert ADMM(shape, ratio, rho=1.0).k == k


@pytest.mark.parametrize("ratio, rho", [(1.0, 1.0), (-0.1, 1.0), (0.99, 1.0), (0.5, -1.0)])
def test_invalid_settings_are_refused(ratio, rho):
    with pytest.raises(ADMMError):
        ADMM((4, 2, 2), ratio, rho)  # 0.99 of 16 slots keeps none


def test_mean_latent_divides_by_the_number_of_latents_summed():
    admm = ADMM((2, 2, 2), pruning_ratio=0.5, rho=1.0)
    a, b = torch.randn(3, 2, 2, 2), torch.randn(5, 2, 2, 2)
    admm.accumulate(a)
    admm.accumulate(b)
    latent_sum, count = admm.pending()
    assert count == 8
    c_bar = torch.cat([a, b]).mean(dim=0)
    assert torch.allclose(latent_sum / count, c_bar.double(), atol=1e-6)
    admm.update(latent_sum, count)
    expected_z, _ = project_top_k(c_bar, 4)
    assert torch.allclose(admm.Z, expected_z, atol=1e-6)
    assert torch.allclose(admm.U, c_bar - expected_z, atol=1e-6)
    assert admm.pending()[1] == 0 and not admm.pending()[0].any()


def test_update_accepts_all_reduced_tensors_as_a_distributed_caller_passes_them():
    admm = ADMM((4,), pruning_ratio=0.5, rho=1.0)
    admm.update(torch.tensor([4.0, -8.0, 2.0, 0.0], dtype=torch.float64), torch.tensor(2))
    assert admm.Z.tolist() == [2.0, -4.0, 0.0, 0.0]


def test_penalty_is_per_slot_mean_of_the_squared_residual_and_off_before_a_projection():
    admm = ADMM((2, 3), pruning_ratio=0.5, rho=4.0)
    latent = torch.randn(5, 2, 3, requires_grad=True)
    before = admm.penalty(latent)
    assert float(before.detach()) == 0.0
    before.backward()  # differentiable even when off
    admm.update(torch.randn(2, 3).double() * 3, 3)
    penalty = admm.penalty(latent)
    residual = latent.detach() - admm.Z + admm.U
    per_image_sq_norm = residual.square().flatten(1).sum(dim=1)
    assert torch.allclose(penalty, 0.5 * 4.0 * per_image_sq_norm.mean() / 6)
    (grad,) = torch.autograd.grad(penalty, latent)
    assert torch.allclose(grad, 4.0 * residual / (5 * 6))


def test_update_with_nothing_accumulated_and_mask_before_any_projection_are_refused():
    admm = ADMM((2, 2), pruning_ratio=0.5, rho=1.0)
    with pytest.raises(ADMMError, match="no ADMM projection"):
        admm.mask()
    with pytest.raises(ADMMError, match="count was 0"):
        admm.update(*admm.pending())
    with pytest.raises(ADMMError, match="latents must be"):
        admm.accumulate(torch.zeros(1, 3, 3))


def test_toy_problem_converges_to_a_k_sparse_mean_latent():
    """Latents = a trainable tensor plus noise, pulled toward a fixed random target; the
    penalty and the dual drive the mean latent onto its k-sparse projection."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 6, 6)
    target = torch.randn(shape, generator=g) * 2
    theta = target.clone().requires_grad_(True)
    admm = ADMM(shape, pruning_ratio=0.75, rho=4.0)
    opt = torch.optim.SGD([theta], lr=20.0)
    residuals, mean_norms = [], []  # ||c_bar - Z|| and ||c_bar|| before each update
    for _ in range(20):  # ADMM intervals
        for _ in range(5):  # training steps per interval
            latents = theta + 0.1 * torch.randn((16, *shape), generator=g)
            loss = 0.5 * (latents - target).square().mean() + admm.penalty(latents)
            opt.zero_grad()
            loss.backward()
            opt.step()
            admm.accumulate(latents)
        latent_sum, count = admm.pending()
        c_bar = (latent_sum / count).float()
        residuals.append(admm.residual(c_bar))
        mean_norms.append(float(c_bar.norm()))
        admm.update(latent_sum, count)
    # The residual falls to the noise floor of c_bar (noise 0.1 over 80 samples per slot).
    noise_floor = 0.1 / 80**0.5 * admm.numel**0.5
    assert max(residuals[-3:]) < 1.5 * noise_floor
    assert max(residuals[-3:]) < 0.05 * max(residuals[1:])
    assert residuals[-1] < 0.02 * mean_norms[-1]
    assert int((admm.Z != 0).sum()) == admm.k == 36
    assert int(admm.mask().sum()) == 36


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
