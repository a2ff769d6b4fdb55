"""The Pillow baselines, the codec registry, the codec list parser and one-point measurement.

The `cae` entry is tested here with stand-in `caeadmm.codec` / `caeadmm.zoo` modules (the
plumbing: lazy import, one model load per name, bytes and pixels passed through). The real
codec is exercised by test_cae_with_the_real_codec once `coding/` and a model exist; re-run
this file then.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from caeadmm import baselines
from caeadmm.baselines import CodecError, get_codec, measure, parse_codecs
from caeadmm.images import ImageLoadError

PILLOW_CODECS = ["jpeg", "webp", "jpeg2000", "avif", "jpeg-default", "webp-default"]


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 4 + y, y * 3 + 30, (x * y) % 180 + 40], axis=-1)
    return np.clip(base + rng.integers(-25, 26, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", PILLOW_CODECS)
@pytest.mark.parametrize("shape", [(48, 64), (37, 53), (1, 1), (3, 50), (16, 2)])
def test_roundtrip_keeps_size_and_reports_true_bpp(name, shape):
    codec = get_codec(name)
    rgb = _image(*shape)
    setting = codec.default_settings[len(codec.default_settings) // 2]
    data, decoded = codec(rgb, setting)
    assert isinstance(data, bytes) and len(data) > 0
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8

    row = measure("x.png", rgb, name, setting)
    assert row["bytes"] == len(codec.encode(rgb, setting))
    assert row["bpp"] == 8 * row["bytes"] / (shape[0] * shape[1])
    assert (row["height"], row["width"]) == shape


@pytest.mark.parametrize("name", PILLOW_CODECS)
def test_setting_controls_the_rate(name):
    """Lowest and highest default setting: the sweep really reaches the encoder."""
    codec = get_codec(name)
    rgb = _image(64, 96)
    low, high = codec.default_settings[0], codec.default_settings[-1]
    small, _ = codec(rgb, low)
    large, _ = codec(rgb, high)
    assert len(small) < len(large)
    assert measure("x", rgb, name, low)["psnr"] < measure("x", rgb, name, high)["psnr"]


def test_jpeg2000_rate_mode_hits_its_target():
    """OpenJPEG stops at coding-pass boundaries, so the rate is close, not exact."""
    rgb = _image(256, 256)
    for target in (0.5, 1.0, 2.0):
        row = measure("x", rgb, "jpeg2000", target)
        assert row["bpp"] == pytest.approx(target, rel=0.1)


def test_measure_row_has_every_column():
    row = measure("a/b.png", _image(20, 30), "jpeg", 50)
    assert list(row) == [
        "image", "codec", "setting", "bytes", "bpp", "psnr", "ms_ssim", "ssim", "encode_s",
        "decode_s", "height", "width",
    ]
    assert row["image"] == "a/b.png" and row["setting"] == "50"
    assert row["encode_s"] >= 0 and row["decode_s"] >= 0


@pytest.mark.parametrize("name", PILLOW_CODECS)
def test_corrupt_bytes_fail_cleanly(name):
    codec = get_codec(name)
    data = codec.encode(_image(32, 32), codec.default_settings[0])
    with pytest.raises(ImageLoadError):
        codec.decode(data[: len(data) // 3], codec.default_settings[0])


def test_parse_codecs_defaults_settings_and_repeats():
    parsed = parse_codecs("jpeg, webp:10+50 ,cae:small-r50+small-r75,cae:small-r90,cae:small-r50")
    assert parsed["jpeg"] == list(get_codec("jpeg").default_settings)
    assert parsed["webp"] == [10, 50]
    assert parsed["cae"] == ["small-r50", "small-r75", "small-r90"]
    assert list(parsed) == ["jpeg", "webp", "cae"]
    assert parse_codecs("jpeg2000:0.25+1")["jpeg2000"] == [0.25, 1.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("png", "unknown codec"),
        ("jpeg:abc", "bad setting"),
        ("jpeg:101", "bad setting"),
        ("jpeg2000:0", "bad setting"),
        ("webp:10+", "bad setting"),
        ("cae", "needs settings"),
        ("", "no codec"),
        (" , ", "no codec"),
    ],
)
def test_parse_codecs_rejects_bad_specs(spec, message):
    with pytest.raises(CodecError, match=message):
        parse_codecs(spec)


# -- the CAE entry ------------------------------------------------------------------------------


@pytest.fixture
def stand_in_cae(monkeypatch):
    """Stand-in codec and zoo: 'compresses' by storing the pixels, counts model loads."""
    loads: list[str] = []
    zoo = types.ModuleType("caeadmm.zoo")
    codec = types.ModuleType("caeadmm.codec")

    def load(name):
        loads.append(name)
        return {"name": name}

    def compress(image, model, quality=None):
        assert quality is None  # fixed-rate stand-ins
        h, w = image.shape[:2]
        return model["name"].encode() + b"|" + bytes([h, w]) + image.tobytes()

    def decompress(data, model):
        prefix = model["name"].encode() + b"|"
        assert data.startswith(prefix), "decoded with another model"
        h, w = data[len(prefix)], data[len(prefix) + 1]
        return np.frombuffer(data[len(prefix) + 2 :], np.uint8).reshape(h, w, 3)

    zoo.load, codec.compress, codec.decompress = load, compress, decompress
    zoo.METRICS, zoo.default_quality = (), lambda name, model: None
    monkeypatch.setitem(sys.modules, "caeadmm.zoo", zoo)
    monkeypatch.setitem(sys.modules, "caeadmm.codec", codec)
    import caeadmm

    monkeypatch.setattr(caeadmm, "zoo", zoo, raising=False)
    monkeypatch.setattr(caeadmm, "codec", codec, raising=False)
    baselines._load_cae.cache_clear()
    yield loads
    baselines._load_cae.cache_clear()


def test_cae_entry_calls_codec_and_zoo_lazily(stand_in_cae):
    rgb = _image(12, 20)
    rows = [measure(f"im{i}", rgb, "cae", model) for i in range(3) for model in ("m1", "m2")]
    assert stand_in_cae == ["m1", "m2"]  # one load per model, not per image
    for row in rows:
        assert row["psnr"] == float("inf") and row["ms_ssim"] == pytest.approx(1.0)
        assert row["bytes"] == len(row["setting"]) + 1 + 2 + rgb.size
        assert row["bpp"] == 8 * row["bytes"] / (rgb.shape[0] * rgb.shape[1])


def test_cae_with_the_real_codec(monkeypatch):
    """A tiny untrained CAE through the real caeadmm.codec; skips until coding/ exists."""
    codec = pytest.importorskip("caeadmm.codec", exc_type=ImportError)
    pytest.importorskip("coding", exc_type=ImportError)
    if not hasattr(sys.modules["coding"], "encode"):
        pytest.skip("coding/ has no encoder yet")
    from caeadmm.config import ModelConfig
    from caeadmm.model import CAE

    config = ModelConfig(preset="custom", width=8, n_blocks=0, latent_channels=4, patch_size=16)
    model = CAE(config).eval()
    zoo = types.ModuleType("caeadmm.zoo")
    zoo.load = lambda name: model
    zoo.METRICS, zoo.default_quality = (), lambda name, model: None
    monkeypatch.setitem(sys.modules, "caeadmm.zoo", zoo)
    import caeadmm

    monkeypatch.setattr(caeadmm, "zoo", zoo, raising=False)
    baselines._load_cae.cache_clear()
    try:
        rgb = _image(21, 35)
        row = measure("x", rgb, "cae", "tiny")
        assert row["bytes"] == len(codec.compress(rgb, model))
        assert row["bpp"] == 8 * row["bytes"] / (21 * 35)
    finally:
        baselines._load_cae.cache_clear()


def test_variable_rate_settings_expand_to_one_setting_per_quality():
    codecs = parse_codecs("cae:mse@0,1,2.5,jpeg:50,cae:small-k6+ms-ssim@3")
    assert codecs == {"cae": ["mse@0", "mse@1", "mse@2.5", "small-k6", "ms-ssim@3"],
                      "jpeg": [50]}  # fmt: skip
    with pytest.raises(CodecError, match="bad setting"):
        parse_codecs("cae:mse@high")
