"""The .cae container (version 2, and version 1 read): header packing, every validation rule,
and parser fuzzing of both layouts.

The fuzzing of the whole decoder (container, coded payload, model checks) lives in
test_image_codec.py; here the container alone is checked against arbitrary bytes.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caeadmm import bitstream
from caeadmm.bitstream import HEADER_BYTES, BitstreamError, CaeHeader

PAYLOAD = bytes(range(256)) * 3


def make_header(**changes) -> CaeHeader:
    """A whole-image ("channels") header."""
    fields = dict(
        width=127, height=129, mode="RGB", layout="channels", latent_channels=8, kept=5,
        fingerprint=bytes(range(16)), payload_length=len(PAYLOAD),
    )
    return CaeHeader(**{**fields, **changes})


def make_tile_header(**changes) -> CaeHeader:
    return make_header(**{"layout": "tiles", "tile_size": 32, "kept": 70, **changes})


def stream() -> bytes:
    return bitstream.pack(make_header(), PAYLOAD)


def tile_stream() -> bytes:
    return bitstream.pack(make_tile_header(), PAYLOAD)


def as_v1(data: bytes) -> bytes:
    """A "tiles" stream rewritten as version 1 (version byte 1, layout byte 0)."""
    return with_field(with_field(data, 4, "<B", 1), 10, "<B", 0)


def with_field(data: bytes, offset: int, fmt: str, value: int, fix_crc: bool = True) -> bytes:
    """`data` with one header field replaced (and the CRC recomputed, so that the field's own
    check is what refuses it)."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    if fix_crc:
        crc = zlib.crc32(out[HEADER_BYTES:], zlib.crc32(out[: HEADER_BYTES - 4]))
        struct.pack_into("<I", out, HEADER_BYTES - 4, crc)
    return bytes(out)


def test_round_trip_of_all_fields():
    for header in (make_header(mode="L", width=1, height=1), make_tile_header(mode="L")):
        parsed, payload = bitstream.parse(bitstream.pack(header, PAYLOAD))
        assert parsed == header
        assert payload == PAYLOAD


def test_layout_is_the_documented_one():
    data = stream()
    assert HEADER_BYTES == 52
    assert data[:4] == b"\x89CAE" and data[4] == 2
    assert struct.unpack_from("<BHHBB", data, 5) == (0, 0, 8, 1, 0)  # mode, tile, C, layout
    assert struct.unpack_from("<III", data, 12) == (127, 129, 5)
    assert struct.unpack_from("<Q", data, 40) == (len(PAYLOAD),)
    assert len(data) == HEADER_BYTES + len(PAYLOAD)
    assert struct.unpack_from("<HHB", tile_stream(), 6) == (32, 8, 0)


def test_version_1_streams_are_read_as_tiles():
    header, payload = bitstream.parse(as_v1(tile_stream()))
    assert header == make_tile_header(version=1)
    assert payload == PAYLOAD
    with pytest.raises(BitstreamError, match="reserved"):
        bitstream.parse(with_field(stream(), 4, "<B", 1))  # layout byte set in version 1


def test_symbol_counts():
    assert make_header(width=33, height=64).latent_size == (8, 5)
    assert make_header(width=1, height=1).latent_size == (2, 2)  # padded to 16 x 16
    assert make_header(width=1, height=5000).n_symbols == 625 * 2 * 5
    assert make_tile_header(width=33, height=64).tiles == (2, 2)
    assert make_tile_header(width=33, height=64).n_symbols == 4 * 70


def test_empty_payload_is_valid():
    header = make_header(kept=0, payload_length=0)
    assert bitstream.parse(bitstream.pack(header, b""))[1] == b""


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "truncated"),
        (stream()[:HEADER_BYTES - 1], "truncated"),
        (b"GIF89a" + stream()[6:], "magic"),
        (with_field(stream(), 4, "<B", 4), "version 4"),
        (with_field(tile_stream(), 4, "<B", 3), "whole-image layout"),
        (with_field(stream(), 4, "<B", 0), "version 0"),
        (with_field(stream(), 5, "<B", 9), "mode"),
        (with_field(stream(), 10, "<B", 3), "layout code 3"),
        (with_field(stream(), 11, "<B", 1), "reserved"),
        (with_field(stream(), 6, "<H", 32), "tile size 32 in a whole-image"),
        (with_field(stream(), 20, "<I", 9), "9 kept channels"),
        (with_field(tile_stream(), 6, "<H", 0), "tile size"),
        (with_field(tile_stream(), 6, "<H", 12), "tile size"),
        (with_field(tile_stream(), 6, "<H", 8), "tile size"),
        (with_field(tile_stream(), 6, "<H", 65528), "tile size"),
        (with_field(as_v1(tile_stream()), 6, "<H", 0), "tile size"),
        (with_field(tile_stream(), 20, "<I", 8 * 16 + 1), "kept slots"),
        (with_field(stream(), 8, "<H", 0), "channel"),
        (with_field(stream(), 8, "<H", 1025), "channel"),
        (with_field(stream(), 12, "<I", 0), "size"),
        (with_field(stream(), 16, "<I", 0), "size"),
        (with_field(stream(), 12, "<I", 2**32 - 1), "exceeds the limit"),
        (with_field(stream(), 40, "<Q", 2**64 - 1), "truncated"),
        (with_field(stream(), 40, "<Q", 3), "trailing bytes"),
        (stream()[:-1], "truncated"),
        (stream() + b"\0", "trailing bytes"),
        (with_field(stream(), 48, "<I", 0, fix_crc=False), "checksum"),
    ],
)
def test_refuses_bad_streams(data, message):
    with pytest.raises(BitstreamError, match=message):
        bitstream.parse(data)


def test_pixel_limit_is_pillows_and_configurable(monkeypatch):
    """Pillow's MAX_IMAGE_PIXELS by default: 9459 x 9459 is within, 9459 x 9460 over; the
    caller's limit, or none; the CLI's default from $CAEADMM_MAX_PIXELS."""
    from PIL import Image

    assert bitstream.DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    at = bitstream.pack(make_header(width=9459, height=9459), PAYLOAD)  # 89,472,681 pixels
    over = bitstream.pack(make_header(width=9459, height=9460), PAYLOAD)  # 89,482,140
    assert bitstream.parse(at)[0].width == 9459
    with pytest.raises(BitstreamError, match="exceeds the limit of 89478485 .raise it with "
                       "--max-pixels or .CAEADMM_MAX_PIXELS"):
        bitstream.parse(over)
    with pytest.raises(BitstreamError, match="exceeds the limit of 1000000"):
        bitstream.parse(at, max_pixels=1_000_000)
    assert bitstream.parse(over, max_pixels=9459 * 9460)[0].height == 9460
    assert bitstream.parse(over, max_pixels=None)[0].height == 9460

    monkeypatch.delenv(bitstream.MAX_PIXELS_ENV, raising=False)
    assert bitstream.max_pixels_from_env() == 89_478_485
    for text, value in [("134217728", 1 << 27), ("200_000_000", 200_000_000), ("none", None)]:
        monkeypatch.setenv(bitstream.MAX_PIXELS_ENV, text)
        assert bitstream.max_pixels_from_env() == value
    for text in ("0", "-5", "lots"):
        monkeypatch.setenv(bitstream.MAX_PIXELS_ENV, text)
        with pytest.raises(ValueError, match="CAEADMM_MAX_PIXELS"):
            bitstream.max_pixels_from_env()


@pytest.mark.parametrize(("layout", "tile", "allowed", "refused"), [
    # 1 x N: padded to 16 rows, 16 N <= 1.5 N + 65536 up to N = 4519
    ("channels", 0, (1, 4512), (1, 4513)),
    ("channels", 0, (4512, 1), (4513, 1)),  # N x 1
    ("predicted", 0, (8, 16384), (8, 16385)),  # 8 rows padded to 16: 2x, up to the allowance
    ("predicted", 0, (11, 8_134_407), (10, 8_947_848)),  # at the pixel limit: 11 rows pass
    ("predicted", 0, (8_134_407, 11), (8_947_848, 10)),
    ("tiles", 32, (1, 2144), (1, 2145)),  # one row of 32 x 32 tiles
    ("tiles", 128, (86, 1_040_384), (85, 1_052_688)),  # 128 px tiles, at the pixel limit
    ("tiles", 128, (129, 1024), (129, 1152)),  # two tile rows for 129 rows: 1.98x
])
def test_thin_images_are_refused_beyond_the_padding_limit(layout, tile, allowed, refused):
    """The network computes the image padded (to multiples of 8, at least 16, or to whole
    tiles): at most 1.5 times its pixels plus 65536, so that no shape costs more per pixel
    than a photo beyond one small window. Checked when reading and when packing."""
    def header(height, width):
        changes = {"width": width, "height": height, "layout": layout}
        if layout == "tiles":
            changes.update(tile_size=tile, latent_channels=8, kept=8)
        return make_header(**changes)

    ok = header(*allowed)
    assert ok.network_pixels <= 1.5 * allowed[0] * allowed[1] + 65536
    assert bitstream.parse(bitstream.pack(ok, PAYLOAD))[0] == ok
    bad = header(*refused)
    with pytest.raises(BitstreamError, match=f"image of {refused[1]}x{refused[0]} is too thin "
                       f"for the {layout} layout: the network would compute "
                       f"{bad.network_pixels} pixels"):
        bitstream.pack(bad, PAYLOAD)
    data = with_field(with_field(bitstream.pack(ok, PAYLOAD), 12, "<I", refused[1]), 16, "<I",
                      refused[0])
    with pytest.raises(BitstreamError, match="is too thin"):
        bitstream.parse(data, max_pixels=None)  # whatever the pixel limit


def test_payload_corruption_is_caught_by_the_checksum():
    data = bytearray(stream())
    data[HEADER_BYTES + 5] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum"):
        bitstream.parse(bytes(data))


def test_read_header_needs_only_the_header():
    assert bitstream.read_header(stream()[:HEADER_BYTES]) == make_header()


def test_pack_checks_its_arguments():
    with pytest.raises(ValueError, match="payload_length"):
        bitstream.pack(make_header(payload_length=1), PAYLOAD)
    with pytest.raises(ValueError, match="tile size"):
        bitstream.pack(make_tile_header(tile_size=20), PAYLOAD)
    with pytest.raises(ValueError, match="tile size"):
        bitstream.pack(make_header(tile_size=32), PAYLOAD)


def test_model_mismatch_names_both_fingerprints():
    exc = bitstream.ModelMismatchError(b"\xab" * 16, b"\xcd" * 32)
    assert isinstance(exc, BitstreamError)
    assert "ab" * 16 in str(exc) and "cd" * 16 in str(exc)


# -- fuzzing --------------------------------------------------------------------------------

VALID = stream()
STREAMS = (VALID, tile_stream(), as_v1(tile_stream()))


def _check(data: bytes) -> None:
    try:
        header, payload = bitstream.parse(data)
    except BitstreamError:
        return
    assert len(payload) == header.payload_length


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data):
    _check(data)
    _check(VALID[:HEADER_BYTES - 4] + data)


@settings(max_examples=400, deadline=2000)
@given(st.integers(0, len(VALID) - 1))
def test_fuzz_truncation(length):
    with pytest.raises(BitstreamError):
        bitstream.parse(VALID[:length])


def _flip(valid: bytes, bits: list[int]) -> bytes:
    data = bytearray(valid)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


@settings(max_examples=400, deadline=2000)
@given(st.sampled_from(STREAMS),
       st.lists(st.integers(0, 8 * len(VALID) - 1), min_size=1, max_size=3, unique=True))
def test_fuzz_few_bit_flips_are_always_detected(valid, bits):
    # CRC-32 has Hamming distance >= 4 at this length: every 1- to 3-bit error is caught.
    with pytest.raises(BitstreamError):
        bitstream.parse(_flip(valid, bits))


@settings(max_examples=200, deadline=2000)
@given(st.sampled_from(STREAMS),
       st.lists(st.integers(0, 8 * len(VALID) - 1), min_size=4, max_size=64, unique=True))
def test_fuzz_many_bit_flips(valid, bits):
    _check(_flip(valid, bits))


@settings(max_examples=400, deadline=2000)
@given(st.sampled_from(STREAMS), st.integers(0, HEADER_BYTES - 5),
       st.binary(min_size=1, max_size=8), st.booleans())
def test_fuzz_header_edits(valid, offset, patch, fix_crc):
    data = bytearray(valid)
    data[offset : offset + len(patch)] = patch
    if fix_crc:
        crc = zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[: HEADER_BYTES - 4]))
        struct.pack_into("<I", data, HEADER_BYTES - 4, crc)
    _check(bytes(data))


@pytest.mark.parametrize("quality", [0.0, 1 / 1024, 3.5, bitstream.MAX_QUALITY])
def test_variable_rate_stream_records_its_quality(quality):
    """A header with a quality packs as version 3, still 52 bytes, and parses back."""
    header = make_header(quality=quality)
    data = bitstream.pack(header, PAYLOAD)
    parsed, payload = bitstream.parse(data)
    assert len(data) == HEADER_BYTES + len(PAYLOAD) and payload == PAYLOAD
    assert parsed.version == 3 and parsed.quality == quality and parsed.tile_size == 0
    assert bitstream.parse(bitstream.pack(make_header(), PAYLOAD))[0].quality is None


def test_quality_is_quantized_to_what_the_stream_records():
    assert bitstream.quantize_quality(2.0004) == 2.0
    assert bitstream.quantize_quality(2.0006) == 2.0 + 1 / 1024
    with pytest.raises(ValueError, match="quality"):
        bitstream.quantize_quality(-0.1)
    with pytest.raises(ValueError, match="multiple"):
        bitstream.pack(make_header(quality=0.3), PAYLOAD)
