"""The network: shapes, quantizer, mask, inference path and fingerprint."""

from __future__ import annotations

import math

import pytest
import torch

from caeadmm.config import ConfigError, ModelConfig
from caeadmm.layers import GDN
from caeadmm.model import CAE, LATENT_MAX, InputShapeError, quantize, unwrap

SHIPPED_FIELDS = {"preset", "width", "n_blocks", "latent_channels", "patch_size"}


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


# -- the rate-aware options (docs/rate.md) ---------------------------------------------------


def rate_model(**overrides) -> CAE:
    torch.manual_seed(0)
    options = {"latent_norm": "none", "entropy_model": "factorized", **overrides}
    return CAE(ModelConfig.from_preset("tiny", **options))


def test_default_options_keep_the_shipped_config_dict_and_network():
    """The canonical dict (hashed by the fingerprint) of a default config has only the fields
    the shipped models had, and the default network has exactly their parameters."""
    config = ModelConfig.from_preset("small")
    assert set(config.to_dict()) == SHIPPED_FIELDS
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = CAE(config)
    assert not any(isinstance(m, GDN) for m in model.modules())
    assert not any(name.startswith(("entropy", "log_gain")) for name in model.state_dict())
    assert isinstance(model.encoder[-1][-1], torch.nn.BatchNorm2d)


def test_non_default_options_enter_the_config_dict_and_the_fingerprint():
    config = ModelConfig.from_preset("tiny", latent_gain=True, norm="gdn")
    data = config.to_dict()
    assert data["latent_gain"] is True and data["norm"] == "gdn"
    assert "entropy_model" not in data
    assert ModelConfig.from_dict(data) == config
    torch.manual_seed(0)
    a = CAE(ModelConfig.from_preset("tiny", latent_gain=True))
    b = CAE(ModelConfig.from_preset("tiny", latent_gain=True, train_rounding="mixed"))
    b.load_state_dict(a.state_dict())
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize(
    "field, value", [("norm", "layernorm"), ("latent_norm", "gdn"), ("entropy_model", "gauss"),
                     ("train_rounding", "noise"), ("latent_gain", "yes"),
                     ("rate_estimate", "hyperprior")],
)
def test_bad_option_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_preset("tiny", **{field: value})


def test_latent_norm_none_ends_the_encoder_with_a_biased_conv():
    model = rate_model()
    last = model.encoder[-1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in last)
    assert last[1].bias is not None


@pytest.mark.parametrize("rounding", ["stochastic", "mixed"])
def test_gradients_reach_the_encoder_through_the_rate_term(rounding):
    model = rate_model(train_rounding=rounding).train()
    x = torch.rand(2, 3, 48, 48)
    _, _, bits = model(x, rate=True)
    assert bits.shape == (2,) and (bits > 0).all()
    bits.sum().backward()  # the rate alone
    first_conv = model.encoder[0][1].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.entropy.parameters())


def test_mixed_rounding_decodes_rounded_values_and_rates_noisy_ones():
    model = rate_model(train_rounding="mixed").train()
    x = torch.rand(2, 3, 48, 48)
    x_hat_1, latent_1, bits_1 = model(x, rate=True)
    x_hat_2, latent_2, bits_2 = model(x, rate=True)
    assert torch.equal(latent_1, latent_2) and torch.equal(x_hat_1, x_hat_2)  # deterministic
    assert torch.equal(latent_1, latent_1.round())
    assert not torch.equal(bits_1, bits_2)  # the noise


def masked_eval_rate(model: CAE | None = None):
    """A masked rate model in eval mode (`model`, or the default rate_model), an input, its rate
    and its encoded symbols."""
    model = (model or rate_model()).eval()
    model.set_mask(tiny_mask(model))
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        bits = model(x, rate=True)[2]
        symbols = model.encode(x).float()
    return model, x, bits, symbols


def test_eval_rate_is_the_estimate_of_the_encoded_symbols_and_only_of_kept_slots():
    model, _, bits, symbols = masked_eval_rate()
    with torch.no_grad():
        per_slot = -torch.log2(model.entropy.likelihoods(symbols))
    assert torch.allclose(bits, per_slot[:, model.mask].sum(dim=1))


@pytest.mark.parametrize("estimate", ["adaptive", "adaptive-runs"])
def test_adaptive_rate_estimate_is_the_per_image_adapted_bits_and_trains_the_encoder(
    estimate, monkeypatch
):
    model = rate_model(rate_estimate=estimate)
    asked = []
    adaptive_bits = model.entropy.adaptive_bits

    def recording(*args, **kwargs):
        asked.append(kwargs["zero_context"])
        return adaptive_bits(*args, **kwargs)

    monkeypatch.setattr(model.entropy, "adaptive_bits", recording)
    model, x, bits, symbols = masked_eval_rate(model)
    runs = estimate == "adaptive-runs"
    with torch.no_grad():
        adaptive = adaptive_bits(symbols, LATENT_MAX, model.mask, runs)
    assert torch.allclose(bits, adaptive)
    assert asked == [runs]
    model.train()
    model(x, rate=True)[2].sum().backward()
    assert model.encoder[0][1].weight.grad.abs().sum() > 0


def test_rate_needs_an_entropy_model(tiny):
    with pytest.raises(ConfigError, match="entropy_model"):
        tiny(torch.rand(1, 3, 48, 48), rate=True)


def test_latent_gain_scales_before_rounding_and_back_before_the_decoder():
    model = rate_model(latent_gain=True).eval()
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        y = model.encoder(x)
        model.log_gain.fill_(math.log(4.0))
        symbols = model.encode(x)
        assert torch.equal(symbols, (4 * y).round().clamp(-LATENT_MAX, LATENT_MAX).int())
        expected = (torch.tanh(model.decoder(symbols.float() / 4)) + 1) / 2
        assert torch.allclose(model.decode(symbols), expected, atol=1e-6)
        x_hat, _ = model(x)
        assert torch.allclose(x_hat, model.decode(symbols), atol=1e-6)


def test_gdn_network_replaces_batchnorm_and_prelu_and_runs_both_ways():
    model = rate_model(norm="gdn").eval()
    kinds = [type(m) for m in model.modules()]
    assert torch.nn.BatchNorm2d not in kinds
    gdns = [m for m in model.modules() if isinstance(m, GDN)]
    assert any(g.inverse for g in gdns) and any(not g.inverse for g in gdns)
    assert all(not g.inverse for g in model.encoder.modules() if isinstance(g, GDN))
    x = torch.rand(2, 3, 48, 48)
    symbols = model.encode(x)
    assert model.decode(symbols).shape == x.shape


def test_igdn_inverts_gdn_where_the_normalisation_is_linear():
    """With gamma = 0 both are a fixed scaling by sqrt(beta) and exact inverses; with the
    initial gamma they are inverses up to O(gamma x^2) for small inputs."""
    torch.manual_seed(0)
    gdn, igdn = GDN(4), GDN(4, inverse=True)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        for module in (gdn, igdn):
            module.gamma.zero_()
            module.beta.fill_(2.0)  # beta = 4 - pedestal
        assert torch.allclose(igdn(gdn(x)), x, atol=1e-5)
        assert torch.allclose(gdn(x), x / 2, atol=1e-5)
        fresh, fresh_inverse = GDN(4), GDN(4, inverse=True)
        small = 0.05 * x
        assert torch.allclose(fresh_inverse(fresh(small)), small, rtol=1e-2, atol=1e-5)
        assert not torch.allclose(fresh_inverse(fresh(10 * x)), 10 * x, rtol=1e-2)


def test_gdn_parameters_stay_non_negative_under_gradient_steps():
    gdn = GDN(3)
    optimizer = torch.optim.SGD(gdn.parameters(), lr=10.0)
    x = torch.randn(4, 3, 6, 6)
    for _ in range(5):
        optimizer.zero_grad()
        gdn(x).square().sum().neg().backward()  # pushes the normalisation towards zero
        optimizer.step()
    y = gdn(x)
    assert torch.isfinite(y).all()
    # |y_i| <= |x_i| / sqrt(beta_min): beta never falls below its floor
    assert (y.abs() <= x.abs() / gdn.beta_min**0.5 + 1e-3).all()


def test_a_preset_name_always_builds_its_sizes():
    assert (ModelConfig(preset="paper").width, ModelConfig(preset="paper").n_blocks) == (128, 15)
    assert ModelConfig().to_dict() == {  # the shipped models' canonical config, unchanged
        "preset": "small", "width": 64, "n_blocks": 3, "latent_channels": 32, "patch_size": 128,
    }
    with pytest.raises(ConfigError, match="contradicts preset 'paper'.*preset: custom"):
        ModelConfig(preset="paper", width=64)
    with pytest.raises(ConfigError, match="'custom' needs model.width"):
        ModelConfig(preset="custom", n_blocks=1)
    assert ModelConfig(preset="custom", width=24, n_blocks=2).width == 24
