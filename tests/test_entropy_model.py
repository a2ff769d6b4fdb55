"""The entropy models of the rate term: the estimate against the real coder, probabilities,
the mask, the likelihood floor, fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import coding
from caeadmm import entropy_model
from caeadmm.entropy_model import LIKELIHOOD_BOUND, DiscretizedLaplacian, build, fit
from coding.synthetic import sparse_laplacian

MAX = 127
# (share of zeros, Laplacian scale) per channel: dense and sparse, narrow and wide.
CHANNELS = [(0.0, 1.0), (0.3, 8.0), (0.6, 4.0), (0.0, 3.0)]
N = 32768


@pytest.fixture(scope="module")
def symbols() -> torch.Tensor:
    columns = [sparse_laplacian(N, z, s, seed=i) for i, (z, s) in enumerate(CHANNELS)]
    return torch.from_numpy(np.stack(columns, axis=1))  # (N, C)


@pytest.fixture
def one_thread():
    """Fitting runs thousands of tiny ops: on a busy machine one thread is far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_latent(symbols: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (1, C, N/128, 128) float: one image whose channel c holds column c."""
    return symbols.T.float().reshape(1, symbols.shape[1], -1, 128)


def real_bits(symbols: torch.Tensor) -> np.ndarray:
    """Bits of each channel coded on its own by the real coder (as a per-channel coder would)."""
    return np.array([coding.encoded_bits(column.numpy()) for column in symbols.T])


def per_channel_bits(model: entropy_model.EntropyModel, symbols: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (-torch.log2(model.likelihoods(as_latent(symbols)))).sum(dim=(0, 2, 3)).numpy()


def test_fitted_factorized_estimate_is_within_5_percent_of_the_real_coder(symbols, one_thread):
    torch.manual_seed(0)
    model = build("factorized", len(CHANNELS))
    real = real_bits(symbols)
    before = per_channel_bits(model, symbols).sum()
    total = fit(model, symbols, MAX, steps=300)
    estimate = per_channel_bits(model, symbols)
    assert total == pytest.approx(estimate.sum(), rel=1e-4)
    assert abs(estimate.sum() / real.sum() - 1) < 0.05
    assert np.all(np.abs(estimate / real - 1) < 0.05), estimate / real
    assert abs(before / real.sum() - 1) > 0.05  # the fit is what brought it there


def test_laplacian_fits_laplacian_symbols_but_not_extra_zeros(symbols, one_thread):
    """Why the factorized density is the default: a zero-mean Laplacian tracks dense
    Laplacian channels, but a channel with extra zeros costs it far more than the coder."""
    model = build("laplacian", len(CHANNELS))
    fit(model, symbols, MAX, steps=300)
    ratio = per_channel_bits(model, symbols) / real_bits(symbols)
    dense = [i for i, (zeros, _) in enumerate(CHANNELS) if zeros == 0]
    assert np.all(np.abs(ratio[dense] - 1) < 0.05), ratio
    assert ratio[2] > 1.1, ratio  # 60 % zeros


@pytest.mark.parametrize("kind", entropy_model.KINDS)
def test_probability_tables_are_distributions_matching_the_likelihoods(kind):
    torch.manual_seed(0)
    model = build(kind, 3)
    tables = model.probability_tables(MAX)
    assert tables.shape == (3, 2 * MAX + 1) and tables.dtype == torch.float64
    assert torch.allclose(tables.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert (tables >= 0).all()
    values = torch.arange(-5, 6, dtype=torch.float32).expand(3, -1)[None, :, :, None]
    with torch.no_grad():
        likelihoods = model.likelihoods(values)[0, :, :, 0].double()
    assert torch.allclose(tables[:, MAX - 5 : MAX + 6], likelihoods, rtol=1e-4, atol=1e-7)


def test_laplacian_likelihood_has_the_closed_form_also_at_the_median():
    model = DiscretizedLaplacian(1, init_scale=2.0)
    values = torch.tensor([0.0, 1.0, -3.0, 0.3]).reshape(1, 1, 4, 1)
    with torch.no_grad():
        got = model.likelihoods(values).flatten().tolist()

    def cdf(v: float) -> float:
        return 0.5 * math.exp(v / 2) if v < 0 else 1 - 0.5 * math.exp(-v / 2)

    expected = [cdf(v + 0.5) - cdf(v - 0.5) for v in (0.0, 1.0, -3.0, 0.3)]
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", entropy_model.KINDS)
def test_bits_count_only_the_kept_slots(kind):
    torch.manual_seed(0)
    model = build(kind, 4)
    latent = torch.randint(-6, 7, (2, 4, 3, 3)).float()
    mask = torch.zeros(4, 3, 3, dtype=torch.bool)
    mask[1] = True
    mask[3, 0, 0] = True
    with torch.no_grad():
        per_slot = -torch.log2(model.likelihoods(latent))
        bits = model.bits(latent, mask)
        changed = latent.clone()
        changed[:, ~mask] = 50.0  # what sits in pruned slots does not count
        assert torch.equal(model.bits(changed, mask), bits)
    assert bits.shape == (2,)
    assert torch.allclose(bits, per_slot[:, mask].sum(dim=1))
    assert torch.allclose(model.bits(latent).detach(), per_slot.flatten(1).sum(dim=1))


def test_likelihood_floor_keeps_bits_finite_and_gradients_flowing():
    model = DiscretizedLaplacian(1, init_scale=0.5)
    far = torch.full((1, 1, 1, 1), 12.0)  # true mass about e^-24 / 2, below the floor
    likelihood = model.likelihoods(far)
    assert float(likelihood.detach()) == pytest.approx(LIKELIHOOD_BOUND)
    model.bits(far).sum().backward()
    # The floor passes the gradient that raises the likelihood: the scale is pushed up.
    assert float(model.log_scale.grad) < 0


@pytest.mark.parametrize("kind", entropy_model.KINDS)
def test_gradient_of_the_bits_reaches_the_latent_and_the_model(kind):
    torch.manual_seed(0)
    model = build(kind, 2)
    latent = (torch.randn(1, 2, 4, 4) * 3).requires_grad_(True)
    model.bits(latent).sum().backward()
    assert latent.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_wrong_shapes_and_kinds_are_refused():
    model = build("factorized", 3)
    with pytest.raises(ValueError, match="latent must be"):
        model.likelihoods(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="symbols must be"):
        fit(model, torch.zeros(10, 2, dtype=torch.int32), MAX)
    with pytest.raises(ValueError, match="unknown entropy model"):
        build("gaussian", 3)
