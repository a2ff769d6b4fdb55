"""Whole-image codec: round trips at awkward sizes, exactness against the model's own
reconstruction, determinism, grayscale, wrong models and fuzzing of the whole decoder."""

from __future__ import annotations

import resource
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import test_image, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import coding
from caeadmm import image_codec
from caeadmm.bitstream import HEADER_BYTES, BitstreamError, ModelMismatchError, parse
from caeadmm.files import write_atomic
from caeadmm.model import CAE


def reconstruction(image: np.ndarray, model: CAE) -> np.ndarray:
    """What the model itself gives for `image`, computed directly: replicate-pad, each tile
    through encode and decode on its own, round, crop."""
    tile = model.config.patch_size
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % tile), (0, -w % tile), (0, 0)), mode="edge")
    rows, cols = padded.shape[0] // tile, padded.shape[1] // tile
    tiles = padded.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3)
    x = torch.from_numpy(tiles.reshape(-1, 3, tile, tile).copy()).float() / 255
    y = torch.cat([model.decode(model.encode(t[None])) for t in x])
    pixels = (y * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    pixels = pixels.reshape(rows, cols, 3, tile, tile).transpose(0, 3, 1, 4, 2)
    return pixels.reshape(rows * tile, cols * tile, 3)[:h, :w]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from a second thread, and OpenMP's waiting threads make
    it many times slower on a busy 2-core machine. (Thread-count independence is tested.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> CAE:
    return tiny_model()


@pytest.mark.parametrize("size", [(1, 1), (1, 45), (45, 1), (127, 129), (768, 512)])
def test_round_trip_equals_the_models_reconstruction(model, size):
    image = test_image(*size)
    data = image_codec.compress(image, model)
    header, _ = parse(data)
    assert (header.height, header.width, header.mode) == (*size, "RGB")
    decoded = image_codec.decompress(data, model)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, reconstruction(image, model))


def test_large_image_round_trip():
    model = tiny_model(patch_size=128)  # 12 x 16 tiles
    image = test_image(1500, 2000, seed=3)
    decoded = image_codec.decompress(image_codec.compress(image, model), model)
    np.testing.assert_array_equal(decoded, reconstruction(image, model))


def test_only_kept_slots_are_transmitted(model):
    image = test_image(64, 96)  # 2 x 3 tiles
    header, _ = parse(image_codec.compress(image, model))
    assert header.kept_per_tile == int(model.mask.sum()) < model.mask.numel()
    assert header.n_symbols == 6 * header.kept_per_tile


def test_unpruned_model_transmits_every_slot():
    model = tiny_model(seed=1)
    model.set_mask(None)
    image = test_image(40, 40)
    header, _ = parse(image_codec.compress(image, model))
    assert header.kept_per_tile == 8 * 4 * 4
    np.testing.assert_array_equal(image_codec.decompress(image_codec.compress(image, model), model),
                                  reconstruction(image, model))


def test_same_input_gives_identical_bytes(model):
    image = test_image(100, 150, seed=7)
    first = image_codec.compress(image, model)
    assert image_codec.compress(image, model) == first
    torch.set_num_threads(2)
    try:
        assert image_codec.compress(image, model) == first
    finally:
        torch.set_num_threads(1)
    batched = image_codec.compress(image, model, batch_tiles=4)  # 5 x 5 tiles: 6 batches of 4 and 1
    assert image_codec.compress(image, model, batch_tiles=4) == batched


def test_tiles_are_coded_independently(model):
    """A tile's symbols depend on that tile alone: the left half of an image, cut on a tile
    boundary, decodes to the left half of the whole image's decoding."""
    image = test_image(64, 128, seed=4)  # 2 x 4 tiles of 32
    whole = image_codec.decompress(image_codec.compress(image, model), model)
    left = image_codec.decompress(image_codec.compress(image[:, :64].copy(), model), model)
    np.testing.assert_array_equal(left, whole[:, :64])


def test_batched_decoding_differs_by_float_noise_at_most(model):
    data = image_codec.compress(test_image(100, 150), model)
    one_by_one = image_codec.decompress(data, model).astype(int)
    batched = image_codec.decompress(data, model, batch_tiles=8).astype(int)
    assert np.abs(batched - one_by_one).max() <= 1


def test_grayscale_is_coded_as_rgb_and_returned_as_grayscale(model):
    gray = test_image(50, 70)[..., 1]
    data = image_codec.compress(gray, model)
    assert parse(data)[0].mode == "L"
    decoded = image_codec.decompress(data, model)
    assert decoded.shape == (50, 70) and decoded.dtype == np.uint8
    rgb = reconstruction(np.repeat(gray[..., None], 3, axis=2), model).astype(np.float64)
    np.testing.assert_array_equal(decoded, np.round(rgb.mean(axis=2) + 1e-9).astype(np.uint8))
    assert image_codec.compress(gray[..., None], model) == data  # (H, W, 1) is grayscale too


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8),
            np.zeros((0, 4, 3), np.uint8), np.zeros(5, np.uint8)],
)
def test_refuses_bad_arrays(model, bad):
    with pytest.raises(ValueError):
        image_codec.compress(bad, model)


def test_wrong_model_is_refused_with_both_fingerprints(model):
    other = tiny_model(seed=5)
    data = image_codec.compress(test_image(20, 20), model)
    with pytest.raises(ModelMismatchError) as info:
        image_codec.decompress(data, other)
    assert model.fingerprint()[:16].hex() in str(info.value)
    assert other.fingerprint()[:16].hex() in str(info.value)


def test_pixel_limit_applies_before_decoding(model):
    data = image_codec.compress(test_image(64, 64), model)
    with pytest.raises(BitstreamError, match="exceeds the limit"):
        image_codec.decompress(data, model, max_pixels=64 * 63)


def test_header_that_disagrees_with_the_model_is_refused(model):
    data = bytearray(image_codec.compress(test_image(40, 40), model))
    struct.pack_into("<I", data, 20, int(model.mask.sum()) - 1)  # kept slots per tile
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="kept slots"):
        image_codec.decompress(bytes(data), model)


def test_wrong_symbol_count_is_refused(model):
    data = bytearray(image_codec.compress(test_image(40, 40), model))  # 2 x 2 tiles
    struct.pack_into("<I", data, 16, 20)  # height 40 -> 20: the header implies 1 x 2 tiles
    _fix_crc(data)
    with pytest.raises(BitstreamError, match="symbols"):
        image_codec.decompress(bytes(data), model)


# -- fuzzing the whole decoder --------------------------------------------------------------


def _fix_crc(data: bytearray) -> None:
    crc = zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[: HEADER_BYTES - 4]))
    struct.pack_into("<I", data, HEADER_BYTES - 4, crc)


@pytest.fixture(scope="module")
def valid_stream(model) -> bytes:
    return image_codec.compress(test_image(40, 72, seed=2), model)


def _decode_or_refuse(data: bytes, model: CAE) -> None:
    """The decoder's contract: a correct image or BitstreamError, nothing else."""
    try:
        image = image_codec.decompress(data, model)
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


@settings(max_examples=2000, deadline=2000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(edits, min_size=1, max_size=3))
def _fuzz(model: CAE, valid_stream: bytes, steps) -> None:
    data = bytearray(valid_stream)
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
    _decode_or_refuse(bytes(data), model)


def test_fuzz_decoder_gives_only_bitstream_errors(model, valid_stream):
    """2,000 streams made by truncations, bit flips, header and payload edits, each with or
    without a recomputed CRC (so that the checks behind the checksum are reached too): each
    decodes or raises BitstreamError, within 2 s (hypothesis deadline), and the process's
    peak memory grows by less than 256 MB over all of them."""
    rss_now = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 1024
    peak_before = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_now)
    _fuzz(model, valid_stream)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < peak_before + 256 * 1024


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
    image_codec.save_image(tmp_path / "x.tif", image)
    assert Image.open(tmp_path / "x.tif").format == "TIFF"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.tif")), image)
    with pytest.raises(ValueError, match="unknown image file extension"):
        image_codec.save_image(tmp_path / "x.nope", image)


def test_load_image_keeps_grayscale_files_grayscale(tmp_path):
    Image.fromarray(test_image(9, 11)[..., 0]).save(tmp_path / "g.png")
    Image.fromarray(test_image(9, 11)[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(test_image(9, 11)).save(tmp_path / "c.png")
    assert image_codec.load_image(tmp_path / "g.png").shape == (9, 11)
    assert image_codec.load_image(tmp_path / "g16.png").shape == (9, 11)
    assert image_codec.load_image(tmp_path / "c.png").shape == (9, 11, 3)


# -- the shipped reference stream -------------------------------------------------------------

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def shipped() -> tuple[str, CAE]:
    """(name, model) of the registry's default model."""
    from caeadmm import zoo

    default = next((m for m in zoo.list_models() if m.default), None)
    if default is None:
        pytest.skip("no default model is registered")
    return default.name, zoo.load(default.name)


def test_reference_stream_still_decodes(shipped):
    """tests/data holds a stream written by scripts/ship_model.py, with its decoding: this
    code must read it. Float rounding on another CPU may move a pixel by one level."""
    name, model = shipped
    data = (DATA / f"{name}.cae").read_bytes()
    expected = np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"))
    decoded = image_codec.decompress(data, model)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    assert (decoded == expected).mean() > 0.999


def test_reference_image_encodes_to_the_same_stream(shipped):
    """Same header, and the same symbols up to a few float-rounding flips on another CPU."""
    name, model = shipped
    reference = (DATA / f"{name}.cae").read_bytes()
    data = image_codec.compress(image_codec.load_image(DATA / "reference.png"), model)
    (ours_header, ours), (theirs_header, theirs) = (parse(d) for d in (data, reference))
    assert replace(ours_header, payload_length=0) == replace(theirs_header, payload_length=0)
    ours, theirs = coding.decode(ours), coding.decode(theirs)
    assert ours.shape == theirs.shape and (ours == theirs).mean() > 0.999
