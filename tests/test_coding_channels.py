"""Per-channel coding (coding.encode_channels): exact round trips, group choice, sizes against
the per-channel order-0 entropy and the single-table coder, bounds checks before allocation,
robustness to corrupt streams, and agreement of the numba kernels with the reference."""

from __future__ import annotations

import tracemalloc

import helpers
import numpy as np
import pytest
from helpers import assert_same_verdict, bit_flips, corruptions, mutate, random_streams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coding
from coding import channels, kernels, reference
from coding.format import MAX_CHANNELS, StreamKind, put_varint
from coding.plan import HISTOGRAM_MAGNITUDES
from coding.synthetic import channel_laplacians, sparse_laplacian

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def per_channel_order0_bits(x: np.ndarray) -> float:
    """Sum over channels of N times the channel's empirical entropy."""
    bits = 0.0
    for row in x:
        _, counts = np.unique(row, return_counts=True)
        bits -= float((counts * np.log2(counts / row.size)).sum())
    return bits


def round_trip(x) -> bytes:
    data = helpers.round_trip(coding.encode_channels, coding.decode_channels, x)
    assert 8 * len(data) == coding.encoded_bits_channels(x)
    return data


def group_count(data: bytes) -> int:
    """G from a stream's head (0 for an empty one)."""
    offset = 1
    for _ in range(2):
        while data[offset] & 0x80:
            offset += 1
        offset += 1
    return data[offset] if offset < len(data) else 0


def wide_and_narrow(n: int, pairs: int = 3) -> np.ndarray:
    """Channels of two kinds, interleaved: wide values with few zeros, and nearly all zeros."""
    wide = [sparse_laplacian(n, 0.2, 40.0, seed=s) for s in range(pairs)]
    narrow = [sparse_laplacian(n, 0.97, 0.6, seed=s) for s in range(pairs)]
    return np.stack([row for pair in zip(wide, narrow, strict=True) for row in pair])


def decodes_or_refuses(data: bytes, backend=kernels) -> np.ndarray | None:
    return helpers.decodes_or_refuses(lambda d: channels.decode(d, backend=backend), data, ndim=2)


# ---------------------------------------------------------------------------- round trips


def _mixed_extremes() -> np.ndarray:
    x = np.zeros((3, 7), np.int64)
    x[0] = [I32_MIN, I32_MAX, 0, 0, I32_MIN, 1, -1]
    x[2, ::2] = I32_MAX
    return x


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((0, 0), np.int32),
        np.zeros((0, 5), np.int32),
        np.zeros((3, 0), np.int32),
        np.zeros((1, 0), np.int32),
        np.array([[0]], np.int32),
        np.array([[-5]], np.int32),
        np.array([[3], [0], [-7], [0]], np.int32),  # N = 1
        np.zeros((1, 5000), np.int32),  # C = 1, all zeros
        np.zeros((6, 3000), np.int32),  # all zeros
        np.full((4, 100), I32_MIN, np.int64),
        np.full((4, 100), I32_MAX, np.int64),
        _mixed_extremes(),
        np.arange(-32768, 32768, dtype=np.int16).reshape(16, -1),  # the full int16 range
        channel_laplacians(1, 4000),
        channel_laplacians(12, 1000, seed=3),
        channel_laplacians(40, 300, seed=4),
    ],
    ids=lambda x: f"{x.dtype}{x.shape}",
)
def test_round_trip_edges(x):
    round_trip(x)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int64, np.uint8, np.uint16, ">i4"])
def test_accepts_integer_dtypes_and_views(dtype):
    x = channel_laplacians(5, 200, seed=1)
    x = np.clip(x, 0 if np.dtype(dtype).kind == "u" else -100, 100)
    data = round_trip(x.astype(dtype))
    assert data == coding.encode_channels(x)  # the stream depends on values only
    round_trip(x.T.copy().T)  # Fortran order
    round_trip(x[:, ::3])  # strided
    round_trip(x.tolist())


def test_encoding_is_deterministic():
    x = channel_laplacians(10, 2000, seed=5)
    assert coding.encode_channels(x) == coding.encode_channels(x.copy())


# ---------------------------------------------------------------------------- bad input to encode


def test_encode_refuses_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        coding.encode_channels(np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="2-D"):
        coding.encode_channels(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(TypeError, match="integer dtype"):
        coding.encode_channels(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="must lie in"):
        coding.encode_channels(np.array([[0, 2**31]], np.int64))
    with pytest.raises(ValueError, match="channels"):
        coding.encode_channels(np.broadcast_to(np.int32(0), (MAX_CHANNELS + 1, 1)))
    with pytest.raises(ValueError, match="at most"):
        coding.encode_channels(np.broadcast_to(np.int8(0), (2, coding.MAX_SYMBOLS // 2 + 1)))


# ---------------------------------------------------------------------------- sizes and groups


@pytest.mark.parametrize("channels_", [4, 12, 32])
def test_close_to_per_channel_entropy(channels_):
    """The target at a Kodak image's latent size (N = 768 * 512 / 8**2): stream, tables
    included, within 1.05x the per-channel order-0 entropy, and smaller than one table."""
    x = channel_laplacians(channels_, 6144, seed=channels_)
    bits = coding.encoded_bits_channels(x)
    assert bits <= 1.05 * per_channel_order0_bits(x)
    assert bits < 0.97 * coding.encoded_bits(x.ravel())


def test_never_much_worse_than_one_table():
    """Where one table wins (channels alike, or too short for tables of their own), the stream
    is the single-table one plus at most a few bytes of head."""
    rng = np.random.default_rng(0)
    for x in [
        np.stack([sparse_laplacian(5000, 0.8, 3.0, seed=s) for s in range(8)]),
        channel_laplacians(30, 20, seed=2),
        rng.integers(-3, 4, (3, 50)),
    ]:
        data = round_trip(x)
        assert len(data) <= len(coding.encode(x.ravel())) + 4


def test_identical_channels_share_one_table_and_different_ones_do_not():
    alike = np.stack([sparse_laplacian(20_000, 0.8, 3.0, seed=s) for s in range(6)])
    assert group_count(coding.encode_channels(alike)) == 1
    assert not channels.choose_groups(alike).any()
    x = wide_and_narrow(20_000)
    np.testing.assert_array_equal(channels.choose_groups(x), [0, 1, 0, 1, 0, 1])
    assert group_count(round_trip(x)) == 2
    wide, narrow = channels._prepare(x, kernels).groups
    # Each table picks its own run cap: 16 zeros per zero-run token at 97 % zeros, 4 at 20 %.
    assert narrow.header.log2_run >= 4 > wide.header.log2_run


def test_choose_groups_beyond_merge_rows():
    """Many channels start the merge from blocks; labels stay canonical and the grouped
    stream still beats one table on mixed statistics."""
    x = channel_laplacians(channels.MERGE_ROWS + 50, 64, seed=9)
    labels = channels.choose_groups(x)
    assert labels.shape == (x.shape[0],) and labels[0] == 0
    _, first = np.unique(labels, return_index=True)
    assert np.all(np.diff(first) > 0)
    round_trip(x)


# ---------------------------------------------------------------------------- corrupt streams


def _head(channels_: int, positions: int, groups: int | None = None) -> bytes:
    out = bytearray([StreamKind.CHANNELS])
    put_varint(out, channels_)
    put_varint(out, positions)
    if groups is not None:
        put_varint(out, groups)
    return bytes(out)


def test_decode_refuses_malformed_heads():
    good = coding.encode_channels(channel_laplacians(6, 500))
    for data in [
        b"",
        bytes([StreamKind.HUFFMAN]) + good[1:],  # a 1-D stream's version
        coding.encode(np.arange(10)),
        _head(MAX_CHANNELS + 1, 1),
        _head(3, 0) + b"\x00",  # data after an empty stream
        _head(3, 10, 0),  # no groups
        _head(3, 10, 4),  # more groups than channels
        _head(3, 10, 2) + bytes([0b100_00000]),  # labels not in order of appearance
        _head(3, 10, 2) + bytes([0b000_00000]),  # a group with no channel
        _head(3, 10, 2) + bytes([0b010_00001]),  # non-zero label padding
        _head(3, 10, 2) + bytes([0b011_00000]) + b"\x7f",  # group longer than the stream
        good[:-1],
        good + b"\x00",
    ]:
        with pytest.raises(coding.CorruptStreamError):
            coding.decode_channels(data)
    with pytest.raises(coding.CorruptStreamError):
        channels.decode(good[:-1], backend=reference)


def test_decode_honours_the_callers_limit():
    x = channel_laplacians(4, 250)
    data = coding.encode_channels(x)
    np.testing.assert_array_equal(coding.decode_channels(data, max_symbols=1000), x)
    with pytest.raises(coding.CorruptStreamError, match="over the limit"):
        coding.decode_channels(data, max_symbols=999)


@pytest.mark.parametrize("groups", [1, 2])
def test_declared_sizes_the_stream_cannot_hold_are_refused_before_allocation(groups):
    """A head that claims 2**28 symbols (1 GiB of int32) over a few bytes is refused with no
    allocation beyond the stream's own size."""
    labels = bytes([0b0100_0000]) if groups == 2 else b""
    for body in (b"\x00\x00\x00" + b"\xff" * 64, b"\x03" + b"\x90\x00\x00" + b"\xff" * 64):
        data = _head(2, 2**27, groups) + labels + body
        tracemalloc.start()
        try:
            with pytest.raises(coding.CorruptStreamError):
                coding.decode_channels(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20


def test_decode_refuses_every_truncation():
    data = coding.encode_channels(wide_and_narrow(300))
    assert group_count(data) > 1
    for cut in range(len(data)):
        with pytest.raises(coding.CorruptStreamError):
            coding.decode_channels(data[:cut])


def test_decode_survives_every_single_bit_flip():
    data = coding.encode_channels(wide_and_narrow(150, pairs=2))
    assert group_count(data) > 1
    refused = sum(decodes_or_refuses(flipped) is None for flipped in bit_flips(data))
    assert refused > 0


def test_decode_survives_random_bytes():
    for data in random_streams(StreamKind.CHANNELS):
        decodes_or_refuses(data)


@st.composite
def channel_arrays(draw) -> np.ndarray:
    """(C, N) arrays of any integer dtype: per-channel rounded Laplacians of their own zero
    share and scale, with extremes of the dtype's range (and int32's) patched in."""
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64]))
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), I32_MIN), min(int(info.max), I32_MAX)
    c = draw(st.integers(0, 9))
    n = draw(st.sampled_from([0, 1, 2, 7, 64, 300]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = np.zeros((c, n), np.int64)
    for row in range(c):
        zeros = draw(st.sampled_from([0.0, 0.2, 0.9, 1.0]))
        scale = draw(st.sampled_from([0.3, 2.0, 50.0]))
        x[row] = sparse_laplacian(n, zeros, scale, seed=int(rng.integers(1 << 30)))
    if x.size:
        spots = draw(st.lists(st.tuples(st.integers(0, x.size - 1), st.sampled_from([lo, hi])),
                              max_size=3))  # fmt: skip
        for at, value in spots:
            x.flat[at] = value
    return np.clip(x, lo, hi).astype(dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channel_arrays())
def test_round_trip_arbitrary(x):
    data = round_trip(x)
    assert len(data) <= len(coding.encode(x.ravel())) + 4  # never much worse than one table


@pytest.mark.slow  # 2000 fuzzed streams: about 10 s on 2 busy cores
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channel_arrays(), st.data())
def test_mutated_stream_decodes_or_refuses(x, data):
    decodes_or_refuses(mutate(coding.encode_channels(x), data))


# ---------------------------------------------------------------------------- kernels vs reference


@pytest.mark.parametrize("seed", range(12))
def test_kernels_agree_with_reference(seed):
    """Same histograms, same groups, same stream byte for byte, same verdict on corruption."""
    rng = np.random.default_rng(seed)
    c, n = int(rng.integers(1, 9)), int(rng.integers(1, 200))
    x = channel_laplacians(c, n, seed=seed)
    x[rng.random(x.shape) < 0.01] = [I32_MAX, -70, 100_000][seed % 3]
    hist = kernels.channel_histograms(x, HISTOGRAM_MAGNITUDES)
    np.testing.assert_array_equal(hist, reference.channel_histograms(x, HISTOGRAM_MAGNITUDES))
    assert hist.sum() == x.size
    for bin_bits, group_bits in [(channels.BIN_BITS, channels.GROUP_BITS), (0.0, 0.0),
                                 (30.0, 500.0)]:  # fmt: skip
        np.testing.assert_array_equal(
            kernels.merge_groups(hist, bin_bits, group_bits),
            reference.merge_groups(hist, bin_bits, group_bits),
        )
    data = channels.encode(x, kernels)
    assert channels.encode(x, reference) == data
    np.testing.assert_array_equal(channels.decode(data, backend=reference), x)
    for bad in corruptions(data, rng):
        assert_same_verdict(decodes_or_refuses(bad, kernels), decodes_or_refuses(bad, reference))


def test_merge_groups_stops_when_no_merge_saves():
    """Without table or header costs merging never saves bits (entropy is concave): every
    channel keeps its own group; with a large header cost everything merges."""
    hist = kernels.channel_histograms(channel_laplacians(6, 500, seed=1), HISTOGRAM_MAGNITUDES)
    np.testing.assert_array_equal(kernels.merge_groups(hist, 0.0, 0.0), np.arange(6))
    assert not kernels.merge_groups(hist, 0.0, 1e9).any()
