"""Image codec: whole-image ("channels") and tile round trips at awkward sizes, exactness
against the model's own computation, the derived receptive fields, windows against one pass,
determinism, grayscale, wrong models, bounded memory and fuzzing of the whole decoder."""

from __future__ import annotations

import json
import math
import os
import resource
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import channels_stream, test_image, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import coding
from caeadmm import bitstream, codec, legacy, windows, zoo
from caeadmm.bitstream import HEADER_BYTES, BitstreamError, ModelMismatchError, pack, parse
from caeadmm.files import write_atomic
from caeadmm.model import CAE, eval_mode, padded_side
from coding import planes
from coding.format import get_varint

ROOT = Path(__file__).resolve().parents[1]


def channel_model(seed: int = 0, keep: tuple[int, ...] = (0, 2, 3, 6)) -> CAE:
    """The tiny model with a channel-structured mask: whole-image ("channels") layout."""
    model = tiny_model(seed=seed)
    mask = torch.zeros(model.config.latent_shape(), dtype=torch.bool)
    mask[list(keep)] = True
    model.set_mask(mask)
    return model


def whole_image_reconstruction(image: np.ndarray, model: CAE) -> tuple[np.ndarray, np.ndarray]:
    """(symbols of the kept channels, pixels) computed directly in one pass over the whole
    image: replicate-pad to a multiple of 8 (at least 16), encoder, round, decoder, crop."""
    h, w = image.shape[:2]
    ph, pw = max(16, -(-h // 8) * 8), max(16, -(-w // 8) * 8)
    padded = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    keep = model.mask[:, 0, 0]
    with torch.no_grad():
        latent = torch.round(model.encoder(x).clamp(-127, 127)) * keep[None, :, None, None]
    pixels = model.synthesis_uint8(latent)[0]
    return latent[0, keep].to(torch.int32).numpy(), pixels[:h, :w]


def tile_reconstruction(image: np.ndarray, model: CAE) -> np.ndarray:
    """The "tiles" layout computed directly: replicate-pad, each tile through encode and
    decode on its own, round, crop."""
    tile = model.config.patch_size
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % tile), (0, -w % tile), (0, 0)), mode="edge")
    rows, cols = padded.shape[0] // tile, padded.shape[1] // tile
    tiles = padded.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3)
    x = torch.from_numpy(tiles.reshape(-1, 3, tile, tile).copy()).float() / 255
    pixels = np.concatenate(
        [model.synthesis_uint8(model.encode(t[None]).float()) for t in x]
    )  # (tiles, tile, tile, 3)
    pixels = pixels.reshape(rows, cols, tile, tile, 3).transpose(0, 2, 1, 3, 4)
    return pixels.reshape(rows * tile, cols * tile, 3)[:h, :w]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> CAE:
    return channel_model()


@pytest.fixture(scope="module")
def slot_model() -> CAE:
    return tiny_model()


def symbols_of(data: bytes) -> np.ndarray:
    """The (kept channels, positions) symbols of a whole-image stream."""
    return bitstream.decode_payload(*parse(data))


def group_count(payload: bytes) -> int:
    """The number of Huffman tables (channel groups) of a coding.encode_channels stream: the
    varint after its version byte, channel count and position count (docs/coding.md)."""
    offset = 1
    for what in ("channels", "positions", "groups"):
        value, offset = get_varint(payload, offset, coding.MAX_SYMBOLS, what)
    return value


# -- whole-image layouts ("predicted", "channels") ------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (1, 45), (45, 1), (7, 3), (1, 4500), (127, 129),
                                  (200, 96)])
def test_round_trip_equals_one_pass_over_the_whole_image(model, size):
    image = test_image(*size)
    data = codec.compress(image, model)
    header, _ = parse(data)
    assert (header.height, header.width, header.mode) == (*size, "RGB")
    assert (header.version, header.layout, header.tile_size, header.kept) == (2, "predicted", 0, 4)
    symbols, pixels = whole_image_reconstruction(image, model)
    np.testing.assert_array_equal(symbols_of(data), symbols.reshape(len(symbols), -1))
    decoded = codec.decompress(data, model)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, pixels)


def test_auto_runs_one_window_up_to_its_pixel_bound_and_windows_beyond():
    halo = 4
    kodak = list(windows.windows(64, 96, "auto", halo))  # 512 x 768 pixels
    assert kodak == [((0, 64, 0, 64), (0, 96, 0, 96))]
    side = int((windows.ONE_WINDOW_PIXELS // 64) ** 0.5) + 1  # just over the bound
    big = list(windows.windows(side, side, "auto", halo))
    assert big == list(windows.windows(side, side, windows.TILE, halo))
    assert len(big) > 1


@pytest.mark.parametrize("size", [(16, 2000), (2000, 16), (40, 1000)])
def test_thin_images_run_in_long_windows_with_the_one_pass_result(model, size):
    """A thin image's windows span its short side and have a square core's area along the
    long side (not tiny square windows, each costing a call, a halo and a batch of two): the
    same symbols and pixels as one pass."""
    rows, cols = (model.padded_side(n) // 8 for n in size)
    spans = list(windows.windows(rows, cols, 64, 1))
    cores = [(r1 - r0) * (c1 - c0) for (r0, r1, _, _), (c0, c1, _, _) in spans]
    assert 64 - min(rows, cols) < max(cores) <= 64  # about a square 8 x 8 core's area
    assert len(spans) == -(-rows * cols // max(cores))
    image = test_image(*size, seed=3)
    data = codec.compress(image, model, tile=64)
    symbols, pixels = whole_image_reconstruction(image, model)
    np.testing.assert_array_equal(symbols_of(data), symbols.reshape(len(symbols), -1))
    np.testing.assert_array_equal(codec.decompress(data, model, tile=64), pixels)


@pytest.mark.parametrize("tile", [32, 64, 200, 512, None])
def test_windows_give_the_one_pass_result(model, tile):
    """512 x 768: windows of any size (32 px cores run as small windows, batch of two) give
    the one-pass symbols and pixels exactly, and the same bytes as the default."""
    image = test_image(512, 768, seed=5)
    data = codec.compress(image, model, tile=tile)
    symbols, pixels = whole_image_reconstruction(image, model)
    np.testing.assert_array_equal(symbols_of(data), symbols.reshape(len(symbols), -1))
    assert data == codec.compress(image, model)
    np.testing.assert_array_equal(codec.decompress(data, model, tile=tile), pixels)


@pytest.mark.parametrize("tile", [32, 64])
def test_quarter_resolution_blocks_give_the_one_pass_result_in_windows(tile):
    """The cheaper network (model.block_scale 4: residual blocks at a quarter of the
    resolution) has its own layer stack; the windows derived from it give its one-pass
    result."""
    import dataclasses

    base = channel_model(seed=4)
    torch.manual_seed(4)
    cheap = CAE(dataclasses.replace(base.config, block_scale=4))
    for module in cheap.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        cheap(torch.rand(16, 3, 32, 32))
    cheap.encoder[-1][-1].weight.data.fill_(4.0)
    cheap.set_mask(base.mask)
    cheap.eval()
    image = test_image(200, 136, seed=6)
    data = codec.compress(image, cheap, tile=tile)
    symbols, pixels = whole_image_reconstruction(image, cheap)
    np.testing.assert_array_equal(symbols_of(data), symbols.reshape(len(symbols), -1))
    np.testing.assert_array_equal(codec.decompress(data, cheap, tile=tile), pixels)


@pytest.mark.parametrize(("size", "seed", "groups"), [((64, 96), 0, 2), ((40, 72), 2, 1)])
def test_channels_payload_has_a_table_per_channel_group(model, size, seed, groups):
    """The "channels" payload is coding.encode_channels of (kept channels, positions): here
    once with two tables (two groups of channels) and once with the single-table fallback."""
    image = test_image(*size, seed=seed)
    symbols, _ = whole_image_reconstruction(image, model)
    data = channels_stream(codec.compress(image, model))
    header, payload = parse(data)
    assert header.layout == "channels"
    assert payload == coding.encode_channels(symbols.reshape(len(symbols), -1))
    assert group_count(payload) == groups
    np.testing.assert_array_equal(codec.decompress(data, model),
                                  codec.decompress(codec.compress(image, model),
                                                         model))


def test_predicted_payload_is_the_latent_as_planes(model):
    """The default payload is coding.encode_planes of the (kept channels, rows, columns)
    latent: the same symbols as the "channels" stream, in fewer bytes on a smooth image."""
    image = test_image(96, 128)
    symbols, _ = whole_image_reconstruction(image, model)
    predicted = codec.compress(image, model)
    channels = channels_stream(predicted)
    assert parse(predicted)[1] == coding.encode_planes(symbols)
    np.testing.assert_array_equal(symbols_of(predicted), symbols_of(channels))
    assert len(predicted) < len(channels)


def test_model_without_kept_channels_codes_an_empty_payload():
    """K = 0: a (0, positions) payload, decoded as the decoder's output for a zero latent."""
    model = channel_model(keep=())
    image = test_image(24, 40)
    data = codec.compress(image, model)
    assert parse(data)[0].kept == 0 and symbols_of(data).shape == (0, 3 * 5)
    np.testing.assert_array_equal(codec.decompress(data, model),
                                  whole_image_reconstruction(image, model)[1])


def test_unpruned_model_codes_every_channel():
    model = tiny_model(seed=1)
    model.set_mask(None)
    image = test_image(40, 56)
    data = codec.compress(image, model)
    header, _ = parse(data)
    assert (header.layout, header.kept, header.n_symbols) == ("predicted", 8, 8 * 5 * 7)
    assert codec.decompress(data, model).shape == image.shape


def test_latent_gain_is_applied_as_in_the_model():
    """A model with a learned latent gain: the codec rounds gain * encoder output and decodes
    symbols / gain, exactly as the model's own eval-mode forward pass does."""
    trained = tiny_model(seed=2)
    trained.set_mask(None)
    model = CAE(replace(trained.config, latent_gain=True)).eval()
    model.load_state_dict(trained.state_dict(), strict=False)  # all but the gain
    with torch.no_grad():
        model.log_gain.fill_(math.log(0.5))
    image = test_image(48, 64, seed=5)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        x_hat, latent = model(x)
    data = codec.compress(image, model)
    assert latent.abs().max() >= 2  # symbols that the gain changes
    np.testing.assert_array_equal(symbols_of(data), latent[0].flatten(1).to(torch.int32).numpy())
    expected = (x_hat * 255).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(codec.decompress(data, model), expected)


def test_same_bytes_and_pixels_with_one_or_two_threads(model):
    """The determinism rule (docs/bitstream.md): on one machine, the stream and the decoded
    pixels do not depend on the thread count. The float32 output layer alone made 1-level
    differences here (AVX-512); the decoder's fixed-order output layer removes them."""
    image = test_image(300, 420, seed=7)
    first = codec.compress(image, model)
    decoded = codec.decompress(first, model)
    torch.set_num_threads(2)
    try:
        assert codec.compress(image, model) == first
        np.testing.assert_array_equal(codec.decompress(first, model), decoded)
    finally:
        torch.set_num_threads(1)


def test_entropy_decoding_uses_no_floating_point(model):
    """The symbols a stream decodes to are integers from integer code (Huffman, run-length,
    integer prediction): the same on any thread count and under PyTorch's deterministic
    algorithms, which also leave the pixels unchanged."""
    data = codec.compress(test_image(200, 264, seed=3), model)
    header, payload = parse(data)
    symbols = bitstream.decode_payload(header, payload)
    pixels = codec.decompress(data, model)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    try:
        np.testing.assert_array_equal(bitstream.decode_payload(header, payload), symbols)
        np.testing.assert_array_equal(codec.decompress(data, model), pixels)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(1)


def test_fixed_order_output_layer_matches_the_float32_decoder(model):
    """synthesis_uint8 is the decoder's output up to float rounding: at most one level off,
    in a tiny share of the values."""
    latent = torch.randint(-3, 4, (1, 8, 40, 52)).float() * model.mask[:, :1, :1]
    fixed = model.synthesis_uint8(latent)
    with torch.no_grad(), eval_mode(model):
        plain = (model.synthesis(latent) * 255).round().to(torch.uint8)[0].permute(1, 2, 0)
    difference = np.abs(fixed[0].astype(int) - plain.numpy().astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_output_layer_kernel_gives_the_bits_of_the_torch_sum():
    """caeadmm.output_layer.output_layer_sum (the CPU decoder's last layer) is the float64 torch
    expression it replaced, bit for bit: bias, then features times weight added channel by
    channel in order, each product and sum rounded (no fused multiply-add); also for a
    weight that is a strided view."""
    from caeadmm.output_layer import output_layer_sum

    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 32, 9, 37, generator=generator) * 5
    weight = torch.randn(3, 32, 1, 1, generator=generator, dtype=torch.float64)[:, :, 0, 0]
    bias = torch.randn(3, generator=generator, dtype=torch.float64)
    expected = bias.view(1, -1, 1, 1).expand(2, -1, 9, 37).clone()
    wide = features.double()
    for c in range(32):
        expected += wide[:, c : c + 1] * weight[:, c].view(1, -1, 1, 1)
    got = output_layer_sum(features.numpy(), weight.numpy(), bias.numpy())
    assert got.dtype == np.float64 and got.shape == (2, 3, 9, 37)
    np.testing.assert_array_equal(got.view(np.int64), expected.numpy().view(np.int64))


def test_small_windows_compute_what_large_ones_do(model, monkeypatch):
    """The batch-of-two rule: a small window's encoder output equals the same positions of a
    large pass bit for bit; the plain batch of one (a different convolution path in PyTorch)
    does not, which is why the rule exists."""
    image = torch.from_numpy(test_image(256, 256, seed=9)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        large = model.encoder(image)[0, :, 8:12, 8:12]
        crop = image[..., 32:160, 32:160]  # 128 x 128 < SMALL_WINDOW; its core: 8..12
        small = windows.run(model.encoder, crop, 128 * 128)[0, :, 4:8, 4:8]
        plain = model.encoder(crop)[0, :, 4:8, 4:8]
    assert torch.equal(small, large)
    assert not torch.equal(plain, large)


def test_grayscale_is_coded_as_rgb_and_returned_as_grayscale(model):
    gray = test_image(50, 70)[..., 1]
    data = codec.compress(gray, model)
    assert parse(data)[0].mode == "L"
    decoded = codec.decompress(data, model)
    assert decoded.shape == (50, 70) and decoded.dtype == np.uint8
    _, rgb = whole_image_reconstruction(np.repeat(gray[..., None], 3, axis=2), model)
    expected = np.round(rgb.astype(np.float64).mean(axis=2) + 1e-9).astype(np.uint8)
    np.testing.assert_array_equal(decoded, expected)
    assert codec.compress(gray[..., None], model) == data  # (H, W, 1) is grayscale too


def test_rgba_file_loses_alpha_with_a_warning(model, tmp_path):
    rgba = np.dstack([test_image(7, 3), np.full((7, 3), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        image = codec.load_image(tmp_path / "a.png")
    assert image.shape == (7, 3, 3)
    assert codec.decompress(codec.compress(image, model), model).shape == (7, 3, 3)


# -- receptive fields ------------------------------------------------------------------------


def test_encoder_reach_is_the_exact_extent_of_a_one_pixel_change():
    """Change one pixel: exactly the latent positions j with |8 j - x| <= reach change
    (in float64, so that no change is lost to rounding)."""
    model = channel_model().double()
    reach = model.encoder_reach()
    assert reach == 1 + 2 + 2 + 2 + 2 * 2 + 2 * 4 + 8  # tiny: convs of the encoder, by hand
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 192, 192, dtype=torch.float64, generator=generator)
    y, x = 93, 101
    changed = image.clone()
    changed[0, :, y, x] += 0.5
    with torch.no_grad():
        diff = (model.encoder(changed) - model.encoder(image)).abs().amax(dim=(0, 1)) > 0
    rows, cols = (torch.nonzero(diff.any(dim=d)).flatten().tolist() for d in (1, 0))
    assert rows == [j for j in range(24) if abs(8 * j - y) <= reach]
    assert cols == [j for j in range(24) if abs(8 * j - x) <= reach]


def test_decoder_reach_covers_a_one_symbol_change_and_is_tight():
    model = channel_model().double()
    reach = model.decoder_reach()
    assert reach == 1
    latent = torch.randint(-5, 6, (1, 8, 16, 16)).double()
    changed = latent.clone()
    j = 7
    changed[0, :, j, j] += 3
    with torch.no_grad():
        diff = (model.decoder(changed) - model.decoder(latent)).abs().amax(dim=(0, 1)) > 0
    cols = torch.nonzero(diff.any(dim=0)).flatten()
    first, last = cols.min().item(), cols.max().item()
    assert 8 * (j - reach) <= first and last < 8 * (j + 1 + reach)  # covered
    assert first < 8 * j or last >= 8 * (j + 1)  # and needed: a reach of 0 would not do


def test_reach_of_the_shipped_preset():
    from caeadmm.config import ModelConfig

    small = CAE(ModelConfig.from_preset("small"))
    assert small.encoder_reach() == 31
    assert small.decoder_reach() == 1


# -- "tiles" layout: masks that are not channel-structured -----------------------------------


@pytest.mark.parametrize("size", [(1, 1), (45, 1), (127, 129)])
def test_slot_masked_model_codes_tiles(slot_model, size):
    image = test_image(*size)
    data = codec.compress(image, slot_model)
    header, _ = parse(data)
    assert slot_model.kept_channels() is None
    assert (header.version, header.layout, header.tile_size) == (2, "tiles", 32)
    assert header.kept == int(slot_model.mask.sum())
    np.testing.assert_array_equal(codec.decompress(data, slot_model),
                                  tile_reconstruction(image, slot_model))


def test_tiles_grayscale(slot_model):
    gray = test_image(40, 33)[..., 0]
    decoded = codec.decompress(codec.compress(gray, slot_model), slot_model)
    rgb = tile_reconstruction(np.repeat(gray[..., None], 3, axis=2), slot_model)
    np.testing.assert_array_equal(decoded, (rgb.astype(np.uint16).sum(axis=2) + 1) // 3)


def test_a_tiles_stream_of_a_channel_mask_decodes_tile_by_tile(model):
    """Version 2 wrote version 1's layout for any model on demand (for comparisons): such a
    stream still decodes, tile by tile."""
    image = test_image(70, 40)
    data = legacy.tiles_stream(image, model)
    assert parse(data)[0].layout == "tiles"
    np.testing.assert_array_equal(codec.decompress(data, model),
                                  tile_reconstruction(image, model))


def test_whole_images_need_a_channel_mask_and_legacy_layouts_are_read_only(slot_model):
    with pytest.raises(ValueError, match="same at every latent position"):
        slot_model.compress(test_image(20, 20))
    with pytest.raises(ValueError, match="not written"):
        bitstream.encode_payload(np.zeros((2, 3, 3), np.int8), "channels")


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8),
            np.zeros((0, 4, 3), np.uint8), np.zeros(5, np.uint8)],
)
def test_refuses_bad_arrays(model, bad):
    with pytest.raises(ValueError):
        codec.compress(bad, model)


def test_wrong_model_is_refused_with_both_fingerprints(model):
    other = channel_model(seed=5)
    data = codec.compress(test_image(20, 20), model)
    with pytest.raises(ModelMismatchError) as info:
        codec.decompress(data, other)
    assert model.fingerprint()[:16].hex() in str(info.value)
    assert other.fingerprint()[:16].hex() in str(info.value)


def test_pixel_limit_applies_before_decoding(model):
    data = codec.compress(test_image(64, 64), model)
    with pytest.raises(BitstreamError, match="exceeds the limit"):
        codec.decompress(data, model, max_pixels=64 * 63)


def test_header_that_disagrees_with_the_model_is_refused(model, slot_model):
    data = bytearray(codec.compress(test_image(40, 40), model))
    struct.pack_into("<I", data, 20, 3)  # kept channels
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="3 kept"):
        codec.decompress(bytes(data), model)
    data = bytearray(codec.compress(test_image(40, 40), slot_model))
    struct.pack_into("<I", data, 20, int(slot_model.mask.sum()) - 1)
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="kept slots"):
        codec.decompress(bytes(data), slot_model)


def test_layout_the_model_cannot_decode_is_refused(slot_model):
    data = bytearray(codec.compress(test_image(40, 40), slot_model))
    struct.pack_into("<HHB", data, 6, 0, 8, 1)  # tile 0, 8 channels, layout "channels"
    struct.pack_into("<I", data, 20, 4)
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="not the same at every latent position"):
        codec.decompress(bytes(data), slot_model)


@pytest.mark.parametrize(("layout", "held", "two"), [
    ("predicted", "4 x 5 x 5 symbols, the header implies 4 x 6 x 5", "2 x 10 x 5 symbols"),
    ("channels", "4 channels x 25 positions, the header implies 4 x 30", "2 channels x 50"),
])
def test_wrong_symbol_count_is_refused(model, layout, held, two):
    """More symbols than the header implies are refused by coding's bound (before decoding);
    fewer, or another shape, by the decoded shape against (kept channels, positions)."""
    data = codec.compress(test_image(40, 40), model)  # 4x5x5
    data = bytearray(data if layout == "predicted" else channels_stream(data))
    struct.pack_into("<I", data, 16, 20)  # height 40 -> 20: the header implies 4 x (3 x 5)
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="corrupt payload: .* over the limit 60"):
        codec.decompress(bytes(data), model)
    struct.pack_into("<I", data, 16, 48)  # height 48: the header implies 4 x (6 x 5)
    _fix_crc(data)
    with pytest.raises(BitstreamError, match=held):
        codec.decompress(bytes(data), model)
    symbols = symbols_of(codec.compress(test_image(40, 40), model))
    if layout == "predicted":
        payload = coding.encode_planes(symbols.reshape(2, 10, 5))  # 100 symbols: in the bound
    else:
        payload = coding.encode_channels(symbols.reshape(2, -1))
    header = replace(parse(bytes(data))[0], height=40, payload_length=len(payload))
    with pytest.raises(BitstreamError, match=two):
        codec.decompress(pack(header, payload), model)


def test_wrong_symbol_count_in_tiles_is_refused(slot_model):
    data = bytearray(codec.compress(test_image(40, 40), slot_model))  # 2 x 2 tiles
    struct.pack_into("<I", data, 16, 20)  # height 40 -> 20: the header implies 1 x 2
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="symbols, the header implies"):
        codec.decompress(bytes(data), slot_model)


# -- memory --------------------------------------------------------------------------------

# The decoder with the network replaced by a stand-in of the same shapes, for a model of the
# shipped models' shapes (32 latent channels, 128 px tiles) keeping as many channels as the
# most any of them keeps (20): the largest buffers a registered model's stream can make.
# Prints the stream's size, the peak RSS in MB before decoding (after crafting the stream,
# its memory given back and the peak reset) and after.
MEMORY_SCRIPT = """
import ctypes, gc, os, re, struct, sys, tempfile, zlib, numpy as np, torch
import coding
from caeadmm import bitstream, codec, windows
from caeadmm.config import ModelConfig
from caeadmm.model import CAE, padded_side

height, width, mode, layout, via = {height}, {width}, {mode!r}, {layout!r}, {via!r}
shape = (height, width)
if via == "refused":  # a stream of a small image, its size then set over the limit
    height, width = 16, 16
model = CAE(ModelConfig(preset="tiny", width=16, n_blocks=1, latent_channels=32, patch_size=128))
mask = torch.zeros(model.config.latent_shape(), dtype=torch.bool)
mask[:20] = True
model.set_mask(mask)
stand_in = lambda x: np.zeros((x.shape[0], 8 * x.shape[-2], 8 * x.shape[-1], 3), np.uint8)
windows.run = lambda network, x, pixels: stand_in(x)
model.synthesis_uint8 = lambda latent, quality=None: stand_in(latent)
if layout == "tiles":
    payload = coding.encode(np.zeros(-(-height // 128) * -(-width // 128) * 20 * 256, np.int8))
    kept, tile = 20 * 256, 128
else:
    rows, cols = padded_side(height) // 8, padded_side(width) // 8
    payload = coding.encode_channels(np.zeros((20, rows * cols), np.int8))
    if layout == "predicted":  # the same zeros as planes, no prediction (docs/coding.md)
        head = bytearray([3])
        for n in (20, rows, cols):
            coding.format.put_varint(head, n)
        payload = bytes(head) + bytes([0, 0]) + payload
    kept, tile = 20, 0
header = bitstream.CaeHeader(
    width=width, height=height, mode=mode, layout=layout, latent_channels=32, kept=kept,
    fingerprint=model.fingerprint()[:16], payload_length=len(payload), tile_size=tile)
data = bitstream.pack(header, payload)
del payload
if via == "refused":
    data = bytearray(data)
    struct.pack_into("<II", data, 12, shape[1], shape[0])
    struct.pack_into("<I", data, 48, zlib.crc32(data[52:], zlib.crc32(data[:48])))
    data = bytes(data)
gc.collect()
ctypes.CDLL(None).malloc_trim(0)  # what crafting the stream took goes back to the system
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # and the peak starts afresh from here
peak_mb = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) // 1024
before = peak_mb()
if via == "refused":
    try:
        codec.decompress(data, model)
        raise SystemExit("decoded a stream over the limits")
    except bitstream.BitstreamError as exc:
        print(exc, file=sys.stderr)
elif via == "cli":  # `caeadmm decompress` to a PNG file
    from caeadmm.cli import common, main
    common.cached_model = lambda spec: model
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "x.cae"), "wb") as fh:
            fh.write(data)
        out = os.path.join(tmp, "x.png")
        assert main(["decompress", fh.name, "-o", out, "--model", "m", "--quiet"]) == 0
        with open(out, "rb") as png:  # the PNG's IHDR: width and height
            assert png.read(24)[16:] == struct.pack(">II", width, height)
else:
    decoded = codec.decompress(data, model)
    assert decoded.shape == (height, width) + (() if mode == "L" else (3,))
print(len(data), before, peak_mb())
"""
# Compiles (and caches) the coder's kernels, so that the measured processes do not count the
# memory of compiling them (a fresh checkout has no numba cache yet).
WARM_UP = (
    "import numpy as np, coding; "
    "coding.decode(coding.encode(np.zeros(99, np.int8))); "
    "coding.decode_channels(coding.encode_channels(np.zeros((4, 99), np.int8))); "
    "coding.decode_planes(coding.encode_planes(np.arange(24).reshape(2, 3, 4)))"
)
LIMIT = 9459 * 9460  # $CAEADMM_MAX_PIXELS for the first case: just over the default limit


def _memory_run(height: int, width: int, mode: str, layout: str, via: str,
                env: dict | None = None) -> tuple[int, int, int, str]:
    if via != "refused":  # nothing is decoded then
        subprocess.run([sys.executable, "-c", WARM_UP], cwd=ROOT, timeout=600, check=True)
    script = MEMORY_SCRIPT.format(height=height, width=width, mode=mode, layout=layout, via=via)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=900, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-2000:]
    size, before, peak = map(int, result.stdout.split()[-3:])  # after the CLI's own line
    return size, before, peak, result.stderr


@pytest.mark.slow  # the largest streams the format allows: 10-20 s each on 2 busy cores
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
@pytest.mark.parametrize(("height", "width", "mode", "layout", "via"), [
    # over the default pixel limit by one row, allowed by $CAEADMM_MAX_PIXELS, to a PNG file
    (9460, 9459, "RGB", "predicted", "cli"),
    # at the pixel limit and the padding limit: the thinnest shapes, 1 x N's and N x 1's kin
    (11, 8_134_407, "RGB", "predicted", "api"),
    (8_134_407, 11, "L", "channels", "api"),
    (86, 1_040_384, "RGB", "tiles", "api"),  # one row of tiles
])
def test_maximal_stream_decodes_in_bounded_memory(height, width, mode, layout, via):
    """Crafted streams of a few KB at each limit, decoded in processes of their own with the
    network replaced by a stand-in (the real network's windows add about 90 MB: docs/
    bitstream.md): the peak stays under 1 GB, and what decoding adds is the output image,
    the symbols (int32 while the payload decodes, then int8) and a window."""
    env = {"CAEADMM_MAX_PIXELS": str(LIMIT)} if via == "cli" else {}
    size, before, peak, _ = _memory_run(height, width, mode, layout, via, env)
    assert size < 6000  # a few KB...
    image = height * width * (1 if mode == "L" else 3) / 2**20  # MB
    if layout == "tiles":
        symbols = -(-height // 128) * -(-width // 128) * 20 * 256 / 2**20
    else:
        symbols = 20 * (padded_side(height) * padded_side(width) // 64) / 2**20
    assert peak - before < max(5 * symbols, symbols + image) + 100, (before, peak)  # ...bounded
    assert peak < 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
@pytest.mark.parametrize(("height", "width", "layout", "why"), [
    (9460, 9459, "predicted", "exceeds the limit of 89478485"),  # pixels
    (10, 8_947_848, "predicted", "too thin for the predicted layout"),  # 1 x N's kin
    (8_947_848, 10, "channels", "too thin for the channels layout"),  # N x 1's kin
    (85, 1_052_688, "tiles", "too thin for the tiles layout"),
])
def test_streams_over_a_limit_are_refused_before_any_allocation(height, width, layout, why):
    """Just over each limit (the streams of test_maximal_stream_decodes_in_bounded_memory's
    kind, with a size one step further): refused from the header alone, in a process of its
    own, in the memory the process already had."""
    _, before, peak, message = _memory_run(height, width, "RGB", layout, "refused")
    assert why in message
    assert peak - before < 20


CPU_SCRIPT = """
import json, sys, time
import numpy as np, torch
from PIL import Image
import coding
from caeadmm import bitstream, codec, legacy, zoo
from caeadmm.model import padded_side

torch.set_num_threads(1)
model = zoo.load()  # the registry's default model
quality = zoo.default_quality(None, model)  # None: a fixed-rate model
top = None if quality is None else model.config.quality_levels - 1  # the most channels
kept = len(model.stream_channels(top))
channels, tile = model.config.latent_channels, model.config.patch_size
rng = np.random.default_rng(0)


def crafted(height, width, layout="predicted", values=0):
    # A stream of an image of height x width whose symbols are zeros, or uniform in +-values.
    if layout == "tiles":
        slots = int(legacy.kept_slots(model).sum())
        n = -(-height // tile) * -(-width // tile) * slots
        symbols = rng.integers(-values, values + 1, n) if values else np.zeros(n, np.int8)
        payload, k, t = coding.encode(symbols), slots, tile
    else:
        shape = (kept, padded_side(height) // 8, padded_side(width) // 8)
        symbols = rng.integers(-values, values + 1, shape) if values else np.zeros(shape, np.int8)
        payload, k, t = coding.encode_planes(symbols), kept, 0
    header = bitstream.CaeHeader(width=width, height=height, mode="RGB", layout=layout,
                              latent_channels=channels, kept=k, tile_size=t,
                              fingerprint=model.fingerprint()[:16], payload_length=len(payload),
                              quality=None if layout == "tiles" else top)
    return bitstream.pack(header, payload)


photo = Image.open({photo!r}).convert("RGB").resize((1224, 816), Image.LANCZOS)
streams = {{
    "photo": codec.compress(np.asarray(photo), model, quality=quality),
    "zeros": crafted(816, 1224),
    "every symbol in +-127": crafted(816, 1224, values=127),
    "11 x 90909 (1 x N's kin)": crafted(11, 90909),
    "90909 x 11 (N x 1's kin)": crafted(90909, 11),
    "17 x 58824": crafted(17, 58824),
    "tiles, 86 x 11628": crafted(86, 11628, "tiles"),
    "tiles, every slot in +-127": crafted(816, 1224, "tiles", values=127),
}}
if quality is not None:  # a variable-rate model reads no "tiles" stream: refused at the header
    for name in [n for n in streams if n.startswith("tiles")]:
        try:
            codec.decompress(streams.pop(name), model)
        except bitstream.BitstreamError:
            continue
        sys.exit(name + ": decoded by a variable-rate model")
for data in streams.values():
    codec.decompress(data, model)  # warm
best = dict.fromkeys(streams, float("inf"))
for _ in range(2):
    for name, data in streams.items():
        start = time.process_time()
        codec.decompress(data, model)
        best[name] = min(best[name], time.process_time() - start)
sizes = {{name: bitstream.read_header(data) for name, data in streams.items()}}
print(json.dumps({{name: best[name] / (h.width * h.height) * 1e6 for name, h in sizes.items()}}))
"""


@pytest.mark.slow
def test_no_crafted_stream_costs_more_cpu_per_pixel_than_a_photo():
    """CPU seconds per megapixel of decoding with the default model (one thread, best of two,
    in a process of its own): the worst streams found, about 1 MP each, against a photo's
    stream of the same size (astronaut.png at 1224 x 816): every symbol at +-127 (the
    longest codes), the thinnest shapes the padding limit allows (the network then computes
    1.45 times the pixels; a shape beyond is refused: test_bitstream.py), and the tiles
    layout, thin and dense (a variable-rate model, which writes none, refuses it outright).
    Each within 1.5 times the photo's (measured: 0.83-1.09)."""
    script = CPU_SCRIPT.format(photo=str(ROOT / "caeadmm" / "samples" / "astronaut.png"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    per_mp = json.loads(result.stdout.splitlines()[-1])
    photo = per_mp.pop("photo")
    for name, cpu in per_mp.items():
        assert cpu < 1.5 * photo, (name, cpu, photo)


# -- fuzzing the whole decoder --------------------------------------------------------------


def _fix_crc(data: bytearray) -> None:
    crc = zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[: HEADER_BYTES - 4]))
    struct.pack_into("<I", data, HEADER_BYTES - 4, crc)


def _decode_or_refuse(data: bytes, model: CAE) -> None:
    """The decoder's contract: a correct image or BitstreamError, nothing else."""
    try:
        image = codec.decompress(data, model)
    except BitstreamError:
        return
    header, _ = parse(data)
    assert image.shape[:2] == (header.height, header.width)


edits = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(b""), st.booleans()),
    st.tuples(st.just("flip"), st.integers(0, 80_000), st.just(b""), st.booleans()),
    st.tuples(st.just("header"), st.integers(0, HEADER_BYTES - 5),
              st.binary(min_size=1, max_size=8), st.booleans()),
    st.tuples(st.just("payload"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8),
              st.booleans()),
)


def _mutate(valid: bytes, steps) -> bytes:
    data = bytearray(valid)
    for kind, position, patch, fix_crc in steps:
        if kind == "truncate":
            del data[position % (len(data) + 1):]
        elif kind == "flip" and data:
            data[(position // 8) % len(data)] ^= 1 << (position % 8)
        elif kind == "header":
            data[position : position + len(patch)] = patch
        elif kind == "payload" and len(data) > HEADER_BYTES:
            at = HEADER_BYTES + position % (len(data) - HEADER_BYTES)
            data[at : at + len(patch)] = patch
        if fix_crc and len(data) >= HEADER_BYTES:
            _fix_crc(data)
    return bytes(data)


def _fuzz(model: CAE, valid: bytes, examples: int) -> None:
    @settings(max_examples=examples, deadline=2000, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(edits, min_size=1, max_size=3))
    def run(steps) -> None:
        _decode_or_refuse(_mutate(valid, steps), model)

    rss_now = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 1024
    peak_before = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_now)
    run()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < peak_before + 256 * 1024


def test_fuzz_v2_whole_image_streams_give_only_bitstream_errors(model):
    """2,000 streams made by truncations, bit flips, header and payload edits, each with or
    without a recomputed CRC (so that the checks behind the checksum are reached too): each
    decodes or raises BitstreamError, within 2 s (hypothesis deadline), and the process's
    peak memory grows by less than 256 MB over all of them. The payload has two channel
    groups (labels, a group length and two tables to corrupt)."""
    valid = channels_stream(codec.compress(test_image(64, 96, seed=0), model))
    assert group_count(parse(valid)[1]) == 2
    _fuzz(model, valid, 2000)


def test_fuzz_predicted_streams_give_only_bitstream_errors(model):
    """The same for the default layout: a prediction with weights (smooth image)."""
    valid = codec.compress(test_image(64, 96, seed=0), model)
    assert planes.predictor_of(parse(valid)[1]).spatial
    _fuzz(model, valid, 1000)


def test_fuzz_v2_single_table_streams_give_only_bitstream_errors(model):
    """The same for a payload where one table for all channels was smaller (one group)."""
    valid = channels_stream(codec.compress(test_image(40, 72, seed=2), model))
    assert group_count(parse(valid)[1]) == 1
    _fuzz(model, valid, 500)


def test_fuzz_tile_streams_give_only_bitstream_errors(slot_model):
    _fuzz(slot_model, codec.compress(test_image(40, 72, seed=2), slot_model), 500)


# -- files ----------------------------------------------------------------------------------


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.cae"
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # not bytes: fails in the middle of the write
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, b"abc")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new")
    write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.cae"]


def test_save_image_picks_the_format_from_the_extension(tmp_path):
    image = test_image(9, 11)
    codec.save_image(tmp_path / "x.tif", image)
    assert Image.open(tmp_path / "x.tif").format == "TIFF"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.tif")), image)
    with pytest.raises(ValueError, match="unknown image file extension"):
        codec.save_image(tmp_path / "x.nope", image)


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 3), (37, 1000, 3), (700, 9)])
def test_large_png_outputs_are_written_row_block_by_row_block(tmp_path, monkeypatch, shape):
    """Beyond png.LARGE_PIXELS (here 0) save_image writes PNGs itself, in blocks of rows
    (here of 1,000 bytes): files Pillow reads back to the same pixels."""
    from caeadmm import png

    monkeypatch.setattr(png, "LARGE_PIXELS", 0)
    monkeypatch.setattr(png, "BLOCK_BYTES", 1000)
    image = test_image(*shape[:2], seed=4)
    image = image if len(shape) == 3 else image[..., 1]
    codec.save_image(tmp_path / "x.png", image)
    with Image.open(tmp_path / "x.png") as back:
        assert back.format == "PNG" and back.mode == ("RGB" if len(shape) == 3 else "L")
        np.testing.assert_array_equal(np.asarray(back), image)


def test_load_image_keeps_grayscale_files_grayscale(tmp_path):
    Image.fromarray(test_image(9, 11)[..., 0]).save(tmp_path / "g.png")
    Image.fromarray(test_image(9, 11)[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(test_image(9, 11)).save(tmp_path / "c.png")
    assert codec.load_image(tmp_path / "g.png").shape == (9, 11)
    assert codec.load_image(tmp_path / "g16.png").shape == (9, 11)
    assert codec.load_image(tmp_path / "c.png").shape == (9, 11, 3)


# -- the shipped reference stream -------------------------------------------------------------

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def shipped() -> tuple[str, CAE]:
    """(name, model) of the registry's default model."""
    default = next((m for m in zoo.list_models() if m.default), None)
    if default is None:
        pytest.skip("no default model is registered")
    return default.name, zoo.load(default.name)


def test_reference_image_encodes_to_the_same_stream(shipped):
    """Same header (in the reference's layout), and the same symbols up to a few
    float-rounding flips on another CPU, in that layout and in the default one."""
    name, model = shipped
    reference = (DATA / f"{name}.cae").read_bytes()
    theirs_header, _ = parse(reference)
    image = codec.load_image(DATA / "reference.png")
    quality = zoo.default_quality(name, model)
    data = codec.compress(image, model, quality=quality)
    if theirs_header.layout == "channels":  # a stream of the layout before "predicted"
        data = channels_stream(data)
    ours_header, _ = parse(data)
    assert replace(ours_header, payload_length=0) == replace(theirs_header, payload_length=0)
    theirs = symbols_of(reference)
    for ours in symbols_of(data), symbols_of(codec.compress(image, model, quality=quality)):
        assert ours.shape == theirs.shape and (ours == theirs).mean() > 0.999
