"""The network: shapes, quantizer, mask, inference path and fingerprint."""

from __future__ import annotations

import pytest
import torch

from caeadmm.config import ModelConfig
from caeadmm.model import CAE, LATENT_MAX, InputShapeError, quantize, unwrap


@pytest.fixture(scope="module")
def tiny() -> CAE:
    torch.manual_seed(0)
    return CAE(ModelConfig.from_preset("tiny")).eval()


def tiny_mask(model: CAE, keep_every: int = 3) -> torch.Tensor:
    shape = model.config.latent_shape()
    return (torch.arange(torch.Size(shape).numel()) % keep_every == 0).reshape(shape)


@pytest.mark.parametrize("patch", [64, 128, 256])
def test_shapes_for_patch_sizes(patch):
    torch.manual_seed(0)
    model = CAE(ModelConfig.from_preset("tiny", patch_size=patch, latent_channels=16)).eval()
    x = torch.rand(1, 3, patch, patch)
    with torch.no_grad():
        x_hat, latent = model(x)
    assert x_hat.shape == x.shape
    assert latent.shape == (1, 16, patch // 8, patch // 8)
    assert 0.0 <= float(x_hat.min()) and float(x_hat.max()) <= 1.0
    symbols = model.encode(x)
    assert symbols.dtype == torch.int32 and symbols.shape == latent.shape
    assert model.decode(symbols).shape == x.shape


def test_paper_preset_builds_the_papers_network():
    model = CAE(ModelConfig.from_preset("paper"))
    assert (model.config.width, model.config.n_blocks) == (128, 15)
    n_blocks = sum(type(m).__name__ == "ResidualBlock" for m in model.modules())
    assert n_blocks == 30  # 15 in the encoder, 15 in the decoder


def test_unmasked_model_takes_any_multiple_of_8_from_16_and_non_square(tiny):
    x = torch.rand(2, 3, 16, 40)
    assert tiny.encode(x).shape == (2, 8, 2, 5)
    assert tiny.decode(tiny.encode(x)).shape == x.shape


@pytest.mark.parametrize("shape", [(1, 3, 20, 32), (1, 3, 8, 8), (1, 1, 32, 32), (3, 32, 32)])
def test_bad_image_shapes_are_refused_clearly(tiny, shape):
    with pytest.raises(InputShapeError):
        tiny.encode(torch.rand(shape))


def test_quantizer_has_identity_gradient_and_integer_values_in_training():
    torch.manual_seed(0)
    y = (torch.randn(4, 8, 6, 6) * 5).requires_grad_(True)
    q = quantize(y, stochastic=True)
    assert torch.equal(q, q.round())
    assert float((q - y).detach().abs().max()) < 1.0
    (grad,) = torch.autograd.grad((q * torch.arange(6.0)).sum(), y)
    assert torch.equal(grad, torch.arange(6.0).expand_as(y))


def test_stochastic_rounding_is_unbiased_and_random():
    torch.manual_seed(0)
    y = torch.full((200_000,), 0.3)
    q = quantize(y, stochastic=True)
    assert set(q.unique().tolist()) == {0.0, 1.0}
    assert abs(float(q.mean()) - 0.3) < 0.01


def test_quantizer_clamps_to_the_symbol_range():
    y = torch.tensor([-1e6, -LATENT_MAX - 0.4, 3.6, 1e6])
    assert quantize(y, stochastic=False).tolist() == [-LATENT_MAX, -LATENT_MAX, 4.0, LATENT_MAX]
    assert float(quantize(y, stochastic=True).abs().max()) == LATENT_MAX


def test_eval_forward_and_encode_are_deterministic_and_agree(tiny):
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        x_hat_1, latent_1 = tiny(x)
        x_hat_2, latent_2 = tiny(x)
    assert torch.equal(latent_1, latent_2) and torch.equal(x_hat_1, x_hat_2)
    assert torch.equal(tiny.encode(x), latent_1.to(torch.int32))
    assert torch.allclose(tiny.decode(tiny.encode(x)), x_hat_1)


def test_training_forward_rounds_stochastically_and_encode_does_not():
    torch.manual_seed(0)
    model = CAE(ModelConfig.from_preset("tiny")).train()
    x = torch.rand(4, 3, 48, 48)
    _, latent_1 = model(x)
    _, latent_2 = model(x)
    assert not torch.equal(latent_1, latent_2)
    assert torch.equal(model.encode(x), model.encode(x))
    assert model.training  # encode and decode leave the module's mode as it was


def test_mask_zeroes_pruned_slots_both_ways_and_needs_tile_sized_input():
    torch.manual_seed(0)
    model = CAE(ModelConfig.from_preset("tiny")).eval()
    mask = tiny_mask(model)
    model.set_mask(mask)
    x = torch.rand(2, 3, 48, 48)
    symbols = model.encode(x)
    assert not symbols[:, ~mask].any()
    with torch.no_grad():
        _, latent = model(x)
    assert not latent[:, ~mask].any()
    # decode ignores whatever sits in pruned slots
    noisy = symbols.clone()
    noisy[:, ~mask] = 5
    assert torch.equal(model.decode(noisy), model.decode(symbols))
    with pytest.raises(InputShapeError, match="48 x 48 tiles"):
        model.encode(torch.rand(1, 3, 96, 96))
    with pytest.raises(InputShapeError, match="48 x 48 tiles"):
        model.decode(torch.zeros(1, 8, 12, 12, dtype=torch.int32))


def test_set_mask_validates_and_mask_travels_in_state_dict(tiny):
    model = CAE(tiny.config)
    with pytest.raises(InputShapeError):
        model.set_mask(torch.ones(8, 5, 5, dtype=torch.bool))
    with pytest.raises(InputShapeError):
        model.set_mask(torch.ones(8, 6, 6))  # not bool
    mask = tiny_mask(model)
    model.set_mask(mask)
    state = model.state_dict()
    assert torch.equal(state["mask"], mask)
    fresh = CAE(tiny.config)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.mask, mask)
    model.set_mask(None)
    assert "mask" not in model.state_dict()
    fresh.load_state_dict(model.state_dict())  # loading an unmasked state clears the mask
    assert fresh.mask is None


def test_fingerprint_changes_with_a_weight_the_mask_or_the_config(tiny):
    torch.manual_seed(0)
    a = CAE(tiny.config)
    b = CAE(tiny.config)
    b.load_state_dict(a.state_dict())
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 32

    with torch.no_grad():
        b.decoder[-1][0].weight[0, 0, 0, 0] += 1e-6
    assert a.fingerprint() != b.fingerprint()

    b.load_state_dict(a.state_dict())
    b.set_mask(tiny_mask(b))
    masked = b.fingerprint()
    assert masked != a.fingerprint()
    b.set_mask(tiny_mask(b, keep_every=2))
    assert b.fingerprint() != masked

    c = CAE(ModelConfig.from_preset("tiny", patch_size=64))
    c.load_state_dict(a.state_dict())  # same weights, different config
    assert c.fingerprint() != a.fingerprint()


def test_unwrap_reaches_the_model_inside_a_wrapper(tiny):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(Wrapper(tiny)) is tiny
    assert unwrap(tiny) is tiny
    with pytest.raises(TypeError):
        unwrap(torch.nn.Linear(2, 2))
