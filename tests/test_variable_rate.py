"""Variable-rate models (docs/variable-rate.md): one network whose gain vectors at a continuous
quality set the rate; the stream records the quality, and any quality in the range decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import test_image
from PIL import Image

from caeadmm import codec, zoo
from caeadmm.bitstream import BitstreamError, parse, quantize_quality
from caeadmm.config import ConfigError, ModelConfig, TrainConfig
from caeadmm.images import load_rgb
from caeadmm.model import CAE

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "caeadmm" / "samples").glob("*.*g"))
LEVELS = 4


def variable_rate_model(seed: int = 0, nested: int = 0) -> CAE:
    """A tiny variable-rate model: random weights with BatchNorm statistics of noise, the
    latent spread like a trained one's, the gains at their start (0.25 .. 1.25), and a
    channel mask; with `nested`, nested supports from that many channels at quality 0, the
    channels ranked on noise (caeadmm.channel_rank)."""
    torch.manual_seed(seed)
    model = CAE(ModelConfig(preset="tiny", width=16, n_blocks=1, latent_channels=8,
                            patch_size=32, quality_levels=LEVELS,
                            lowest_quality_channels=nested))  # fmt: skip
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        for q in range(LEVELS):
            model(torch.rand(16, 3, 32, 32), quality=float(q))
    model.encoder[-1][-1].weight.data.fill_(8.0)
    mask = torch.zeros(model.config.latent_shape(), dtype=torch.bool)
    mask[[0, 1, 3, 5, 6]] = True
    model.set_mask(mask)
    if nested:
        from caeadmm.channel_rank import rank_channels

        model.channel_rank.copy_(rank_channels(model, torch.rand(8, 3, 32, 32)))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CAE:
    return variable_rate_model()


def one_pass(image: np.ndarray, model: CAE, quality: float) -> np.ndarray:
    """The model's forward pass at `quality` over the whole (padded) image, 8-bit."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % 8 + 8 * (h < 16)), (0, -w % 8 + 8 * (w < 16)), (0, 0)),
                    mode="edge")  # fmt: skip
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    keep = model.mask[:, :1, :1]
    with torch.no_grad():
        latent = torch.round(model.analysis(x, quality).clamp(-127, 127)) * keep
    return model.synthesis_uint8(latent, quality)[0, :h, :w]


def test_rate_grows_with_the_quality_on_real_photos(model):
    assert SAMPLES, "the bundled sample photos are missing"
    for path in SAMPLES:
        image = load_rgb(path)
        sizes = [len(codec.compress(image, model, quality=q)) for q in (0, 1, 1.5, 2, 3)]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], (path.name, sizes)


@pytest.mark.parametrize("quality", [0.0, 0.7, 1.0, 2.25, LEVELS - 1])
def test_stream_at_any_quality_decodes_to_the_forward_pass(model, quality):
    image = test_image(75, 101, seed=2)
    data = codec.compress(image, model, quality=quality)
    header = parse(data)[0]
    recorded = quantize_quality(quality)  # 0.7 is 717 / 1024 in the stream
    assert header.version == 3 and header.quality == recorded
    np.testing.assert_array_equal(codec.decompress(data, model),
                                  one_pass(image, model, recorded))  # fmt: skip


@pytest.fixture(scope="module")
def nested() -> CAE:
    return variable_rate_model(nested=2)


@pytest.mark.parametrize(("quality", "held"), [(0.0, 2), (1.0, 3), (1.5, 3), (2.0, 4),
                                               (LEVELS - 1, 5)])  # fmt: skip
def test_nested_stream_holds_the_quality_support_and_decodes_to_the_forward_pass(
    nested, quality, held
):
    """A nested model's stream at quality q holds round(2 (5/2)^(q/3)) of the 5 kept
    channels, the others being all zero, and decodes to the forward pass's pixels."""
    image = test_image(75, 101, seed=2)
    data = codec.compress(image, nested, quality=quality)
    assert parse(data)[0].kept == held == len(nested.stream_channels(quality))
    np.testing.assert_array_equal(codec.decompress(data, nested),
                                  one_pass(image, nested, quality))  # fmt: skip


def test_nested_supports_grow_with_quality_in_the_channels_rank(nested):
    kept = nested.kept_channels()
    ranks = nested.channel_rank[kept]
    assert sorted(ranks.tolist()) == list(range(len(kept)))  # the kept channels rank first
    previous: set[int] = set()
    for quality in np.linspace(0, LEVELS - 1, 13):
        support = nested.quality_support(float(quality)).reshape(-1) > 0
        chosen = set(torch.nonzero(support).flatten().tolist())
        assert previous <= chosen <= set(kept.tolist())
        assert all(nested.channel_rank[c] < len(chosen) for c in chosen)
        previous = chosen
    assert len(previous) == len(kept)


def test_rank_channels_ranks_a_channel_the_decoder_ignores_last():
    """On trained weights (a shipped fixed-rate model, as training starts from one) and real
    photo patches, every kept channel costs something when dropped, except one whose
    decoder weights are zeroed: that one is ranked last of the kept, the pruned after it."""
    from caeadmm.channel_rank import rank_channels
    from caeadmm.checkpoint import load_into

    shipped = zoo.load("small-rate-k20-r2")
    config = ModelConfig.from_dict({**shipped.config.to_dict(), "quality_levels": 3,
                                    "lowest_quality_channels": 2})  # fmt: skip
    model = CAE(config)
    load_into(model, shipped.state_dict())
    kept = model.kept_channels()
    ignored = int(kept[len(kept) // 2])
    conv = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[:, ignored] = 0
    size = config.patch_size
    patches = [load_rgb(path)[:size, :size] for path in SAMPLES[:2]]
    batch = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float() / 255
    ranks = rank_channels(model, batch)
    assert int(ranks[ignored]) == len(kept) - 1
    assert sorted(ranks[kept].tolist()) == list(range(len(kept)))


def test_a_nested_model_grown_from_a_family_starts_as_its_lowest_rate_member():
    """grow_nested on shipped members of one lineage: the first one's channels rank first,
    then each next member's new ones; the last one's channels are kept; and at the start a
    photo decodes at every quality to the first member's pixels (the added channels'
    decoder weights are zero), while the stream holds more channels as the quality grows."""
    from caeadmm.channel_rank import grow_nested

    family = [zoo.load(name) for name in ("small-rate-k2", "small-rate-k3", "small-rate-k12-r2")]
    grown = grow_nested(family, quality_levels=3)
    low, mid, top = (set(m.kept_channels().tolist()) for m in family)
    order = grown.channel_rank.argsort()[: len(top)].tolist()
    assert set(order[:2]) == low and set(order[:3]) == low | (mid & top)
    assert set(grown.kept_channels().tolist()) == top
    image = load_rgb(SAMPLES[0])[:96, :128]
    base = codec.decompress(codec.compress(image, family[0]), family[0])
    sizes = []
    for quality in (0.0, 1.0, 2.0):
        data = codec.compress(image, grown, quality=quality)
        np.testing.assert_array_equal(codec.decompress(data, grown), base)
        assert parse(data)[0].kept == len(grown.stream_channels(quality))
        sizes.append(len(data))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_nested_config_is_checked():
    with pytest.raises(ConfigError, match="quality_levels"):
        ModelConfig(lowest_quality_channels=2)
    with pytest.raises(ConfigError, match="lowest_quality_channels"):
        ModelConfig(latent_channels=8, quality_levels=4, lowest_quality_channels=9)


def test_quality_between_levels_interpolates_the_gains(model):
    low, high = model.gain(1.0), model.gain(2.0)
    middle = model.gain(1.5)
    torch.testing.assert_close(middle.log(), (low.log() + high.log()) / 2)
    batch = model.gain(torch.tensor([1.0, 2.0]))
    assert batch.shape == (2, 8, 1, 1) and torch.equal(batch[1], high[0])


def test_quality_is_recorded_at_the_stream_resolution(model):
    data = codec.compress(test_image(40, 40), model, quality=1.00001)
    assert parse(data)[0].quality == 1.0
    assert data == codec.compress(test_image(40, 40), model, quality=1.0)


@pytest.mark.parametrize("target", [0.3, 1.0, 3.0])
def test_target_bpp_lands_at_most_on_the_target_and_close_to_it(model, target):
    image = load_rgb(SAMPLES[0])
    pixels = image.shape[0] * image.shape[1]
    data = codec.compress(image, model, target_bpp=target)
    bpp = 8 * len(data) / pixels
    lowest = 8 * len(codec.compress(image, model, quality=0)) / pixels
    highest = 8 * len(codec.compress(image, model, quality=LEVELS - 1)) / pixels
    if target < lowest:  # nothing fits: the nearest, the lowest quality
        assert parse(data)[0].quality == 0 and bpp == lowest
    elif target >= highest:
        assert parse(data)[0].quality == LEVELS - 1
    else:
        assert 0.95 * target <= bpp <= target, (lowest, bpp, highest)


def test_quality_errors_are_clear(model):
    image = test_image(32, 32)
    with pytest.raises(ValueError, match="needs a quality"):
        codec.compress(image, model)
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        codec.compress(image, model, quality=3.5)
    with pytest.raises(ValueError, match="one of them"):
        codec.compress(image, model, quality=1, target_bpp=0.5)
    fixed = CAE(ModelConfig(preset="tiny", width=16, n_blocks=1, latent_channels=8,
                            patch_size=32)).eval()  # fmt: skip
    with pytest.raises(ValueError, match="variable-rate models"):
        codec.compress(image, fixed, quality=1)


def test_a_fixed_rate_stream_is_refused_by_a_variable_rate_model(model, monkeypatch):
    data = codec.compress(test_image(32, 32), model, quality=1)
    header, payload = parse(data)
    fixed = codec.bitstream.pack(
        codec.bitstream.CaeHeader(**{**header.__dict__, "quality": None, "version": 2}),
        payload,
    )
    with pytest.raises(BitstreamError, match="variable-rate"):
        codec.decompress(fixed, model)


def test_training_config_draws_rate_weights_between_the_ends():
    cfg = TrainConfig(model=ModelConfig(latent_norm="none", entropy_model="factorized",
                                        quality_levels=9),  # fmt: skip
                      rate_lambda=32.0, rate_lambda_max=8192.0)
    assert cfg.lambda_at(0) == 8192.0 and cfg.lambda_at(8) == pytest.approx(32.0)
    assert cfg.lambda_at(4) == pytest.approx(512.0)
    with pytest.raises(ConfigError, match="rate_lambda_max"):
        TrainConfig(model=cfg.model, rate_lambda=32.0)
    with pytest.raises(ConfigError, match="quality_levels"):
        ModelConfig(quality_levels=1)


def test_quality_balance_scales_each_images_loss_by_its_rate_weight():
    """With quality_balance b, image i's D_i + lambda_i R_i counts (lambda_top / lambda_i)^b:
    the loss of a batch is the mean of those scaled per-image losses; b = 0 is the plain
    D + mean(lambda_i R_i)."""
    from caeadmm.losses import compute_loss, distortion

    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    bits = torch.tensor([900.0, 400.0, 100.0])
    lambdas = torch.tensor([32.0, 512.0, 8192.0])
    model = ModelConfig(latent_norm="none", entropy_model="factorized", quality_levels=9)
    for balance in (0.0, 0.5, 1.0):
        cfg = TrainConfig(model=model, rate_lambda=32.0, rate_lambda_max=8192.0,
                          w_msssim=0.0, w_ssim=0.0, w_mse=1e5, quality_balance=balance)  # fmt: skip
        loss, terms = compute_loss(x_hat, x, cfg, bits=bits, lambdas=lambdas)
        expected = 0.0
        for i in range(3):
            d_i, _ = distortion(x_hat[i : i + 1], x[i : i + 1], w_msssim=0.0, w_ssim=0.0,
                                w_mse=1e5)  # fmt: skip
            weight = (32.0 / lambdas[i]) ** balance
            expected += weight * (d_i + lambdas[i] * bits[i] / (64 * 64)) / 3
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert terms["bpp"].item() == pytest.approx(bits.mean().item() / (64 * 64))
    with pytest.raises(ConfigError, match="quality_balance"):
        TrainConfig(model=model, rate_lambda=32.0, rate_lambda_max=8192.0, quality_balance=-1)


def test_a_training_step_trains_every_image_at_its_own_quality(tmp_path):
    """One local training run of a variable-rate model: the gains move, the loss is finite,
    the exported model decodes at two qualities."""
    from caeadmm import train_local
    from caeadmm.checkpoint import load_model

    for i in range(3):
        Image.fromarray(test_image(80, 96, seed=i)).save(tmp_path / f"{i}.png")
    cfg = TrainConfig(
        model=ModelConfig(preset="tiny", patch_size=32, latent_norm="none",
                          entropy_model="factorized", train_rounding="mixed",
                          quality_levels=3),  # fmt: skip
        images=str(tmp_path), batch_size=4, warmup_steps=0, admm_steps=0, finetune_steps=6,
        pruning_ratio=0.0, w_msssim=0.0, rate_lambda=0.01, rate_lambda_max=1.0, lr=1e-2,
        log_every=3, checkpoint_every=0, eval_patches=2, threads=1,
    )
    train_local.train(cfg, tmp_path / "run", log=lambda line: None)
    model = load_model(tmp_path / "run" / "model.pt")
    start = CAE(cfg.model)
    assert not torch.equal(model.level_log_gain, start.level_log_gain)
    image = test_image(40, 48)
    for quality in (0.0, 2.0):
        data = codec.compress(image, model, quality=quality)
        assert codec.decompress(data, model).shape == image.shape


def test_nested_training_from_a_fixed_rate_model_ranks_its_channels(tmp_path):
    """A nested run that starts from fixed-rate weights ranks their channels first (one
    line says the order); the exported model's streams hold the nested supports."""
    import dataclasses

    from caeadmm import train_local
    from caeadmm.checkpoint import load_model, save_checkpoint

    for i in range(3):
        Image.fromarray(test_image(80, 96, seed=i)).save(tmp_path / f"{i}.png")
    fixed = ModelConfig(preset="tiny", patch_size=32, latent_norm="none",
                        entropy_model="factorized", train_rounding="mixed")  # fmt: skip
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "fixed.pt", model=CAE(fixed), admm=None, optimizer=None,
                    step=0, config=TrainConfig(model=fixed, rate_lambda=1.0))  # fmt: skip
    cfg = TrainConfig(
        model=dataclasses.replace(fixed, quality_levels=3, lowest_quality_channels=2),
        init_from=str(tmp_path / "fixed.pt"), images=str(tmp_path), batch_size=4,
        warmup_steps=0, admm_steps=0, finetune_steps=3, pruning_ratio=0.0, w_msssim=0.0,
        rate_lambda=0.01, rate_lambda_max=1.0, log_every=3, checkpoint_every=0,
        eval_patches=2, threads=1,
    )
    lines: list[str] = []
    train_local.train(cfg, tmp_path / "run", log=lines.append)
    assert any(line.startswith("nested supports: channels by importance") for line in lines)
    model = load_model(tmp_path / "run" / "model.pt")
    channels = model.config.latent_channels
    assert sorted(model.channel_rank.tolist()) == list(range(channels))
    for quality, held in ((0.0, 2), (2.0, channels)):
        data = codec.compress(test_image(40, 48), model, quality=quality)
        assert parse(data)[0].kept == held
        assert codec.decompress(data, model).shape == (40, 48, 3)


SHIPPED = [m for m in zoo.list_models() if m.default_quality is not None]


@pytest.mark.parametrize("info", SHIPPED, ids=[m.name for m in SHIPPED])
def test_shipped_variable_rate_model_rate_grows_with_quality(info):
    """On a real photo (a bundled sample), each whole quality step of a shipped variable-rate
    model gives a larger file, and --target-bpp lands within 5 % under its target."""
    model = zoo.load(info.name)
    image = load_rgb(SAMPLES[1])
    pixels = image.shape[0] * image.shape[1]
    top = model.config.quality_levels - 1
    sizes = [len(codec.compress(image, model, quality=q)) for q in range(0, top + 1, 2)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    target = 8 * (sizes[1] + sizes[2]) / 2 / pixels
    bpp = 8 * len(codec.compress(image, model, target_bpp=target)) / pixels
    assert 0.95 * target <= bpp <= target


def test_target_bpp_in_a_nested_models_rate_step_reports_the_nearest_under_it(tmp_path, capsys):
    """The shipped nested network's rate steps up where its third channel joins (quality
    8 log10(1.25) = 0.775): a target between the two sides gets the quality below the step,
    and `compress` says the stream is the nearest under the target."""
    from caeadmm.cli import main

    model = zoo.load(zoo.for_metric("ms-ssim"))
    assert model.config.lowest_quality_channels == 2
    image = load_rgb(SAMPLES[0])
    pixels = image.shape[0] * image.shape[1]
    below, above = (8 * len(codec.compress(image, model, quality=q)) / pixels
                    for q in (0.77, 0.78))  # fmt: skip
    assert above > 1.1 * below
    target = round((below + above) / 2, 4)
    assert main(["compress", str(SAMPLES[0]), "-o", str(tmp_path / "a.cae"), "--metric",
                 "ms-ssim", "--target-bpp", str(target)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"the target {target} bpp: the nearest under it" in out
    assert parse((tmp_path / "a.cae").read_bytes())[0].quality < 0.78
