"""init_from: continuing from a registered model by name, and from a model whose quantizer
options differ (a rate-aware model started from a shipped one computes the same latent)."""

from __future__ import annotations

import pytest
import torch

from caeadmm import zoo
from caeadmm.checkpoint import CHECKPOINT_VERSION, MODEL_FORMAT, init_weights, load_into
from caeadmm.config import ConfigError, ModelConfig, TrainConfig
from caeadmm.model import CAE
from caeadmm.train_loop import ENTROPY_LR_SCALE, make_optimizer, new_admm, train_step

# A shipped model trained with the paper's loss (no entropy model): the tests add one.
SHIPPED = next(m.name for m in zoo.list_models() if zoo.load(m.name).config.entropy_model == "none")


def _rate_config(source: CAE, **changes) -> ModelConfig:
    fields = {**source.config.to_dict(), "latent_norm": "none", "entropy_model": "factorized",
              "train_rounding": "mixed", **changes}
    return ModelConfig.from_dict(fields)


def test_init_from_a_registered_name_loads_its_weights():
    source = zoo.load(SHIPPED)
    cfg = TrainConfig(model=source.config, init_from=SHIPPED, pruning_ratio=0.0)
    weights = init_weights(cfg)
    net = CAE(source.config)
    assert load_into(net, weights) == []
    assert net.fingerprint() == source.fingerprint()


def test_init_from_unknown_name_says_what_is_registered():
    cfg = TrainConfig(init_from="no-such-model", pruning_ratio=0.0)
    with pytest.raises(ConfigError, match=f"neither a file nor a registered model.*{SHIPPED}"):
        init_weights(cfg)


def test_rate_aware_model_from_a_shipped_one_encodes_and_decodes_the_same():
    source = zoo.load(SHIPPED)
    net = CAE(_rate_config(source)).eval()
    fresh = load_into(net, source.state_dict())
    assert fresh and all(name.startswith("entropy.") for name in fresh)  # only the new model
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128)
    symbols = source.encode(x)
    assert torch.equal(net.encode(x), symbols)  # the BatchNorm folded into the convolution
    assert torch.equal(net.decode(symbols), source.decode(symbols))
    assert torch.equal(net.mask, source.mask)


def test_init_from_refuses_another_network_shape():
    source = zoo.load(SHIPPED)
    model = _rate_config(source, preset="custom", width=32)
    cfg = TrainConfig(model=model, rate_lambda=1.0, init_from=SHIPPED, pruning_ratio=0.0)
    with pytest.raises(ConfigError, match=r"\(preset, width differ\)"):
        init_weights(cfg)


def test_the_entropy_model_learns_at_a_higher_rate():
    cfg = TrainConfig(model=ModelConfig.from_preset("tiny", latent_norm="none",
                                                    entropy_model="factorized"),
                      rate_lambda=1.0, pruning_ratio=0.0, warmup_steps=0, admm_steps=0,
                      finetune_steps=2, lr=1e-3)
    net = CAE(cfg.model)
    optimizer = make_optimizer(net, cfg)
    net_group, entropy_group = optimizer.param_groups
    assert {id(p) for p in entropy_group["params"]} == {id(p) for p in net.entropy.parameters()}
    train_step(net, new_admm(cfg), optimizer, torch.rand(2, 3, 48, 48), 0, cfg)
    assert entropy_group["lr"] == ENTROPY_LR_SCALE * net_group["lr"] > 0


def test_a_channel_mask_continues_on_larger_crops():
    source = zoo.load(SHIPPED)  # channel-masked: every position keeps the same channels
    model = ModelConfig.from_dict({**source.config.to_dict(), "patch_size": 176})
    net = CAE(model).eval()
    assert load_into(net, init_weights(TrainConfig(model=model, init_from=SHIPPED,
                                                   pruning_ratio=0.0))) == []
    assert net.mask.shape == (32, 22, 22)
    kept = source.mask[:, 0, 0]
    assert torch.equal(net.mask, kept[:, None, None].expand(-1, 22, 22))
    torch.manual_seed(0)
    x = torch.rand(1, 3, 176, 176)
    symbols = net.encode(x)
    assert not symbols[:, ~kept].any()
    # The same network: the same symbols where both see the same pixels (away from the border
    # of the 128 px tile, beyond the encoder's reach of 4 latent positions).
    tile = source.encode(x[..., :128, :128])
    assert torch.equal(symbols[..., 5:11, 5:11], tile[..., 5:11, 5:11])


def test_a_slot_mask_does_not_change_its_patch_size(tmp_path):
    source = zoo.load(SHIPPED)
    mask = source.mask.clone()
    mask[:, 0, 0] = ~mask[:, 0, 0]  # now positions differ: a slot mask
    state = {**source.state_dict(), "mask": mask}
    path = tmp_path / "slot.pt"
    torch.save({"format": MODEL_FORMAT, "version": CHECKPOINT_VERSION, "model": state,
                "model_config": source.config.to_dict()}, path)
    model = ModelConfig.from_dict({**source.config.to_dict(), "patch_size": 176})
    with pytest.raises(ConfigError, match=r"\(patch_size differ\)"):
        init_weights(TrainConfig(model=model, init_from=str(path), pruning_ratio=0.0))
